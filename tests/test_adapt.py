"""--adapt (clipcli.adapt): the mixture against a dense reference written from the equations, never below
zero-shot when only a few of the labels occur (drawn sets, demo model), a gain on a style the demo model never
saw, zero-shot below the minimum with one warning, sigmoid scores, and the CLI (order and errors kept, --store,
eval, sort, --head, JSON headers, exit codes)."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli
from scipy.special import expit, log_softmax

from clipcli import adapt
from clipcli.demo import shapes
from clipcli.errors import ClipCliWarning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


LABELS24 = [shapes.seen_labels()[i] for i in range(0, 60, 5)] + [shapes.seen_labels()[i] for i in range(2, 60, 5)]


@pytest.fixture(scope="module")
def demo():
    from clipcli.api import zero_shot_classifier
    from clipcli.models import load_model

    loaded = load_model("demo")
    return loaded, zero_shot_classifier(loaded, LABELS24, "imagenet")


def features(demo, style, per_label, seed):
    from PIL import Image

    loaded, _ = demo
    colours = [name.split()[0] for name in LABELS24 for _ in range(per_label)]
    kinds = [name.split()[1] for name in LABELS24 for _ in range(per_label)]
    images = shapes.draw(colours, kinds, size=96, style=style, generator=torch.Generator().manual_seed(seed))
    pixels = torch.stack([loaded.preprocess(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images])
    with torch.no_grad():
        x = torch.nn.functional.normalize(loaded.model.encode_image(pixels), dim=-1).numpy()
    return x, np.repeat(np.arange(len(LABELS24)), per_label)


@pytest.fixture(scope="module")
def sets(demo):
    return {"training": features(demo, shapes.TRAINING, 20, 7), "outline": features(demo, shapes.OUTLINE, 20, 7)}


def reference(x, text, logits, beta=3.0, tied=2, free=8):
    """The module doc's updates, dense and in float64, written again without the library's chunks."""
    x, text = x.astype(np.float64), text.astype(np.float64)
    n, k = logits.shape
    log_p = log_softmax(logits.astype(np.float64), axis=1)
    q = np.exp(log_p)
    anchor = None
    for step in range(tied + free):
        counts = q.sum(0)
        if step < tied or anchor is None:
            t_mean = counts @ text / n
            cross = ((q.T @ x) * text).sum() - n * x.mean(0) @ t_mean
            a = cross / (counts @ (text ** 2).sum(1) - n * t_mean @ t_mean)
            tied_means = a * text + x.mean(0) - a * t_mean
        if step < tied:
            mu, prior = tied_means, np.full(k, 1 / k)
        else:
            anchor = tied_means if anchor is None else anchor
            mu, prior = (q.T @ x + beta * anchor) / (counts + beta)[:, None], counts / n
        var = np.maximum(sum(q[:, c:c + 1] * (x - mu[c]) ** 2 for c in range(k)).sum(0) / n, adapt.VARIANCE_FLOOR)
        log_gauss = -0.5 * np.stack([((x - mu[c]) ** 2 / var).sum(1) for c in range(k)], axis=1)
        q = np.exp(log_softmax(log_p + log_gauss + np.log(prior), axis=1))
    return q


def test_adapted_posterior_equals_the_dense_reference(demo, sets, monkeypatch):
    _, classifier = demo
    x, _ = sets["outline"]
    x = x[::3]  # 160 images
    monkeypatch.setattr(adapt, "CHUNK_ROWS", 50)  # several chunks
    logits = classifier.logits(x)
    result = adapt.adapt_logits(x, classifier.label_embeddings, logits, adapt.AdaptSettings(tolerance=0))
    expected = reference(x, classifier.label_embeddings, logits)
    got = np.exp(log_softmax(result.logits.astype(np.float64), axis=1))
    assert result.ran and result.steps == 10 and np.abs(got - expected).max() < 2e-3
    assert result.changed == int((got.argmax(1) != logits.argmax(1)).sum())
    assert np.allclose(result.prior, expected.sum(0) / len(x), atol=2e-3)


def accuracy(logits, y):
    return float((np.asarray(logits).argmax(1) == y).mean())


def test_gains_on_a_style_the_model_never_saw(demo, sets):
    _, classifier = demo
    x, y = sets["outline"]
    logits = classifier.logits(x)
    adapted = adapt.adapt_logits(x, classifier.label_embeddings, logits).logits
    zero, after = accuracy(logits, y), accuracy(adapted, y)
    assert zero < 0.4 and after >= zero + 0.05, (zero, after)


@pytest.mark.parametrize("style", ["training", "outline"])
def test_never_below_zero_shot_when_only_a_few_labels_occur(demo, sets, style):
    """2 or 3 of the 24 labels in the folder, 8 draws: on average not below zero-shot (StatA's case); where
    zero-shot is near 100%, not below it in any draw by more than one image."""
    _, classifier = demo
    x, y = sets[style]
    rng = np.random.default_rng(5)
    zero, after = [], []
    for draw in range(8):
        present = rng.choice(len(LABELS24), 2 + draw % 2, replace=False)
        keep = np.isin(y, present)
        logits = classifier.logits(x[keep])
        result = adapt.adapt_logits(x[keep], classifier.label_embeddings, logits)
        assert result.ran
        zero.append(accuracy(logits, y[keep]))
        after.append(accuracy(result.logits, y[keep]))
        if style == "training":
            assert after[-1] >= zero[-1] - 1 / keep.sum() - 1e-9, (draw, zero[-1], after[-1])
    assert np.mean(after) >= np.mean(zero) - 1e-9, (zero, after)


def test_below_the_minimum_it_warns_once_and_returns_zero_shot(demo, sets):
    _, classifier = demo
    x, _ = sets["outline"]
    for n in (1, 5, adapt.AdaptSettings().min_images - 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores, result = adapt.adapted_scores(classifier, x[:n])
        assert [str(w.message) for w in caught if w.category is ClipCliWarning] == [
            f"--adapt: {n} image{'s' if n != 1 else ''}; --adapt needs at least 16 (scores are the zero-shot ones)"]
        assert not result.ran and np.array_equal(scores, classifier.scores(x[:n]))
        assert result.as_header()["ran"] is False and "16" in result.as_header()["reason"]


def test_sigmoid_scores_move_by_the_same_evidence(demo, sets):
    from clipcli.classifier import ZeroShotClassifier

    _, classifier = demo
    x, _ = sets["outline"]
    siglip = ZeroShotClassifier(classifier.labels, classifier.label_embeddings, 10.0, -5.0)
    sig, result = adapt.adapted_scores(siglip, x, "sigmoid")
    soft, _ = adapt.adapted_scores(siglip, x, "softmax")
    moderate = np.abs(result.logits - 5.0) < 15  # where float32 sigmoids can be inverted
    logit = np.log(sig[moderate]) - np.log1p(-sig[moderate])  # back to logits
    assert moderate.sum() > 100 and np.allclose(logit, result.logits[moderate] - 5.0, atol=1e-3)
    assert np.allclose(sig, expit(result.logits.astype(np.float64) - 5.0), atol=1e-6)
    assert (sig.argmax(1) == soft.argmax(1)).all() and not np.allclose(sig.sum(1), 1.0)


def test_settings_and_shapes_are_checked():
    from clipcli.errors import UsageError

    with pytest.raises(UsageError, match="do not fit"):
        adapt.adapt_logits(np.zeros((20, 4)), np.zeros((3, 5)), np.zeros((20, 3)))
    with pytest.raises(UsageError, match=">= 0"):
        adapt.adapt_logits(np.zeros((20, 4)), np.zeros((3, 4)), np.zeros((20, 3)), adapt.AdaptSettings(beta=-1))


def test_identical_images_stay_finite():
    text = np.eye(3, 8, dtype=np.float32)
    x = np.tile(text[:1] * 0.6 + text[1:2] * 0.8, (20, 1))
    result = adapt.adapt_logits(x, text, 10 * x @ text.T)
    assert np.isfinite(result.logits).all() and (result.logits.argmax(1) == 1).all()


# --- CLI -------------------------------------------------------------------------------------------------------

CLI_LABELS = ["red circle", "blue square", "green star", "yellow circle", "purple ring", "orange cross"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """24 outline images of 6 labels, in class folders, and one broken file."""
    from draw_shapes import draw_dataset

    root = tmp_path_factory.mktemp("adapt-shapes")
    data = root / "data"
    draw_dataset(data, 4, "outline", "seen", 64, seed=3)
    for sub in list(data.iterdir()):
        if sub.name.replace("_", " ") not in CLI_LABELS:
            for f in sub.iterdir():
                f.unlink()
            sub.rmdir()
    (data / "red_circle" / "broken.png").write_bytes(b"not a png")
    return data


def classify_json(*args):
    result = cli("classify", *args, "-m", "demo", "-l", ",".join(CLI_LABELS), "-f", "json", "-q", "-k", "0")
    return result, json.loads(result.stdout) if result.stdout.strip() else None


def test_classify_adapt_keeps_order_and_errors_and_says_it_ran(folder):
    plain, before = classify_json(folder)
    adapted, after = classify_json(folder, "--adapt")
    assert plain.exit_code == adapted.exit_code == 1  # the broken file
    assert [r["path"] for r in after["results"]] == [r["path"] for r in before["results"]]
    broken = [i for i, r in enumerate(after["results"]) if "error" in r]
    assert broken == [i for i, r in enumerate(before["results"]) if "error" in r] and len(broken) == 1
    header = after["adapt"]
    assert header["ran"] is True and header["method"] == "anchored-gmm" and header["images"] == 24
    assert "adapt" not in before
    assert "broken.png" in adapted.stderr and "--adapt:" not in adapted.stderr
    # the records are the library's adapted scores, in the records' order
    from clipcli.api import ModelOptions, adapted_scores, open_encoder, zero_shot_classifier
    from clipcli.evaluate import encode_dataset

    paths = [r["path"] for r in after["results"] if "error" not in r]
    with open_encoder(ModelOptions("demo")) as encoder:
        _, x, _ = encode_dataset(encoder, paths)
        classifier = zero_shot_classifier(encoder.model, CLI_LABELS, "imagenet")
    scores, _ = adapted_scores(classifier, x, warn=False)
    records = [r for r in after["results"] if "error" not in r]
    for row, record in zip(scores, records):
        top = record["predictions"][0]
        assert top["label"] == CLI_LABELS[int(row.argmax())] and abs(top["score"] - float(row.max())) < 1e-5


def test_classify_adapt_with_few_images_warns_once_and_equals_zero_shot(folder):
    files = sorted((folder / "blue_square").iterdir())[:3]
    plain, before = classify_json(*files)
    adapted, after = classify_json(*files, "--adapt")
    assert adapted.exit_code == 0 and adapted.stderr.count("--adapt: 3 images") == 1, adapted.stderr
    assert after["results"] == before["results"] and after["adapt"]["ran"] is False


def test_whole_store_adapt_equals_adapt_on_the_files(folder, tmp_path):
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", "demo", "-q", "--dtype", "float32").exit_code == 1
    from_store, stored = classify_json("--store", store, "--adapt")
    _, direct = classify_json(folder, "--adapt")
    assert from_store.exit_code == 1 and stored["adapt"]["ran"] and stored["adapt"]["images"] == 24
    by_path = {Path(r["path"]).name + Path(r["path"]).parent.name: r for r in direct["results"]}
    for record in stored["results"]:
        other = by_path[Path(record["path"]).name + Path(record["path"]).parent.name]
        if "error" in record:
            assert "error" in other
        else:
            assert record["predictions"][0]["label"] == other["predictions"][0]["label"]
            assert abs(record["predictions"][0]["score"] - other["predictions"][0]["score"]) < 1e-4


def test_eval_and_sort_take_adapt(folder, tmp_path):
    result = cli("eval", folder, "-m", "demo", "-f", "json", "-q", "--adapt")
    assert result.exit_code == 1, result.output  # the broken file
    report = json.loads(result.stdout)
    assert report["adapt"]["ran"] and report["results"][0]["adapt"] == report["adapt"]
    plain = json.loads(cli("eval", folder, "-m", "demo", "-f", "json", "-q").stdout)
    assert "adapt" not in plain and plain["results"][0]["count"] == report["results"][0]["count"] == 24
    sort = cli("sort", folder, "--into", tmp_path / "out", "-m", "demo", "-l", ",".join(CLI_LABELS), "--dry-run",
               "-f", "json", "-q", "--adapt")
    plan = json.loads(sort.stdout)
    assert sort.exit_code == 1 and plan["adapt"]["ran"] and plan["dry_run"] is True
    assert not (tmp_path / "out").exists()


def test_adapt_with_a_few_shot_head(folder, tmp_path):
    head = tmp_path / "head.safetensors"
    fitted = cli("fit", folder, "-m", "demo", "-o", head, "-q")
    assert fitted.exit_code in (0, 1) and head.is_file(), fitted.output
    result = cli("classify", folder, "-m", "demo", "--head", head, "--adapt", "-f", "json", "-q")
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and document["adapt"]["ran"] and document["head"]["method"] == "gda"
    refused = cli("classify", folder, "-m", "demo", "--head", head, "--adapt", "--score", "sigmoid", "-q")
    assert refused.exit_code == 2 and "softmax" in refused.stderr


def test_adapt_with_other(folder, tmp_path):
    """--other and --adapt together: the labels' scores are adapted, the open-set answer is the rule's own."""
    plain, before = classify_json(folder, "--other")
    adapted, after = classify_json(folder, "--other", "--adapt")
    assert adapted.exit_code == plain.exit_code == 1 and after["adapt"]["ran"] and "other" in after
    for one, two in zip(before["results"], after["results"]):
        assert one["path"] == two["path"]
        if "error" not in one:
            first = lambda record: record["predictions"][0]["label"] == "other"  # noqa: E731
            assert first(one) == first(two)
            if first(one):
                assert one["predictions"][0] == two["predictions"][0]
