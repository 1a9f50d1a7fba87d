"""Few-shot heads: each method against an independent computation (scikit-learn's LogisticRegressionCV, the
GDA and Tip-Adapter formulas in numpy), never below zero-shot where zero-shot is strong, above it where it is
weak, head files, and the CLI (fit, classify/eval/sort --head, the curve and its page in a browser)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli

from clipcli import fewshot
from clipcli.demo import shapes


@pytest.fixture(scope="module")
def digits():
    """Real data: scikit-learn's digits, pixels as L2-normalised features, split in half per class."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data / np.linalg.norm(data.data, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    train, test = [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(data.target == c))
        train += members[: len(members) // 2].tolist()
        test += members[len(members) // 2:].tolist()
    return (x[train].astype(np.float32), data.target[train].tolist(),
            x[test].astype(np.float32), data.target[test].tolist())


def random_text(classes, dim, seed=None):
    """Unit vectors standing in for class embeddings (float32 numpy, like the classifier's)."""
    text = np.random.default_rng(seed).standard_normal((classes, dim))
    return (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn's notices of its own API changes
@pytest.mark.parametrize("shots", [4, 16])
def test_logistic_matches_scikit_learn_logistic_regression_cv(digits, shots):
    from sklearn.linear_model import LogisticRegressionCV

    x, y, test_x, test_y = digits
    chosen = fewshot.sample_shots(y, shots, seed=1)
    xs, ys = x[chosen], [y[i] for i in chosen]
    text = random_text(10, x.shape[1])  # unused by the logistic probe
    head = fewshot.fit_head(xs, ys, [str(i) for i in range(10)], text, 100.0, "logistic", seed=1)
    folds = [(np.array(kept), np.array(held)) for kept, held in fewshot.make_folds(ys, seed=1)]
    reference = LogisticRegressionCV(Cs=list(fewshot.C_GRID), cv=folds, max_iter=1000, tol=1e-6)
    reference.fit(xs, ys)
    ours = fewshot.accuracy(head, test_x, test_y)
    theirs = reference.score(test_x, test_y)
    assert abs(ours - theirs) <= 0.01, (ours, theirs, head.params, reference.C_)
    assert ours > 0.8


def test_gda_equals_the_closed_form(digits):
    x, y, test_x, _ = digits
    chosen = fewshot.sample_shots(y, 8, seed=0)
    xs, ys = x[chosen].astype(np.float64), np.array([y[i] for i in chosen])
    text = random_text(10, x.shape[1])
    head = fewshot.fit_head(x[chosen], ys.tolist(), list("0123456789"), text, 50.0, "gda")
    gamma, alpha = head.params["shrinkage"], head.params["alpha"]
    means = np.stack([xs[ys == c].mean(axis=0) for c in range(10)])
    centred = xs - means[ys]
    cov = centred.T @ centred / len(xs)
    cov = (1 - gamma) * cov + gamma * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    weight = means @ np.linalg.inv(cov)
    bias = -0.5 * (weight * means).sum(axis=1)
    t = test_x.astype(np.float64)
    expected = 50.0 * t @ text.astype(np.float64).T + alpha * (t @ weight.T + bias)
    got = head.logits(test_x).astype(np.float64)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


def test_tip_adapter_equals_its_formula(digits):
    x, y, test_x, _ = digits
    chosen = fewshot.sample_shots(y, 4, seed=0)
    text = random_text(10, x.shape[1])
    head = fewshot.fit_head(x[chosen], [y[i] for i in chosen], list("0123456789"), text, 30.0, "tip-adapter")
    a, b = head.params["alpha"], head.params["beta"]
    keys, labels = x[chosen], np.eye(10)[[y[i] for i in chosen]]
    t = test_x
    expected = 30.0 * t @ text.T + a * np.exp(-b * (1 - t @ keys.T)) @ labels
    assert np.allclose(head.logits(test_x), expected, atol=1e-3)


def test_folds_are_stratified_and_cover_every_example():
    targets = [0] * 7 + [1] * 5 + [2] * 9
    folds = fewshot.make_folds(targets, seed=3)
    assert len(folds) == 5
    held = sorted(i for _, part in folds for i in part)
    assert held == list(range(len(targets)))
    for kept, part in folds:
        assert set(kept).isdisjoint(part) and {targets[i] for i in kept} == {0, 1, 2}


def demo_features(style, per_label, seed):
    """Demo-model features of freshly drawn shapes of the 60 seen labels, and the zero-shot text embeddings."""
    from clipcli.api import zero_shot_classifier
    from clipcli.models import load_model

    loaded = load_model("demo")
    labels = shapes.seen_labels()
    colours = [name.split()[0] for name in labels for _ in range(per_label)]
    kinds = [name.split()[1] for name in labels for _ in range(per_label)]
    images = shapes.draw(colours, kinds, size=64, style=style, generator=torch.Generator().manual_seed(seed))
    from PIL import Image

    pixels = torch.stack([loaded.preprocess(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images])
    with torch.no_grad():
        features = torch.nn.functional.normalize(loaded.model.encode_image(pixels), dim=-1)
    classifier = zero_shot_classifier(loaded, labels, "simple")
    targets = [i for i in range(len(labels)) for _ in range(per_label)]
    return features.numpy(), targets, classifier


@pytest.mark.parametrize("style,strong", [(shapes.TRAINING, True), (shapes.OUTLINE, False)])
def test_default_head_against_zero_shot(style, strong):
    train_x, train_y, classifier = demo_features(style, 4, seed=11)
    test_x, test_y, _ = demo_features(style, 4, seed=12)
    zero = fewshot.fit_head(train_x[:0], [], classifier.labels, classifier.label_embeddings,
                            classifier.logit_scale, "zero-shot")
    zero_acc = fewshot.accuracy(zero, test_x, test_y)
    for k in (1, 4):
        chosen = fewshot.sample_shots(train_y, k, seed=0)
        head = fewshot.fit_head(train_x[chosen], [train_y[i] for i in chosen], classifier.labels,
                                classifier.label_embeddings, classifier.logit_scale)
        acc = fewshot.accuracy(head, test_x, test_y)
        if strong:  # at one shot never below a strong zero-shot; with more, cross-validation noise stays small
            assert zero_acc > 0.95 and acc >= zero_acc - (0 if k == 1 else 0.01), (k, acc, zero_acc)
        else:
            assert zero_acc < 0.3 and acc > zero_acc + 0.05, (k, acc, zero_acc)  # learns where it is weak


def test_two_shots_that_do_not_tell_the_classes_apart_leave_the_head_at_zero_shot():
    """At two shots per class the held-out folds veto a head that fits the shots but does worse on the other
    shot than zero-shot; shots that do tell the classes apart keep their head."""
    classes, d = 8, 64
    text = torch.nn.functional.normalize(torch.randn(classes, d, generator=torch.Generator().manual_seed(0)), dim=-1).numpy()
    labels = [str(c) for c in range(classes)]

    def draw(per_class, centres, signal, seed):
        y = torch.arange(classes).repeat(per_class)
        noise = torch.nn.functional.normalize(torch.randn(len(y), d, generator=torch.Generator().manual_seed(seed)), dim=-1)
        return (signal * torch.as_tensor(centres)[y] + noise).numpy(), y.tolist()

    # noisy shots: a weak text-aligned signal under noise; zero-shot is the better guess
    x, y = draw(2, text, 0.2, 1)
    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    fitting = fewshot._smallest_fitting_alpha(unit, np.array(y), text, 10.0 * unit @ text.T, 0.5)
    head = fewshot.fit_head(x, y, labels, text, 10.0)
    assert fitting > 0 and head.params["alpha_relative"] == 0.0  # vetoed
    test_x, test_y = draw(50, text, 0.2, 101)
    zero_shot = fewshot.fit_head(x, y, labels, text, 10.0, method="zero-shot")
    assert fewshot.accuracy(head, test_x, test_y) == fewshot.accuracy(zero_shot, test_x, test_y)
    # informative shots: tight clusters the text knows nothing about; the head learns them
    centres = torch.nn.functional.normalize(torch.randn(classes, d, generator=torch.Generator().manual_seed(5)), dim=-1).numpy()
    x, y = draw(2, centres, 3.0, 2)
    head = fewshot.fit_head(x, y, labels, text, 10.0)
    test_x, test_y = draw(50, centres, 3.0, 102)
    assert head.params["alpha_relative"] > 0
    assert fewshot.accuracy(head, test_x, test_y) > fewshot.accuracy(zero_shot, test_x, test_y) + 0.5


def test_head_file_round_trip(tmp_path, digits):
    x, y, test_x, _ = digits
    text = random_text(10, x.shape[1])
    for method in ("gda", "logistic", "tip-adapter"):
        head = fewshot.fit_head(x[:200], y[:200], list("abcdefghij"), text, 42.0, method, seed=5,
                                meta={"model": "m", "model_key": "k", "templates": ["a {}."]})
        path = tmp_path / f"{method}.safetensors"
        fewshot.save_head(head, path)
        loaded = fewshot.load_head(path)
        assert loaded.labels == head.labels and loaded.method == method and loaded.params == head.params
        assert loaded.meta["seed"] == 5 and loaded.meta["model_key"] == "k" and loaded.meta["train_images"] == 200
        assert np.allclose(loaded.logits(test_x), head.logits(test_x))
    (tmp_path / "bad.safetensors").write_bytes(b"not a head")
    with pytest.raises(fewshot.UsageError, match="not a head file"):
        fewshot.load_head(tmp_path / "bad.safetensors")


def test_fit_save_and_load_without_torch(tmp_path):
    """fewshot neither imports torch nor needs it: a subprocess where torch cannot be imported fits GDA and
    logistic heads, writes them and reads them back; the files are the torch-era format (float32 tensors of the
    same names, the JSON metadata), read here by safetensors' torch loader, and a torch-written head loads."""
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # `import torch` now raises ImportError
        import numpy as np
        from clipcli import fewshot

        rng = np.random.default_rng(0)
        classes, dim = 4, 16
        centres = rng.standard_normal((classes, dim))
        y = [c for c in range(classes) for _ in range(6)]
        x = (centres[y] + 0.3 * rng.standard_normal((len(y), dim))).astype(np.float32)
        text = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        for method in ("gda", "logistic"):
            head = fewshot.fit_head(x, y, list("abcd"), text, 20.0, method, meta={"model_key": "k"})
            path = sys.argv[1] + "/" + method + ".safetensors"
            fewshot.save_head(head, path)
            loaded = fewshot.load_head(path)
            probabilities = loaded.scores(x, "softmax")
            assert isinstance(probabilities, np.ndarray) and probabilities.shape == (len(y), classes)
            assert np.allclose(probabilities, head.scores(x)) and loaded.params == head.params
            assert fewshot.accuracy(loaded, x, y) > 0.9, method
        assert "torch" not in [name.split(".")[0] for name, module in sys.modules.items() if module is not None]
    """)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                            cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "logistic.safetensors"))
    assert set(tensors) == {"text", "weight", "bias"} and all(t.dtype == torch.float32 for t in tensors.values())
    with safe_open(str(tmp_path / "gda.safetensors"), framework="pt") as handle:
        document = json.loads(handle.metadata()["clipcli"])
    assert document["format"] == "clipcli-head" and document["method"] == "gda" and document["labels"] == list("abcd")
    save_file(tensors, str(tmp_path / "torch.safetensors"), metadata={"clipcli": json.dumps(
        {"format": "clipcli-head", "version": 1, "labels": list("abcd"), "method": "logistic", "logit_scale": 20.0,
         "params": {"C": 1.0}})})
    head = fewshot.load_head(tmp_path / "torch.safetensors")
    assert head.tensors["weight"].dtype == np.float32 and head.scores(np.eye(4, 16, dtype=np.float32)).shape == (4, 4)


@pytest.fixture(scope="module")
def shape_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    labels = ["red circle", "blue square", "green star", "yellow triangle"]
    for split, per_label, seed in (("train", 6, 1), ("test", 5, 2)):
        for label in labels:
            colour, kind = label.split()
            folder = root / split / label.replace(" ", "_")
            folder.mkdir(parents=True)
            for i in range(per_label):
                shapes.draw_pil(colour, kind, size=64, style=shapes.OUTLINE, seed=seed * 100 + i).save(folder / f"{i}.png")
    return root


def test_cli_fit_then_classify_eval_and_sort_with_the_head(shape_sets, tmp_path, tiny_model):
    head = tmp_path / "head.safetensors"
    fitted = cli("fit", shape_sets / "train", "-m", "demo", "-o", head, "--shots", "4", "--seed", "3")
    assert fitted.exit_code == 0, fitted.output
    assert "head written to" in fitted.stderr and "gda, 4 labels, 16 images" in fitted.stderr
    meta = fewshot.load_head(head).meta
    assert meta["shots_per_class"] == 4 and meta["seed"] == 3 and meta["model"] == "demo"
    assert meta["templates_name"] == "imagenet" and len(meta["templates"]) == 80 and "clipcli_version" in meta

    image = next((shape_sets / "test" / "green_star").iterdir())
    result = cli("classify", image, "-m", "demo", "--head", head, "-f", "json", "-k", "0")
    document = json.loads(result.stdout)
    assert document["head"]["path"] == str(head) and document["head"]["method"] == "gda"
    assert sorted(p["label"] for p in document["results"][0]["predictions"]) == sorted(document["labels"])
    assert sum(p["score"] for p in document["results"][0]["predictions"]) == pytest.approx(1.0, abs=1e-5)

    evaluation = json.loads(cli("eval", shape_sets / "test", "-m", "demo", "--head", head, "-f", "json").stdout)
    assert evaluation["results"][0]["templates"] == "head:gda" and evaluation["results"][0]["count"] == 20
    zero = json.loads(cli("eval", shape_sets / "test", "-m", "demo", "-f", "json").stdout)
    assert evaluation["results"][0]["acc1"] > zero["results"][0]["acc1"]

    sorted_out = cli("sort", shape_sets / "test", "-m", "demo", "--head", head, "--into", tmp_path / "o", "-n", "-f",
                     "jsonl")
    assert {json.loads(line)["folder"] for line in sorted_out.stdout.splitlines()} <= \
        {"red circle", "blue square", "green star", "yellow triangle"}

    both = cli("classify", image, "-m", "demo", "--head", head, "-l", "a,b")
    assert both.exit_code == 2 and "--head brings its own labels" in both.stderr
    other = cli("classify", image, "-m", tiny_model, "--head", head)
    assert other.exit_code == 2 and other.stderr.count("\n") == 1
    assert "fitted on model demo" in other.stderr and tiny_model in other.stderr


def test_fit_from_the_store_encodes_nothing_the_second_time(shape_sets, tmp_path):
    store = tmp_path / "store"
    for attempt in range(2):
        cli("fit", shape_sets / "train", "-m", "demo", "-o", tmp_path / "h.safetensors", "--store", store)
    info = json.loads(cli("store", "info", store, "-f", "json").stdout)
    assert info["images"] == 24

    from clipcli import embeddings

    calls = []
    original = embeddings.Encoder._encode

    def counted(self, paths, progress=None):
        calls.extend(paths)  # the images the model is asked to encode
        return original(self, paths, progress)

    embeddings.Encoder._encode = counted
    try:
        result = cli("fit", shape_sets / "train", "-m", "demo", "-o", tmp_path / "h2.safetensors", "--store", store)
    finally:
        embeddings.Encoder._encode = original
    assert result.exit_code == 0 and calls == []


def test_curve_table_json_and_report(shape_sets, tmp_path):
    args = ["fit", shape_sets / "train", "--eval", shape_sets / "test", "-m", "demo", "--shots", "0,1,2",
            "--method", "gda,logistic", "--repeats", "2"]
    document = json.loads(cli(*args, "-f", "json").stdout)
    rows = {(r["method"], r["shots"]): r for r in document["results"]}
    assert set(rows) == {("zero-shot", 0), ("gda", 1), ("gda", 2), ("logistic", 1), ("logistic", 2)}
    assert len(rows[("gda", 2)]["runs"]) == 2 and len(rows[("zero-shot", 0)]["runs"]) == 1
    assert rows[("gda", 1)]["mean"] == pytest.approx(np.mean(rows[("gda", 1)]["runs"]))
    table = cli(*args)
    assert "gda" in table.stdout and "logistic" in table.stdout and "±" in table.stdout
    report = tmp_path / "curve.html"
    cli(*args, "--report", report)
    text = report.read_text()
    assert text.count('class="method"') == 2
    if shutil.which("chromium"):
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report.as_uri()],
            capture_output=True, text=True, timeout=120).stdout
        assert dom.count("<polyline") == 2 and 'id="curve-table"' in dom


def test_fit_option_errors(shape_sets, tmp_path):
    cases = [
        (["--shots", "0"], "one number >= 1"),
        (["--shots", "x"], "whole number"),
        (["--method", "magic"], "unknown --method"),
        (["--method", "gda,logistic"], "one --method at a time"),
        ([], "give -o HEAD.safetensors"),
    ]
    for extra, message in cases:
        args = ["fit", shape_sets / "train", "-m", "demo", *extra]
        if "-o" not in extra and message != "give -o HEAD.safetensors":
            args += ["-o", tmp_path / "h.safetensors"]
        result = cli(*args)
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_logistic_probe_on_demo_digit_features_reaches_logistic_regression_cv(tmp_path):
    """Issue 20: every training digit, demo-model features; the probe's coarse-to-fine C search comes within one
    point of scikit-learn's LogisticRegressionCV (its defaults: 10 C values, 5 folds; max_iter raised so that it
    converges)."""
    from sklearn.linear_model import LogisticRegressionCV

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from digits_dataset import save_digits

    from clipcli.api import ModelOptions, open_encoder
    from clipcli.evaluate import encode_dataset, load_dataset

    save_digits(tmp_path / "digits")
    split = {}
    with open_encoder(ModelOptions("demo")) as encoder:
        for name in ("train", "test"):
            data = load_dataset(str(tmp_path / "digits" / name))
            kept, x, _ = encode_dataset(encoder, data.paths)
            split[name] = x, [data.targets[i] for i in kept]
    (x, y), (test_x, test_y) = split["train"], split["test"]
    head = fewshot.fit_head(x, y, [str(i) for i in range(10)], random_text(10, x.shape[1], 0), 100.0, "logistic")
    reference = LogisticRegressionCV(max_iter=1000).fit(x, y)
    ours, theirs = fewshot.accuracy(head, test_x, test_y), reference.score(test_x, test_y)
    assert ours >= theirs - 0.01, (ours, theirs, head.params, reference.C_)
