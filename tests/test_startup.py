"""Quick start of the ONNX Runtime backend: towers whose weights live in a side file (mapped, not copied) and
sessions without pre-packed weights for short runs give the same features as the packed, embedded ones;
and warm runs of every encoding command with torch unimportable."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from cli_helpers import ENCODING_COMMANDS

from clipcli.backends import load_backend_model, onnx as onnx_backend
from clipcli.demo import shapes

LABELS = "red circle,blue square,green star"


@pytest.mark.fresh_exports
def test_weights_moved_to_a_side_file_and_quick_sessions_give_the_same_features(tiny_model, monkeypatch):
    loaded = load_backend_model(tiny_model, backend="onnx")
    tower = loaded.directory / "image.onnx"
    pixels = np.random.default_rng(0).standard_normal((3, 3, loaded.image_size, loaded.image_size)).astype(np.float32)
    embedded = onnx_backend.ort_session(tower).run(None, {"pixels": pixels})[0]
    assert onnx_backend.external_weights(tower) == tower and not tower.with_name("image.onnx.data").exists()  # small

    monkeypatch.setattr(onnx_backend, "EXTERNAL_MIN_BYTES", 0)
    size_before = tower.stat().st_size
    onnx_backend.external_weights(tower)
    data = tower.with_name("image.onnx.data")
    assert data.is_file() and tower.stat().st_size < size_before / 4
    assert not [p for p in tower.parent.iterdir() if p.name.startswith(".external-")]  # its work folder is gone
    model = onnx.load(str(tower), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    stamp = data.stat().st_mtime_ns
    onnx_backend.external_weights(tower)  # once only
    assert data.stat().st_mtime_ns == stamp

    full = onnx_backend.ort_session(tower).run(None, {"pixels": pixels})[0]
    assert not tower.with_name("image.opt.onnx").exists()
    quick = onnx_backend.ort_session(tower, quick=True).run(None, {"pixels": pixels})[0]  # optimises once, beside
    optimised = tower.with_name("image.opt.onnx")
    assert optimised.is_file() and tower.with_name("image.opt.onnx.data").is_file()
    assert not [p for p in tower.parent.iterdir() if p.name.startswith(".optimize-")]
    again = onnx_backend.ort_session(tower, quick=True).run(None, {"pixels": pixels})[0]  # loads it as it is
    assert np.allclose(full, embedded, atol=1e-6) and np.allclose(quick, embedded, atol=1e-5)
    assert np.allclose(again, embedded, atol=1e-5)

    again = load_backend_model(tiny_model, backend="onnx")  # a short run through the model
    again.expect_images(3)
    assert np.allclose(again.encode_pixels(pixels), embedded, atol=1e-5)
    assert np.allclose(again.encode_texts(["a red circle", "a dog"]), loaded.encode_texts(["a red circle", "a dog"]),
                       atol=1e-5)


def test_an_image_session_that_fails_in_the_background_fails_the_first_encode(tiny_model, tmp_path):
    loaded = load_backend_model(tiny_model, backend="onnx")
    loaded._image_path = tmp_path / "missing.onnx"  # the session cannot be made
    loaded.expect_images(2)
    pixels = np.zeros((1, 3, loaded.image_size, loaded.image_size), dtype=np.float32)
    with pytest.raises(Exception, match="missing.onnx"):
        loaded.encode_pixels(pixels)


BLOCKED = ("import sys\nfor name in ('torch', 'torchvision', 'open_clip'):\n    sys.modules[name] = None\n"
           "from clipcli.cli import main\nsys.argv = ['clip', *sys.argv[1:]]\nmain()\n")


@pytest.mark.e2e
@pytest.mark.slow
def test_warm_runs_of_every_encoding_command_import_no_torch(tmp_path):
    """Each command runs once normally (the demo model is exported, labels are cached), then again with torch,
    torchvision and open_clip unimportable: the same output."""
    data = tmp_path / "data"
    for label in ("red circle", "blue square", "green star"):
        colour, kind = label.split()
        for i in range(3):
            (data / label.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
            shapes.draw_pil(colour, kind, size=48, seed=i).save(data / label.replace(" ", "_") / f"{i}.png")
    inbox = data / "red_circle"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPCLI_CACHE_DIR": str(tmp_path / "cache")}
    head = tmp_path / "head.safetensors"
    commands = {
        "classify": ["classify", inbox, "-m", "demo", "-l", LABELS, "-f", "json"],
        "embed": ["embed", inbox, "-m", "demo", "--store", tmp_path / "store"],
        "eval": ["eval", data, "-m", "demo", "-t", "simple", "-f", "json"],
        "fit": ["fit", data, "-m", "demo", "-t", "simple", "--shots", "2", "-o", head],
        "classify --head": ["classify", inbox, "-m", "demo", "--head", head, "-f", "json"],
        "sort": ["sort", inbox, "-m", "demo", "-l", LABELS, "--into", tmp_path / "sorted", "--dry-run", "-f", "json"],
        "compare": ["compare", inbox, "--models", "demo", "-l", LABELS, "-f", "json"],
    }
    for name, args in commands.items():
        args = [str(a) for a in args]
        cold = subprocess.run([sys.executable, "-m", "clipcli", *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert cold.returncode == 0, (name, cold.stderr)
        warm = subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert warm.returncode == 0, (name, warm.stderr)
        if name != "fit":
            assert _without_timing(warm.stdout) == _without_timing(cold.stdout), name
    assert set(commands) >= {c for c in ENCODING_COMMANDS}


def _without_timing(text: str) -> str:
    """Output with the few-shot fit times (which vary run to run) left out."""
    try:
        document = json.loads(text)
    except ValueError:
        return text
    for row in document.get("results", []) if isinstance(document, dict) else []:
        if isinstance(row, dict):
            row.pop("fit_seconds", None)
    return json.dumps(document, sort_keys=True)
