"""The batch pipeline: worker and batch-size independence, failures inside workers, Ctrl-C."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from clipcli.api import DecodeOptions, ModelOptions, ScoreOptions, classify_paths, open_encoder, zero_shot_classifier
from clipcli.demo import shapes
from clipcli.images import discover


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i in range(40):
        colour = list(shapes.COLOURS)[i % 8]
        shape = shapes.SHAPES[i % 7]
        shapes.draw_pil(colour, shape, size=64 + i, seed=i).save(root / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    (root / "017.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a broken PNG, decoded inside a worker
    return root


def run(model, folder, **options):
    with open_encoder(ModelOptions(model, backend="torch"), DecodeOptions(**options)) as encoder:
        classifier = zero_shot_classifier(encoder.model, ["red circle", "blue square", "green star"], "simple",
                                          use_cache=False)
        return list(classify_paths(encoder, classifier, discover([str(folder)]), ScoreOptions(top_k=0)))


@pytest.mark.slow
def test_workers_and_batch_sizes_do_not_change_results(tiny_model, folder):
    baseline = run(tiny_model, folder, workers=0, batch_size=1)
    assert len(baseline) == 40
    for workers, batch_size in [(0, 32), (2, 1), (2, 32), (2, 7)]:
        records = run(tiny_model, folder, workers=workers, batch_size=batch_size)
        assert [r["path"] for r in records] == [r["path"] for r in baseline]
        for got, want in zip(records, baseline):
            if "error" in want:
                assert got == want
            else:
                assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]
                for a, b in zip(got["predictions"], want["predictions"]):
                    assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_a_file_failing_inside_a_worker_becomes_an_error_record(tiny_model, folder):
    records = run(tiny_model, folder, workers=2, batch_size=4)
    errors = [r for r in records if "error" in r]
    assert [os.path.basename(r["path"]) for r in errors] == ["017.png"]
    assert errors[0]["error"]["type"] in ("not_an_image", "truncated", "decode_error")
    assert sum("predictions" in r for r in records) == 39


def test_reduced_jpeg_decoding_keeps_the_model_input_size(tmp_path):
    from PIL import Image

    from clipcli.images import open_image

    Image.new("RGB", (2000, 1200), (200, 30, 30)).save(tmp_path / "big.jpg")
    assert open_image(str(tmp_path / "big.jpg"), None, 224).size == (500, 300)  # 1/4 scale, shorter side >= 224
    assert open_image(str(tmp_path / "big.jpg"), None, 400).size == (1000, 600)
    assert open_image(str(tmp_path / "big.jpg"), None, None).size == (2000, 1200)


IMAGES_NEVER_DONE_IN_TIME = 20_000


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_stops_quickly_and_leaves_complete_lines(tiny_model, tmp_path, workers):
    # regression: with 300 images the run could finish before the signal landed on a fast machine (exit 0, not
    # 130); 20,000 files (copies of one drawing) cannot all be classified in the moment the signal takes
    drawn = io.BytesIO()
    shapes.draw_pil("red", "circle", size=48, seed=0).save(drawn, format="PNG")
    for i in range(IMAGES_NEVER_DONE_IN_TIME):
        (tmp_path / f"{i:05d}.png").write_bytes(drawn.getvalue())
    command = [sys.executable, "-m", "clipcli", "classify", str(tmp_path), "--model", tiny_model, "--labels",
               "red circle,blue square", "--format", "jsonl", "--batch-size", "1", "--workers", workers,
               "--templates", "simple", "--no-cache"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    first = proc.stdout.readline()  # the run is under way
    assert first.startswith("{")
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    rest, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 3
    assert proc.returncode == 130
    lines = (first + rest).splitlines()
    assert 1 <= len(lines) < IMAGES_NEVER_DONE_IN_TIME
    assert all(json.loads(line)["predictions"] for line in lines)
    assert "interrupted" in stderr and "Traceback" not in stderr
