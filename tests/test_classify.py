"""`clip classify` and `clipcli.classify`: one run object behind both, so the Python API does everything the
command does (a head, --other, --adapt, a store) and gives the records the command prints."""

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli

import clipcli
from clipcli.demo import shapes
from clipcli.options import LabelOptions, ModelOptions, OpenSetOptions, ScoreOptions
from clipcli.run import ClassifyRun

LABELS = ["red circle", "blue square", "green star", "yellow triangle"]
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """24 drawn shapes (enough for --adapt, which needs 16) and one file that is not an image."""
    root = tmp_path_factory.mktemp("shapes")
    kinds = [("red", "circle"), ("blue", "square"), ("green", "star"), ("yellow", "triangle"), ("purple", "heart")]
    for i in range(24):
        colour, shape = kinds[i % len(kinds)]
        shapes.draw_pil(colour, shape, size=64, seed=i).save(root / f"{i:02d}_{colour}_{shape}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def head(tmp_path_factory, folder) -> Path:
    train = tmp_path_factory.mktemp("train")
    for colour, shape in (("red", "circle"), ("blue", "square"), ("green", "star")):
        (train / f"{colour} {shape}").mkdir()
        for seed in range(4):
            shapes.draw_pil(colour, shape, size=64, seed=100 + seed).save(train / f"{colour} {shape}" / f"{seed}.png")
    path = tmp_path_factory.mktemp("head") / "shapes.safetensors"
    result = cli("fit", train, "-m", "demo", "-o", path, "--shots", "4", "-q")
    assert result.exit_code == 0, result.output
    return path


def test_python_classify_equals_the_command_with_head_other_adapt_and_store(folder, head, tmp_path):
    store = tmp_path / "photos.store"
    cases = [
        (["--head", head], dict(head=head)),
        (["-l", ",".join(LABELS), "--other"], dict(labels=LABELS, other=True)),
        (["-l", ",".join(LABELS), "--adapt", "-k", "0"], dict(labels=LABELS, adapt=True, options=ScoreOptions(top_k=0))),
        (["-l", ",".join(LABELS), "--store", store, "--other", "--other-threshold", "0.3"],  # both write a new store
         dict(labels=LABELS, store=tmp_path / "api.store", other=OpenSetOptions(True, threshold=0.3))),
    ]
    for args, kwargs in cases:
        command = cli("classify", folder, "-m", "demo", "-f", "jsonl", "-q", *args)
        assert command.exit_code == 1  # the broken file: reported and skipped, exit 1
        expected = [json.loads(line) for line in command.stdout.splitlines()]
        assert len(expected) == 25 and sum("error" in r for r in expected) == 1
        assert clipcli.classify([str(folder)], model="demo", **kwargs) == expected, args
    # the store is now full: every stored image, scored from the store alone, as `clip classify --store S`
    command = cli("classify", "--store", store, "-l", ",".join(LABELS), "-f", "jsonl", "-q")
    whole = [json.loads(line) for line in command.stdout.splitlines()]
    assert command.exit_code == 1 and len(whole) == 25  # the broken file's error row is stored too
    assert clipcli.classify(labels=LABELS, store=store) == whole


def test_other_puts_other_first_only_where_it_wins(folder):
    records = clipcli.classify([str(folder)], ["red circle", "blue square"], model="demo", other=True)
    firsts = [r["predictions"][0]["label"] for r in records if "predictions" in r]
    # purple hearts, green stars and yellow triangles are none of the two labels
    assert firsts.count("other") >= 10 and {"red circle", "blue square"} <= set(firsts)


def test_run_header_and_records_without_the_terminal(folder):
    progress = []
    run = ClassifyRun(LabelOptions(tuple(LABELS), "simple"), ModelOptions("demo"), score=ScoreOptions(top_k=1),
                      open_set=OpenSetOptions(True), progress=lambda *event: progress.append(event))
    assert run.labels == LABELS  # checked and known before any model is loaded
    with run.open(sorted(str(p) for p in folder.glob("*.png"))):
        records = list(run.records())
        header = run.header
    assert header["labels"] == LABELS and header["templates"] == "simple" and header["other"]["label"] == "other"
    assert header["model"]["name"] and header["score"] == "softmax"
    assert len(records) == 25 and records[0]["path"].endswith("00_red_circle.png")
    assert all(len(r["predictions"]) in (1, 2) for r in records if "predictions" in r)  # top 1, and "other" first
    stages = [stage for stage, _, _ in progress]
    assert stages[-1] == "classifying" and progress[-1][1:] == (25, 25)
    assert set(stages) <= {"encoding labels", "encoding negative labels", "classifying"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=[]), "no labels given"),
    (dict(labels=["a", "b"], head="x.safetensors"), "--head brings its own labels"),
    (dict(labels=["a", "other"], other=True), "--other-label 'other' is one of the labels"),
    (dict(labels=["a", "b"], templates="no-such-set"), "no-such-set"),
    (dict(labels=["a", "b"], options=ScoreOptions(score="sigmoid")), "needs a model trained with a sigmoid loss"),
])
def test_bad_options_are_refused_before_any_model_loads(kwargs, message, monkeypatch, folder):
    from clipcli import embeddings
    from clipcli.errors import UsageError

    if "sigmoid" not in message:  # whether the model has a logit bias is known once it is loaded
        monkeypatch.setattr(embeddings, "load_model_for", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UsageError, match=message):
        clipcli.classify([str(folder)], model="demo", **kwargs)


def test_each_option_is_checked_in_one_place():
    """The option objects check their own values (every door gets the same message)."""
    from clipcli.errors import UsageError
    from clipcli.options import EngineOptions, ModelOptions

    for make, message in ((lambda: ScoreOptions(top_k=-1), "--top-k"),
                          (lambda: ScoreOptions(score="cosine"), "unknown --score 'cosine'"), (lambda: ModelOptions(precision="int4"),
                          "unknown --precision 'int4'"), (lambda: EngineOptions("spark"), "unknown --engine 'spark'"),
                          (lambda: EngineOptions(address="auto"), "go with --engine ray"),
                          (lambda: OpenSetOptions(True, " "), "--other-label needs a name"),
                          (lambda: OpenSetOptions(True, threshold=1.5), "from 0 to 1"),
                          (lambda: OpenSetOptions(False, threshold=0.5), "go with --other")):
        with pytest.raises(UsageError, match=message):
            make()
    for args, message in ((["--top-k", "-1"], "'--top-k'"), (["--precision", "int4"], "unknown --precision 'int4'"),
                          (["--other-threshold", "1.5", "--other"], "from 0 to 1")):
        result = cli("classify", "x.png", "-l", "a,b", *args)
        assert result.exit_code == 2 and message in result.output, result.output


def test_records_are_read_only_while_the_run_is_open(folder, tmp_path):
    # regression: a records generator taken inside `with run.open()` and read after it encoded images into a store
    # that was already committed and unlocked (their rows were lost), and run.report showed the previous run's counts
    from clipcli.errors import UsageError

    paths = sorted(str(p) for p in folder.glob("0*.png"))
    run = ClassifyRun(LabelOptions(("red circle", "blue square")), ModelOptions("demo"), store=tmp_path / "s")
    with run.open(paths[:3]):
        late = run.records()
    for read in (lambda: list(late), lambda: list(run.records())):
        with pytest.raises(RuntimeError, match="inside `with run.open"):
            read()
    with run.open(paths):
        assert len(list(run.records())) == len(paths)
    assert (run.report.stored, run.report.encoded) == (0, len(paths))
    with pytest.raises(UsageError, match="no images given"):
        with ClassifyRun(LabelOptions(("a", "b"))).open(None):
            pass


def test_a_head_with_labels_is_refused_whatever_the_labels(head):
    # regression: `--head h --labels ""` said "no labels given" instead of naming the conflict
    for labels in ("", "a,b"):
        result = cli("classify", "x.png", "--head", head, "--labels", labels)
        assert result.exit_code == 2 and "--head brings its own labels" in result.output, result.output


def test_python_facade_names(tiny_model):
    import clipcli

    records = clipcli.classify([str(Path(__file__).parent.parent / "examples")], ["red circle", "blue square"],
                               model="demo", templates="simple")
    assert len(records) == 4 and all(np.isclose(sum(p["score"] for p in r["predictions"]), 1.0) for r in records)
    assert {"open_encoder", "classify_paths", "zero_shot_classifier", "ModelOptions"} <= set(clipcli.__all__)


# regression: one label under softmax silently scored 1.0 for every image
def test_one_label_under_softmax_warns(tmp_path):
    image = ROOT / "examples" / "red_circle.png"
    result = cli("classify", image, "-m", "demo", "-l", "red circle", "-f", "jsonl")
    assert result.exit_code == 0 and "one label ('red circle') under softmax always scores 1.0" in result.stderr
    assert "--score sigmoid" in result.stderr
    assert "always scores" not in cli("classify", image, "-m", "demo", "-l", "red circle,blue square").stderr


def test_sigmoid_needs_a_logit_bias(run, images):
    result = run(str(images / "red_circle.png"), "--labels", "a,b", "--score", "sigmoid")
    assert result.exit_code == 2
    assert "--score sigmoid needs a model trained with a sigmoid loss" in result.stderr
