"""Metrics against hand computations; `clip eval`, `clip compare` and `clip models` on small local models."""

import json
import shutil
import subprocess

import pytest
import tiny_models
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.demo import shapes
from clipcli.evaluate import compute_metrics, load_dataset


def test_metrics_by_hand_with_an_unsupported_class_and_acc5():
    classes = ["a", "b", "c", "d", "e", "f"]  # f has no images
    targets = [0, 0, 1, 1, 2, 3, 4]
    ranked = [[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [1, 2, 3, 4, 5], [5, 0, 2, 3, 4], [2, 0, 1, 3, 4],
              [3, 0, 1, 2, 4], [0, 1, 2, 3, 5]]
    m = compute_metrics(targets, ranked, classes)
    assert m.acc1 == pytest.approx(4 / 7)  # images 0, 2, 4, 5
    assert m.acc5 == pytest.approx(5 / 7)  # images 3 and 6 miss: their class is not in their top 5
    # recalls: a 1/2, b 1/2, c 1, d 1, e 0; f has no support and is left out of the mean
    assert m.mean_per_class_recall == pytest.approx((0.5 + 0.5 + 1 + 1 + 0) / 5)
    by_label = {row["label"]: row for row in m.per_class}
    assert by_label["a"] == {"label": "a", "precision": 0.5, "recall": 0.5, "support": 2}  # predicted a twice
    assert by_label["b"]["precision"] == pytest.approx(1 / 2)
    assert by_label["f"] == {"label": "f", "precision": 0.0, "recall": None, "support": 0}
    assert m.confusion[3][3] == 1 and m.confusion[1][5] == 1 and m.confusion[4][0] == 1
    assert sum(map(sum, m.confusion)) == 7


def test_acc5_needs_five_classes():
    m = compute_metrics([0, 1, 1], [[0, 1], [0, 1], [1, 0]], ["cat", "dog"])
    assert m.acc5 is None
    assert m.acc1 == pytest.approx(2 / 3)
    assert m.mean_per_class_recall == pytest.approx((1 + 0.5) / 2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    for folder in ("red_circle", "blue-square", "green_star"):
        colour, shape = folder.replace("-", "_").split("_")
        (root / folder).mkdir()
        for i in range(4):
            shapes.draw_pil(colour, shape, seed=i).save(root / folder / f"{i}.png")
    return root


def test_folder_names_become_labels_and_mapping_overrides(dataset, tmp_path):
    data = load_dataset(str(dataset))
    assert data.class_names == ["blue square", "green star", "red circle"]
    assert len(data.paths) == 12 and data.targets.count(0) == 4
    mapping = tmp_path / "map.yaml"
    mapping.write_text("red_circle: crimson disc\n")
    assert load_dataset(str(dataset), str(mapping)).class_names == ["blue square", "green star", "crimson disc"]


def test_manifest_csv_and_jsonl(dataset, tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(f"path,label\n{dataset}/red_circle/0.png,red circle\n{dataset}/green_star/1.png,green star\n")
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"path": f"{dataset}/red_circle/0.png", "label": "red circle"}) + "\n")
    assert load_dataset(str(csv_path)).class_names == ["green star", "red circle"]
    assert load_dataset(str(jsonl)).targets == [0]


def test_eval_json_with_several_template_sets(tiny_model, dataset):
    result = CliRunner().invoke(app, ["eval", str(dataset), "--model", tiny_model, "--templates", "simple,imagenet-7",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [r["templates"] for r in document["results"]] == ["simple", "imagenet-7"]
    for row in document["results"]:
        assert row["count"] == 12
        assert row["acc5"] is None
        assert sum(map(sum, row["confusion_matrix"])) == 12
        hits = sum(row["confusion_matrix"][i][i] for i in range(3))
        assert row["acc1"] == pytest.approx(hits / 12)


def test_eval_with_the_demo_model_is_accurate(dataset, tmp_path):
    report = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["eval", str(dataset), "--model", "demo", "--format", "json",
                                      "--report", str(report)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["results"][0]
    assert row["acc1"] >= 0.9
    page = report.read_text()
    assert 'id="confusion-heatmap"' in page and "http://" not in page and "https://" not in page


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(tiny_model, dataset, tmp_path):
    report = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["eval", str(dataset), "--model", tiny_model, "--report", str(report)])
    assert result.exit_code == 0, result.output
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'id="confusion-heatmap"' in dom
    assert dom.count("<tr>") >= 4 + 3  # summary, heatmap rows
    assert "data:image/jpeg;base64," in dom or "<p>none</p>" in dom


def test_compare_prints_a_column_per_model(tmp_path, images):
    second = tiny_models.save_local_dir("custom", tmp_path / "custom", seed=4)
    first = tiny_models.save_local_dir("clip", tmp_path / "clip", seed=5)
    models = f"local-dir:{first},local-dir:{second}"
    result = CliRunner().invoke(app, ["compare", str(images / "red_circle.png"), "--models", models,
                                      "--labels", "red circle,blue square", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    per_model = document["results"][0]["models"]
    assert list(per_model) == [f"local-dir:{first}", f"local-dir:{second}"]
    for predictions in per_model.values():
        assert sum(p["score"] for p in predictions) == pytest.approx(1.0)
    table = CliRunner().invoke(app, ["compare", str(images / "red_circle.png"), "--models", models,
                                     "--labels", "red circle,blue square"])
    header = next(line for line in table.stdout.splitlines() if "label" in line)
    assert "clip" in header and "custom" in header


def test_compare_accuracy_on_a_dataset(tiny_model, dataset):
    result = CliRunner().invoke(app, ["compare", str(dataset), "--dataset", "--models", f"{tiny_model},demo",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in json.loads(result.stdout)["results"]}
    assert rows["demo"]["acc1"] >= 0.9
    assert 0 <= rows[tiny_model]["acc1"] <= 1


def test_models_lists_and_filters():
    result = CliRunner().invoke(app, ["models", "vit-b-32-256"])
    assert result.exit_code == 0
    assert "datacomp_s34b_b86k" in result.stdout
    assert "RN50" not in result.stdout


def test_compare_frees_each_model_before_loading_the_next():
    import gc
    import weakref

    import contextlib

    from clipcli.cli.compare import one_model_at_a_time
    from clipcli.cli.options import Ui

    class Model:
        pass

    alive_at_load = []
    previous = []

    @contextlib.contextmanager
    def load(spec):  # what open_encoder is to compare: a context holding the model
        gc.collect()
        alive_at_load.append([ref() is not None for ref in previous])
        yield Model()

    def work(spec, loaded, progress):
        previous.append(weakref.ref(loaded))
        return spec.upper()

    assert one_model_at_a_time(["a", "b", "c"], load, Ui(quiet=True, progress=False), work) == ["A", "B", "C"]
    assert alive_at_load == [[], [False], [False, False]]


def test_two_classes_with_one_label_text_are_refused(tmp_path):
    for folder in ("cat_1", "cat-1", "dog"):
        (tmp_path / folder).mkdir()
        shapes.draw_pil("red", "circle").save(tmp_path / folder / "x.png")
    from clipcli.errors import InputError
    with pytest.raises(InputError, match="several classes have the label 'cat 1'"):
        load_dataset(str(tmp_path))
