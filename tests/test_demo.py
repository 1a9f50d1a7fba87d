"""The shipped demo model, end to end through the installed `clip` command, and the training smoke test."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_e2e import REPO, clip

from clipcli.demo import shapes
from clipcli.models import load_model

sys.path.insert(0, str(REPO / "tools"))
from draw_shapes import draw_dataset  # noqa: E402

pytestmark = pytest.mark.e2e


def top1_by_folder(document) -> Counter:
    hits = Counter()
    for record in document["results"]:
        truth = Path(record["path"]).parent.name.replace("_", " ")
        hits[record["predictions"][0]["label"] == truth] += 1
    return hits


@pytest.mark.slow
def test_red_circle_is_red_circle_with_high_probability(tmp_path):
    image = tmp_path / "red.png"
    shapes.draw_pil("red", "circle", size=96, seed=77).save(image)
    result = clip("classify", str(image), "--model", "demo", "--labels", ",".join(shapes.all_labels()),
                  "--format", "json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)["results"][0]["predictions"][0]
    assert top["label"] == "red circle" and top["score"] >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("style,minimum", [("training", 0.90), ("shifted", 0.75)])
def test_folder_of_drawn_shapes_reaches_accuracy(tmp_path, style, minimum):
    draw_dataset(tmp_path, per_label=3, style=style, which="seen", size=80, seed=99)
    result = clip("classify", str(tmp_path), "--model", "demo", "--labels", ",".join(shapes.all_labels()),
                  "--format", "json", "--top-k", "1", timeout=300)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["templates"] == "imagenet" and len(document["labels"]) == 64
    hits = top1_by_folder(document)
    assert hits[True] + hits[False] == 60 * 3
    assert hits[True] / (60 * 3) >= minimum, hits


@pytest.mark.slow
def test_training_script_smoke_run_gives_a_loadable_model(tmp_path):
    out = tmp_path / "smoke"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "train_demo_model.py"), "--steps", "3",
                             "--batch-size", "16", "--eval-per-label", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "zero-shot top-1 seen_80_templates" in result.stdout
    loaded = load_model(f"local-dir:{out}")
    assert loaded.image_size == 48 and loaded.tokenizer.context_length == 32
    assert (out / "open_clip_model.safetensors").stat().st_size < 20e6


def test_python_api_one_call():
    import clipcli

    records = clipcli.classify([str(REPO / "examples")], ["red circle", "blue square", "green star", "yellow triangle"],
                               model="demo")
    top = {Path(r["path"]).stem: r["predictions"][0]["label"] for r in records}
    assert top == {"red_circle": "red circle", "blue_square": "blue square", "green_star": "green star",
                   "yellow_triangle": "yellow triangle"}
