"""`--other` (open set) and calibration: metrics against scikit-learn and an independent ECE loop, the rule by
hand, records, and the commands (classify, sort, eval, with --store, --head and sigmoid scores) on drawn shapes."""

import json
import re

import numpy as np
import pytest
from cli_helpers import cli
from sklearn.metrics import roc_auc_score, roc_curve

from clipcli import calibration, openset
from clipcli.batches import BatchItem
from clipcli.classifier import ZeroShotClassifier
from clipcli.demo import shapes
from clipcli.options import OpenSetOptions, ScoreOptions
from clipcli.scoring import score_records

KNOWN = [("red", "circle"), ("blue", "square"), ("green", "star"), ("yellow", "triangle")]
UNKNOWN = [("purple", "heart"), ("orange", "ring"), ("white", "diamond"), ("pink", "cross")]  # not among the labels
LABELS = ",".join(f"{c} {s}" for c, s in KNOWN)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """known/<colour>_<shape>/ (the labels, as an eval dataset) and unknown/ (shapes that are none of them)."""
    root = tmp_path_factory.mktemp("openset")
    for i in range(3):
        for colour, kind in KNOWN:
            folder = root / "known" / f"{colour}_{kind}"
            folder.mkdir(parents=True, exist_ok=True)
            shapes.draw_pil(colour, kind, size=64, seed=100 + i).save(folder / f"{i}.png")
        for colour, kind in UNKNOWN:
            (root / "unknown").mkdir(exist_ok=True)
            shapes.draw_pil(colour, kind, size=64, seed=200 + i).save(root / "unknown" / f"{colour}_{kind}_{i}.png")
    return root


# --- metrics ----------------------------------------------------------------------------------------------------
def ece_loop(confidence, correct, bins=15):
    """Guo et al. (2017), written out: bin m holds confidences in ((m-1)/M, m/M]."""
    total, n = 0.0, len(confidence)
    for m in range(1, bins + 1):
        lower, upper = (m - 1) / bins, m / bins
        members = [i for i, c in enumerate(confidence) if (lower < c <= upper) or (m == 1 and c == 0.0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            mean_confidence = sum(confidence[i] for i in members) / len(members)
            total += len(members) / n * abs(accuracy - mean_confidence)
    return total


@pytest.mark.parametrize("seed", range(5))
def test_auroc_fpr95_and_ece_equal_sklearn_and_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    known = np.round(rng.normal(0.0, 1.0, 200), 1)  # rounded: ties between and within the groups
    unknown = np.round(rng.normal(1.0, 1.0, 90), 1)
    labels = np.r_[np.ones(len(unknown)), np.zeros(len(known))]
    assert calibration.auroc(unknown, known) == pytest.approx(roc_auc_score(labels, np.r_[unknown, known]), abs=1e-12)
    # FPR95: known images are the positives (score: minus the other-confidence)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[-known, -unknown],
                            drop_intermediate=False)
    assert calibration.fpr_at_tpr(-known, -unknown) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    metrics = calibration.open_set_metrics(known, unknown, np.ones(len(known), bool), 0.5)
    assert metrics["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert metrics["unknown_rejected"] == pytest.approx(np.mean(unknown >= 0.5))

    confidence = rng.uniform(0, 1, 500).round(2)  # rounded: confidences exactly on bin edges
    confidence[:3] = [0.0, 1.0, 1 / 15]
    correct = rng.uniform(0, 1, 500) < confidence
    assert calibration.expected_calibration_error(confidence, correct) == pytest.approx(
        ece_loop(confidence.tolist(), correct.tolist()), abs=1e-12)
    assert sum(row["count"] for row in calibration.reliability(confidence, correct)) == 500


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model():
    assert calibration.expected_calibration_error([0.8] * 5, [True] * 4 + [False]) == pytest.approx(0.0, abs=1e-12)
    assert calibration.expected_calibration_error([0.99] * 4, [True, False, False, False]) == pytest.approx(0.74)


# --- the rule ---------------------------------------------------------------------------------------------------
def test_other_confidence_and_mining_by_hand():
    labels = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    words = ["near", "far", "farther", "cat"]
    vectors = np.array([[0.9, 0.436, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    chosen, embeddings = openset.mine_negatives(words, vectors, labels, keep=0.5, exclude=["Cat"])
    assert chosen == ["far", "farther"]  # the half least like any label; a word equal to a label never
    x = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    s = openset.other_confidence(x, labels, embeddings, logit_scale=10.0)
    # best label cosine minus best negative cosine: 1 - 0 and 0 - 1
    assert s == pytest.approx([1 / (1 + np.exp(10.0)), 1 / (1 + np.exp(-10.0))])


def test_record_puts_other_first_then_the_labels_ranked_as_before():
    labels = np.eye(3, dtype=np.float32)[:2]
    base = ZeroShotClassifier(["cat", "dog"], labels, 10.0)
    vocabulary = ZeroShotClassifier(["rock", "sky"], np.array([[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]], np.float32), 10.0)
    wrapped = openset.wrap(base, vocabulary, OpenSetOptions(True, "none of these", 0.4))
    assert wrapped.negatives == ["rock"]  # keep: half of the vocabulary, the word farthest from the labels
    x = np.array([[0.8, 0.6, 0.0], [0.0, 0.28, 0.96]], dtype=np.float32)
    items = [BatchItem("a.png", None), BatchItem("b.png", None)]
    plain = list(score_records(base, items, x, ScoreOptions(top_k=0)))
    records = list(score_records(wrapped, items, x, ScoreOptions(top_k=0)))
    assert records[0] == plain[0]  # a cat: unchanged
    s = 1 / (1 + np.exp(10.0 * (0.28 - 0.96)))
    assert records[1]["predictions"][0] == {"label": "none of these", "score": pytest.approx(s)}
    assert records[1]["predictions"][1:] == plain[1]["predictions"]


def test_other_label_may_not_be_a_label():
    base = ZeroShotClassifier(["cat", "Other"], np.eye(2, dtype=np.float32), 10.0)
    with pytest.raises(Exception, match="--other-label 'other' is one of the labels"):
        openset.wrap(base, base, OpenSetOptions(True))


def test_vocabulary_is_shipped_with_its_credit():
    words = openset.vocabulary()
    assert len(words) == 998 and "goldfish" in words and len(set(words)) == len(words)


# --- commands ---------------------------------------------------------------------------------------------------
def classify(*args, model=("-m", "demo")):
    result = cli("classify", *args, *model, "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_classify_other_on_drawn_known_and_unknown_shapes(drawn):
    document = classify(drawn / "known", drawn / "unknown", "-l", LABELS, "--other", "-k", "2")
    assert document["other"] == {"label": "other", "threshold": 0.2, "method": "negative labels", "negatives": 499}
    known = [r for r in document["results"] if "/known/" in r["path"]]
    unknown = [r for r in document["results"] if "/unknown/" in r["path"]]
    assert len(known) == len(unknown) == 12
    right = sum(r["predictions"][0]["label"] == re.search(r"known/(\w+)/", r["path"])[1].replace("_", " ")
                for r in known)
    assert right == 12  # every in-label image keeps its label
    assert sum(r["predictions"][0]["label"] == "other" for r in unknown) == 12
    for record in unknown:
        first, *rest = record["predictions"]
        assert first["score"] >= 0.2 and len(rest) == 2 and {p["label"] for p in rest} <= set(LABELS.split(","))
        assert rest[0]["score"] >= rest[1]["score"]
    renamed = classify(drawn / "unknown", "-l", LABELS, "--other", "--other-label", "none of these")
    assert {r["predictions"][0]["label"] for r in renamed["results"]} == {"none of these"}
    # the threshold moves the operating point: at 1.0 nothing is sure enough to be other
    strict = classify(drawn / "unknown", "-l", LABELS, "--other", "--other-threshold", "1")
    assert strict["other"]["threshold"] == 1.0
    assert all(r["predictions"][0]["label"] != "other" for r in strict["results"])


def test_other_with_sigmoid_scores(tmp_path_factory, drawn):
    import tiny_models

    model = f"local-dir:{tiny_models.save_local_dir('siglip', tmp_path_factory.mktemp('siglip'))}"
    common = (drawn / "known" / "red_circle", "-m", model, "-l", LABELS, "-f", "json", "-q", "--score", "sigmoid",
              "-k", "0")
    plain = json.loads(cli("classify", *common).stdout)
    everything = cli("classify", *common, "--other", "--other-threshold", "0")
    assert everything.exit_code == 0, everything.output
    document = json.loads(everything.stdout)
    assert document["score"] == "sigmoid" and document["other"]["threshold"] == 0.0
    for with_other, without in zip(document["results"], plain["results"]):
        assert with_other["predictions"][0]["label"] == "other" and 0 <= with_other["predictions"][0]["score"] <= 1
        assert with_other["predictions"][1:] == without["predictions"]  # sigmoid scores, unchanged


def test_sort_files_others_into_their_own_folder(drawn, tmp_path):
    into = tmp_path / "sorted"
    result = cli("sort", drawn / "known", drawn / "unknown", "-m", "demo", "-l", LABELS, "--into", into, "--other",
                 "--min-score", "0.99", "-f", "jsonl", "-q")
    assert result.exit_code == 0, result.output
    plan = [json.loads(line) for line in result.stdout.splitlines()]
    others = [op for op in plan if op["folder"] == "other"]
    assert len(others) == 12 and all("/unknown/" in op["source"] and not op["unsure"] for op in others)
    assert sorted(p.name for p in (into / "other").iterdir()) == sorted(p.name for p in (drawn / "unknown").iterdir())
    assert {p.name for p in into.iterdir() if p.is_dir()} <= {"other", "_unsure", *LABELS.split(",")}
    document = json.loads(cli("sort", drawn / "unknown", "-m", "demo", "-l", LABELS, "--into", tmp_path / "y",
                              "--other", "--other-label", "no idea", "-n", "-f", "json", "-q").stdout)
    assert document["other"]["label"] == "no idea" and document["other"]["threshold"] == 0.2
    assert {op["folder"] for op in document["results"]} == {"no idea"}
    for command in (("sort", "--into", tmp_path / "x"), ("classify",)):
        clash = cli(*command, drawn / "unknown", "-m", "demo", "-l", "Other,red circle", "--other")
        assert clash.exit_code == 2 and clash.stderr.count("\n") == 1, clash.output
        assert "--other-label 'other' is one of the labels" in clash.stderr


def test_other_from_the_store_and_with_a_head(drawn, tmp_path, monkeypatch):
    store = tmp_path / "store"
    direct = classify(drawn / "known", drawn / "unknown", "-l", LABELS, "--other", "-k", "0")
    first = classify(drawn / "known", drawn / "unknown", "-l", LABELS, "--other", "-k", "0", "--store", store)
    assert first["results"] == direct["results"]
    from clipcli import embeddings

    monkeypatch.setattr(embeddings, "load_model_for", lambda *a, **k: pytest.fail("the model was loaded"))
    whole = classify("-l", LABELS, "--other", "-k", "0", "--store", store, model=())  # labels, negatives cached
    by_path = {r["path"].rsplit("/", 2)[-1]: r["predictions"][0]["label"] for r in whole["results"]}
    assert by_path == {r["path"].rsplit("/", 2)[-1]: r["predictions"][0]["label"] for r in direct["results"]}
    assert whole["other"]["negatives"] == 499
    monkeypatch.undo()

    head = tmp_path / "head.safetensors"
    fitted = cli("fit", drawn / "known", "-m", "demo", "-o", head, "--shots", "2", "-q")
    assert fitted.exit_code == 0, fitted.output
    document = classify(drawn / "unknown", drawn / "known" / "red_circle", "--head", head, "--other")
    assert document["head"]["method"] == "gda" and document["other"]["label"] == "other"
    first = {r["path"]: r["predictions"][0]["label"] for r in document["results"]}
    assert sorted(first.values()) == ["other"] * 12 + ["red circle"] * 3
    assert all(label == "other" for path, label in first.items() if "/unknown/" in path)


def test_eval_unknown_reports_open_set_and_calibration_as_computed_independently(drawn, tmp_path):
    report = tmp_path / "report.html"
    result = cli("eval", drawn / "known", "-m", "demo", "--unknown", drawn / "unknown", "-f", "json", "-q",
                 "--report", report)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["other"] == {"label": "other", "threshold": 0.2, "enabled": False}
    assert document["unknown"] == str(drawn / "unknown")
    row = document["results"][0]
    # the same numbers from classify's records: probabilities (-k 0) and every image's other-confidence (threshold 0)
    records = classify(drawn / "known", drawn / "unknown", "-l", ",".join(document["classes"]), "--other",
                       "--other-threshold", "0", "-k", "0")["results"]
    known = [r for r in records if "/known/" in r["path"]]
    unknown = [r for r in records if "/unknown/" in r["path"]]
    truth = [re.search(r"known/(\w+)/", r["path"])[1].replace("_", " ") for r in known]
    confidence = [r["predictions"][1]["score"] for r in known]
    correct = [r["predictions"][1]["label"] == t for r, t in zip(known, truth)]
    assert row["calibration"]["ece"] == pytest.approx(ece_loop(confidence, correct), abs=1e-5)
    s_known = [r["predictions"][0]["score"] for r in known]
    s_unknown = [r["predictions"][0]["score"] for r in unknown]
    metrics = row["open_set"]
    expected = roc_auc_score([0] * len(known) + [1] * len(unknown), s_known + s_unknown)
    assert metrics["auroc"] == pytest.approx(expected, abs=1e-6) and metrics["auroc"] == 1.0
    assert metrics["fpr95"] == 0.0 and metrics["known_accuracy"] == 1.0 and metrics["unknown_rejected"] == 1.0
    assert metrics["known"] == 12 and metrics["unknown"] == 12
    page = report.read_text()
    assert 'id="reliability-diagram"' in page and 'id="open-set"' in page
    bins = [b for b in row["calibration"]["reliability"] if b["count"]]
    assert page.count('class="bin"') == len(bins)

    plain = cli("eval", drawn / "known", "-m", "demo", "-q")
    assert plain.exit_code == 0 and "ECE" in plain.stdout and "AUROC" not in plain.stdout
    with_other = json.loads(cli("eval", drawn / "known", "-m", "demo", "--other", "-f", "json", "-q").stdout)
    assert with_other["results"][0]["open_set"]["known_accuracy"] == 1.0
    assert with_other["results"][0]["open_set"]["auroc"] is None


def test_bad_open_set_options_fail_in_one_line(drawn, tmp_path):
    image = drawn / "unknown" / "purple_heart_0.png"
    for args, message in (
            (("--other", "--other-threshold", "1.5"), "--other-threshold takes a number from 0 to 1"),
            (("--other-label", "none"), "--other-label and --other-threshold go with --other"),
            (("--other", "--other-label", " "), "--other-label needs a name")):
        result = cli("classify", image, "-m", "demo", "-l", LABELS, *args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.output
    missing = cli("eval", drawn / "known", "-m", "demo", "--unknown", tmp_path / "nowhere")
    assert missing.exit_code != 0 and "--unknown" in missing.stderr and missing.stderr.count("\n") == 1


def test_one_label_warning_points_to_other(drawn):
    image = drawn / "unknown" / "purple_heart_0.png"
    warned = cli("classify", image, "-m", "demo", "-l", "red circle", "-f", "jsonl")
    assert "--other" in warned.stderr and "--score sigmoid" in warned.stderr
    answered = cli("classify", image, "-m", "demo", "-l", "red circle", "--other", "-f", "jsonl")
    assert "always scores" not in answered.stderr
    assert json.loads(answered.stdout)["predictions"][0]["label"] == "other"


def test_help_states_the_default_threshold():
    from clipcli.cli.options import OPEN_SET

    annotation = next(a for name, a, _ in OPEN_SET.options if name == "other_threshold")
    help_text = annotation.__metadata__[0].help
    assert f"Default: {openset.default_threshold('softmax')}." in help_text
    assert openset.default_threshold("softmax") == openset.default_threshold("sigmoid") == 0.2
