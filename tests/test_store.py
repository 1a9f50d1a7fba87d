"""The image-embedding store: format read back with pyarrow alone, incremental runs, equal results,
one model per store, the lock, and a real process killed with SIGKILL and SIGINT mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.demo import shapes

LABELS = "red circle,blue square,green star"


def draw(folder: Path, count: int, start: int = 0, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    colors, kinds = ["red", "blue", "green", "yellow"], ["circle", "square", "star", "triangle"]
    paths = []
    for i in range(start, start + count):
        path = folder / f"img_{i:04d}.png"
        shapes.draw_pil(colors[i % 4], kinds[(i // 4) % 4], size=size, seed=i).save(path)
        paths.append(path)
    return paths


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def live_table(store: Path):
    """The store as a reader with pyarrow alone sees it: the root folder read as a Parquet dataset."""
    import pyarrow.dataset as ds

    manifest = json.loads((store / "_clip-store.json").read_text())
    table = ds.dataset(store).to_table()
    return manifest, (table if table.num_rows else None)


def shard_count(store: Path) -> int:
    folder = store / "shards"
    return len([p for p in folder.iterdir() if p.suffix == ".parquet"]) if folder.is_dir() else 0


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "photos"
    draw(folder, 6)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def test_embed_writes_documented_schema_read_with_pyarrow_alone(tiny_model, folder, tmp_path):
    store = tmp_path / "store"
    result = cli("embed", folder, "--store", store, "--model", tiny_model, "--dtype", "float32")
    assert result.exit_code == 1, result.output  # one unreadable file: reported, skipped, exit 1
    assert "broken.png" in result.stderr and "0 already stored, 6 encoded, 1 unreadable" in result.stderr
    manifest, table = live_table(store)
    assert manifest["format"] == "clipcli-image-store" and manifest["schema_version"] == 2
    assert manifest["dim"] == 32 and manifest["dtype"] == "float32" and manifest["model"]["name"] == tiny_model
    assert table.column_names == ["path", "size", "mtime_ns", "width", "height", "embedding", "error_type",
                                  "error_message"]
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(p.name for p in folder.iterdir())
    for name, row in rows.items():
        real = folder / name
        assert row["path"] == os.path.realpath(real)
        assert (row["size"], row["mtime_ns"]) == (real.stat().st_size, real.stat().st_mtime_ns)
    bad = rows.pop("broken.png")
    assert bad["embedding"] is None and bad["error_type"] == "truncated" and bad["width"] is None
    for name, row in rows.items():
        assert (row["width"], row["height"]) == Image.open(folder / name).size
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)
    # the whole shards folder reads the same (no left-overs), also with pyarrow's dataset discovery
    assert pq.read_table(store / "shards").num_rows == len(rows) + 1


def test_stored_embeddings_equal_open_clip_encode_image(tiny_model, tiny_model_dir, folder, tmp_path):
    import open_clip
    import torch

    store = tmp_path / "store"
    cli("embed", folder / "img_0000.png", "--store", store, "--model", tiny_model, "--dtype", "float32")
    model, preprocess = open_clip.create_model_from_pretrained(tiny_model)
    with torch.no_grad():
        expected = model.encode_image(preprocess(Image.open(folder / "img_0000.png").convert("RGB"))[None])
    expected = torch.nn.functional.normalize(expected, dim=-1)[0].numpy()
    _, table = live_table(store)
    assert np.abs(np.array(table.column("embedding")[0].as_py()) - expected).max() < 1e-6


def test_incremental_runs_encode_only_new_and_changed_files_and_prune(tiny_model, folder, tmp_path):
    store = tmp_path / "store"
    cli("embed", folder, "--store", store, "--model", tiny_model)
    _, before = live_table(store)
    again = cli("embed", folder, "--store", store, "--model", tiny_model)
    assert "7 already stored, 0 encoded" in again.stderr  # the unreadable file is not retried either
    assert again.exit_code == 0

    changed = folder / "img_0001.png"
    shapes.draw_pil("yellow", "star", size=48, seed=99).save(changed)
    draw(folder, 2, start=100)
    (folder / "img_0002.png").unlink()
    third = cli("embed", folder, "--store", store, "--model", tiny_model, "--prune")
    assert "5 already stored, 3 encoded" in third.stderr and "1 pruned" in third.stderr, third.stderr
    _, after = live_table(store)
    names = [Path(p).name for p in after.column("path").to_pylist()]
    assert sorted(names) == sorted(p.name for p in folder.iterdir())  # every file exactly once
    old = {Path(r["path"]).name: r for r in before.to_pylist()}
    new = {Path(r["path"]).name: r for r in after.to_pylist()}
    assert new["img_0001.png"]["embedding"] != old["img_0001.png"]["embedding"]
    assert (new["img_0001.png"]["width"], new["img_0001.png"]["size"]) == (48, changed.stat().st_size)
    assert new["img_0003.png"] == old["img_0003.png"]
    assert pq.read_table(store / "shards").num_rows == len(names)  # replaced shards were removed


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("float16", 2e-3)])
def test_classify_from_store_equals_classify_without(tiny_model, folder, tmp_path, dtype, tolerance):
    store = tmp_path / "store"
    plain = cli("classify", folder, "-l", LABELS, "-m", tiny_model, "-f", "json", "-k", "0")
    cli("embed", folder / "img_0000.png", "--store", store, "--model", tiny_model, "--dtype", dtype)
    first = cli("classify", folder, "-l", LABELS, "-m", tiny_model, "-f", "json", "-k", "0", "--store", store)
    assert first.exit_code == 1 and "1 already stored, 5 encoded, 1 unreadable" in first.stderr, first.stderr
    whole = cli("classify", "--store", store, "-l", LABELS, "-f", "json", "-k", "0")  # model from the store
    reference = {Path(r["path"]).name: r for r in json.loads(plain.stdout)["results"]}
    for output in (first.stdout, whole.stdout):
        records = {Path(r["path"]).name: r for r in json.loads(output)["results"]}
        assert records.keys() == reference.keys()
        assert records["broken.png"]["error"]["type"] == "truncated"
        for name, record in records.items():
            if "error" in record:
                continue
            got = {p["label"]: p["score"] for p in record["predictions"]}
            want = {p["label"]: p["score"] for p in reference[name]["predictions"]}
            assert max(abs(got[k] - want[k]) for k in want) <= tolerance
    # first run order = input order, as without a store
    assert [r["path"] for r in json.loads(first.stdout)["results"]] == \
        [r["path"] for r in json.loads(plain.stdout)["results"]]


def test_float16_store_within_2e3_of_float32(tiny_model, folder, tmp_path):
    outputs = {}
    for dtype in ("float16", "float32"):
        store = tmp_path / dtype
        cli("embed", folder, "--store", store, "--model", tiny_model, "--dtype", dtype)
        result = cli("classify", "--store", store, "-l", LABELS, "-f", "jsonl", "-k", "0")
        outputs[dtype] = {r["path"]: {p["label"]: p["score"] for p in r.get("predictions", [])}
                          for r in map(json.loads, result.stdout.splitlines())}
    assert outputs["float16"].keys() == outputs["float32"].keys()
    diffs = [abs(outputs["float16"][p][k] - v) for p, scores in outputs["float32"].items() for k, v in scores.items()]
    assert 0 < max(diffs) <= 2e-3  # float16 really rounds, and stays within the bound


def test_fully_stored_inputs_do_no_image_work(tiny_model, folder, tmp_path, monkeypatch):
    from clipcli import api, embeddings
    from clipcli.models import load_model

    store = tmp_path / "store"
    cli("embed", folder, "--store", store, "--model", tiny_model)
    def no_encoding(self, paths, progress=None):
        if paths:
            raise AssertionError("the image tower ran")
        yield from ()

    monkeypatch.setattr(embeddings.Encoder, "_encode", no_encoding)
    with api.open_encoder(api.ModelOptions(tiny_model), store=store) as encoder:
        classifier = api.zero_shot_classifier(encoder.model, LABELS.split(","), "simple")
        records = list(api.classify_paths(encoder, classifier, [str(p) for p in sorted(folder.iterdir())]))
    assert len(records) == 7 and encoder.report.stored == 7 and encoder.report.encoded == 0


def test_store_refuses_another_model(tiny_model, folder, tmp_path):
    store = tmp_path / "store"
    cli("embed", folder, "--store", store, "--model", tiny_model)
    for command in (["embed", folder], ["classify", folder, "-l", LABELS], ["classify", "-l", LABELS]):
        result = cli(*command, "--store", store, "--model", "demo")
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and "demo" in result.stderr and tiny_model in result.stderr


def test_second_writer_stops_with_one_line(tiny_model, folder, tmp_path):
    from clipcli.embeddings import open_store_writer
    from clipcli.models import load_model

    store = tmp_path / "store"
    with open_store_writer(store, load_model(tiny_model)):
        result = cli("embed", folder, "--store", store, "--model", tiny_model)
    assert result.exit_code == 4
    assert result.stderr.strip() == (f"error: store {store} is being written by another clip process "
                                     f"(pid {os.getpid()}); wait for it to finish, or use another --store folder")
    assert cli("embed", folder, "--store", store, "--model", tiny_model).exit_code == 1  # lock released


def test_store_info_and_python_api(tiny_model, folder, tmp_path):
    from clipcli.store import open_store

    store = tmp_path / "store"
    cli("embed", folder, "--store", store, "--model", tiny_model)
    info = json.loads(cli("store", "info", store, "--format", "json").stdout)
    assert (info["images"], info["errors"], info["dim"], info["dtype"]) == (6, 1, 32, "float16")
    assert info["model"] == tiny_model and info["size_bytes"] > 0
    opened = open_store(store)
    assert opened.rows == 7
    batches = list(opened.iter_embeddings(rows=4))
    assert sum(len(paths) for paths, _, _ in batches) == 7
    assert all(vectors.dtype == np.float32 and vectors.shape[1] == 32 for _, vectors, _ in batches)
    missing = cli("store", "info", tmp_path / "nothing")
    assert missing.exit_code == 4 and "clip embed" in missing.stderr


def test_eval_with_store_equals_eval_without(tiny_model, tmp_path):
    dataset = tmp_path / "data"
    for label in ("red circle", "blue square"):
        color, kind = label.split()
        for i in range(3):
            (dataset / label).mkdir(parents=True, exist_ok=True)
            shapes.draw_pil(color, kind, size=40, seed=i).save(dataset / label / f"{i}.png")
    args = ["eval", dataset, "--model", tiny_model, "--format", "json", "-t", "simple"]
    plain = json.loads(cli(*args).stdout)["results"]
    store = tmp_path / "store"
    first = cli(*args, "--store", store)
    second = cli(*args, "--store", store)
    assert json.loads(first.stdout)["results"][0]["acc1"] == plain[0]["acc1"]
    assert json.loads(second.stdout)["results"][0]["acc1"] == plain[0]["acc1"]
    assert open_rows(store) == 6


def open_rows(store: Path) -> int:
    return live_table(store)[1].num_rows


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_embed_resumes_with_every_image_once(tiny_model, tmp_path, sig):
    # regression: with 240 images the embed could finish before SIGINT landed on a fast machine (exit 0, not
    # 130); 2,400 cannot all be encoded and committed in the moment the signal takes
    folder = tmp_path / "many"
    total = 2400
    for i, path in enumerate(draw(folder, 16, size=32)):  # 16 drawings, copied: drawing 2,400 takes long
        for copy in range(1, total // 16):
            (folder / f"img_{copy * 16 + i:04d}.png").write_bytes(path.read_bytes())
    store = tmp_path / "store"
    command = [sys.executable, "-c", "from clipcli.cli import main; main()", "embed", str(folder), "--store",
               str(store), "--model", tiny_model, "--shard-size", "8", "--batch-size", "8", "--workers", "0", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some shards are committed, then kill mid-run
        if shard_count(store) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(sig)
    process.communicate(timeout=60)
    assert process.returncode == (-9 if sig == signal.SIGKILL else 130)
    _, partial = live_table(store)  # the store opens
    done = partial.num_rows
    assert 0 < done < total, done
    assert len(set(partial.column("path").to_pylist())) == done
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} already stored, {total - done} encoded" in rerun.stderr
    _, table = live_table(store)
    paths = table.column("path").to_pylist()
    assert len(paths) == total and sorted(paths) == sorted(os.path.realpath(p) for p in folder.iterdir())
    assert pq.read_table(store / "shards").num_rows == total  # left-overs of the killed commit are gone


def test_output_paths_checked_before_the_model_loads(tmp_path, folder):
    # a model that does not exist would fail with exit 3; the path check comes first and fails with 2
    for bad, why in ((tmp_path, "is a folder"), (tmp_path / "missing" / "out.json", "does not exist")):
        result = cli("classify", folder, "-l", LABELS, "-m", "local-dir:/nonexistent", "-o", bad)
        assert result.exit_code == 2 and why in result.stderr and str(bad) in result.stderr, result.output
        evaluation = cli("eval", folder, "-m", "local-dir:/nonexistent", "--report", bad)
        assert evaluation.exit_code == 2 and why in evaluation.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = cli("embed", folder, "--store", a_file, "-m", "local-dir:/nonexistent")
    assert result.exit_code == 2 and "is a file" in result.stderr


def test_atomic_outputs_get_the_umask_mode(tiny_model, folder, tmp_path):
    out = tmp_path / "out.json"
    old = os.umask(0o022)
    try:
        result = cli("classify", folder / "img_0000.png", "-l", LABELS, "-m", tiny_model, "-f", "json", "-o", out)
    finally:
        os.umask(old)
    assert result.exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.e2e
def test_relabelling_a_store_with_cached_labels_loads_no_model(tiny_model, folder, tmp_path):
    store = tmp_path / "store"
    cli("embed", folder, "--store", store, "--model", tiny_model)
    cache = tmp_path / "label-cache"
    with_model = cli("classify", "--store", store, "-m", tiny_model, "-l", LABELS, "-f", "json", "-k", "0",
                     "--cache-dir", cache)  # loads the model, encodes and caches the labels
    probe = ("import sys, json\nfrom clipcli.cli import main\nsys.argv = ['clip', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
             "print(json.dumps(sorted(m for m in ('open_clip', 'torch', 'torchvision') if m in sys.modules)), "
             "file=sys.stderr)\n"
             "sys.exit(code)\n")
    cached = subprocess.run([sys.executable, "-c", probe, "classify", "--store", str(store), "-l", LABELS, "-f",
                             "json", "-k", "0", "--cache-dir", str(cache)], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert cached.returncode == 1  # the stored unreadable file is reported as before
    assert json.loads(cached.stderr.strip().splitlines()[-1]) == []  # neither torch nor open_clip imported
    with_model_doc = json.loads(with_model.stdout)
    assert with_model_doc.pop("model")["backend"] == "onnx"
    assert json.loads(cached.stdout) == {**with_model_doc, "model": json.loads(cached.stdout)["model"]}
    assert {k: v for k, v in json.loads(cached.stdout)["model"].items() if k in ("backend", "precision")} == \
        {"backend": None, "precision": None}  # no model was loaded
    # a label that is not cached yet: the model is loaded after all, and the result is the same as with -m
    more = LABELS + ",purple ring"
    fresh = cli("classify", "--store", store, "-l", more, "-f", "json", "--cache-dir", cache)
    reference = cli("classify", "--store", store, "-m", tiny_model, "-l", more, "-f", "json", "--no-cache")
    for got, want in zip(json.loads(fresh.stdout)["results"], json.loads(reference.stdout)["results"], strict=True):
        assert got["path"] == want["path"] and ("error" in got) == ("error" in want)
        for a, b in zip(got.get("predictions", []), want.get("predictions", []), strict=True):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
