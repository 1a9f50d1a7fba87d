"""The image-embedding store: format read back with pyarrow alone, incremental runs, equal results,
one model per store, the lock, and a real process killed with SIGKILL and SIGINT mid-run; write-through runs
(streaming, fresh rows exact, stored rows within float16), the root read as a plain Parquet dataset (pyarrow,
pandas, DuckDB, Ray Data), read-only stores and the upgrade from the version 1 layout."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from cli_helpers import cli, draw
from PIL import Image

from clipcli.demo import shapes

LABELS = "red circle,blue square,green star"


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


def scores(records: list[dict]) -> dict[str, dict[str, float]]:
    return {r["path"]: {p["label"]: p["score"] for p in r["predictions"]} for r in records if "predictions" in r}


def jsonl(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_store_run_streams_records_batch_by_batch(tiny_model, tmp_path):
    """The first record comes after one batch, not after the whole folder was encoded and read back."""
    from clipcli.api import DecodeOptions, ModelOptions, classify_paths, open_encoder, zero_shot_classifier
    from clipcli.images import discover

    folder = tmp_path / "photos"
    draw(folder, 240, size=96)
    paths = discover([str(folder)])
    with open_encoder(ModelOptions(tiny_model), DecodeOptions(batch_size=8, workers=0), store=tmp_path / "s") as encoder:
        classifier = zero_shot_classifier(encoder.model, LABELS.split(","), "simple")
        start = time.perf_counter()
        arrivals = [time.perf_counter() - start for _ in classify_paths(encoder, classifier, paths)]
    assert len(arrivals) == 240
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])  # reading everything first: ~1.0


def test_fresh_rows_are_scored_exactly_and_stored_rows_within_float16(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    draw(folder, 20)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = ["classify", folder, "-m", tiny_model, "-l", LABELS, "-f", "jsonl", "-k", "0", "--batch-size", "6"]
    plain = cli(*args)
    fresh = cli(*args, "--store", tmp_path / "store")
    stored = cli(*args, "--store", tmp_path / "store")
    assert plain.exit_code == fresh.exit_code == stored.exit_code == 1  # broken.png: reported, skipped
    assert "0 already stored, 20 encoded, 1 unreadable" in fresh.stderr
    assert "21 already stored, 0 encoded" in stored.stderr
    want, got_fresh, got_stored = scores(jsonl(plain)), scores(jsonl(fresh)), scores(jsonl(stored))
    assert [r["path"] for r in jsonl(plain)] == [r["path"] for r in jsonl(fresh)] == [r["path"] for r in jsonl(stored)]
    fresh_diff = max(abs(got_fresh[p][k] - v) for p, row in want.items() for k, v in row.items())
    stored_diff = max(abs(got_stored[p][k] - v) for p, row in want.items() for k, v in row.items())
    assert fresh_diff <= 1e-5, fresh_diff  # from the float32 features just computed, not a float16 read-back
    assert 0 < stored_diff <= 2e-3, stored_diff
    assert [r["error"] for r in jsonl(stored) if "error" in r] == [r["error"] for r in jsonl(plain) if "error" in r]


def test_mixed_stored_changed_and_new_inputs_keep_input_order(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    draw(folder, 12)
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model, "--shard-size", "4").exit_code == 0
    draw(folder, 5, start=12)  # new
    changed = folder / "img_0005.png"
    shapes.draw_pil("green", "star", size=48, seed=99).save(changed)  # changed: re-encoded, its row replaced
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    args = ["classify", folder, "-m", tiny_model, "-l", LABELS, "-f", "jsonl", "-k", "0", "--batch-size", "5"]
    through = cli(*args, "--store", store)
    assert through.exit_code == 0 and "11 already stored, 6 encoded" in through.stderr
    plain = cli(*args)
    assert [r["path"] for r in jsonl(through)] == [r["path"] for r in jsonl(plain)]
    want, got = scores(jsonl(plain)), scores(jsonl(through))
    assert max(abs(got[p][k] - v) for p, row in want.items() for k, v in row.items()) <= 2e-3
    assert max(abs(got[str(changed)][k] - v) for k, v in want[str(changed)].items()) <= 1e-5
    table = ds.dataset(store).to_table()
    assert table.num_rows == 17 and len(set(table.column("path").to_pylist())) == 17


def test_store_root_reads_with_every_parquet_reader(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    draw(folder, 10)
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model, "--shard-size", "3").exit_code == 0
    shapes.draw_pil("red", "star", size=44, seed=5).save(folder / "img_0001.png")  # a changed file
    os.utime(folder / "img_0001.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    (folder / "img_0002.png").unlink()  # a deleted one, pruned
    assert cli("embed", folder, "--store", store, "-m", tiny_model, "--prune").exit_code == 0
    want = sorted(str(p.resolve()) for p in folder.iterdir())

    assert sorted(ds.dataset(store).to_table().column("path").to_pylist()) == want
    pandas = pytest.importorskip("pandas")
    assert sorted(pandas.read_parquet(store)["path"]) == want
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT path FROM read_parquet('{store}/**/*.parquet')").fetchall()
    assert sorted(r[0] for r in rows) == want
    assert (store / "_clip-store.json").is_file() and not (store / "clip-store.json").is_file()


@pytest.mark.slow
def test_store_root_reads_with_ray_data(tiny_model, tmp_path):
    ray = pytest.importorskip("ray")
    folder = tmp_path / "photos"
    draw(folder, 6)
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model).exit_code == 0
    try:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        paths = [row["path"] for row in ray.data.read_parquet(str(store)).take_all()]
    finally:
        ray.shutdown()
    assert sorted(paths) == sorted(str(p.resolve()) for p in folder.iterdir())


def test_version_1_store_opens_and_is_upgraded_in_place(tiny_model, tmp_path):
    """A store in the layout of the previous release (manifest clip-store.json naming its shards, and a left-over
    shard of an interrupted commit that it does not name) reads as before, and its next writer upgrades it."""
    folder = tmp_path / "photos"
    draw(folder, 8)
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model, "--shard-size", "4").exit_code == 0
    manifest = json.loads((store / "_clip-store.json").read_text())
    shards = sorted(p.name for p in (store / "shards").glob("*.parquet"))
    legacy = {**manifest, "schema_version": 1, "shards": [{"file": f"shards/{n}", "rows": 4} for n in shards[:1]]}
    (store / "clip-store.json").rmdir()  # the guard folder a version 2 store keeps there
    (store / "clip-store.json").write_text(json.dumps(legacy))
    (store / "_clip-store.json").unlink()  # shards[1:] are now left-overs the manifest does not name
    relabel = cli("classify", "--store", store, "-l", LABELS, "-f", "jsonl")
    assert relabel.exit_code == 0 and len(jsonl(relabel)) == 4
    assert cli("embed", folder, "--store", store, "-m", tiny_model).stderr.count("4 already stored, 4 encoded") == 1
    assert not (store / "clip-store.json").is_file()
    assert json.loads((store / "_clip-store.json").read_text())["schema_version"] == 2
    assert sorted(ds.dataset(store).to_table().column("path").to_pylist()) == \
        sorted(str(p.resolve()) for p in folder.iterdir())


@pytest.fixture
def read_only(tmp_path):
    """A read-only view of a folder (a read-only bind mount: root ignores permission bits)."""
    mounts = []

    def view(folder: Path) -> Path:
        target = tmp_path / f"ro-{len(mounts)}"
        target.mkdir()
        for command in (["mount", "--bind", str(folder), str(target)],
                        ["mount", "-o", "remount,ro,bind", str(target)]):
            if subprocess.run(command, capture_output=True).returncode:
                subprocess.run(["umount", str(target)], capture_output=True)
                pytest.skip("read-only bind mounts are not allowed here")
        mounts.append(target)
        return target

    yield view
    for target in mounts:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_reading_a_store_needs_no_write_permission(tiny_model, tmp_path, read_only):
    folder = tmp_path / "photos"
    draw(folder, 5)
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model).exit_code == 0
    want = cli("classify", "--store", store, "-l", LABELS, "-f", "jsonl", "-m", tiny_model)
    view = read_only(store)
    for model in ([], ["-m", tiny_model]):  # labels from the cache alone, and with the model loaded
        result = cli("classify", "--store", view, "-l", LABELS, "-f", "jsonl", *model)
        assert result.exit_code == 0, result.output
        assert scores(jsonl(result)) == scores(jsonl(want))
    assert cli("store", "info", view).exit_code == 0


# regression: the same file under two names, with a commit between them, was stored twice
def test_one_file_named_twice_across_commits_is_stored_once(tiny_model, tmp_path):
    """The same file under two names (a symlink), with a commit between them: one row."""
    folder = tmp_path / "photos"
    draw(folder, 6)
    (tmp_path / "alias.png").symlink_to(folder / "img_0000.png")
    store = tmp_path / "store"
    result = cli("embed", folder, tmp_path / "alias.png", "--store", store, "-m", tiny_model, "--shard-size", "2",
                 "--batch-size", "2")
    assert result.exit_code == 0, result.output
    paths = ds.dataset(store).to_table().column("path").to_pylist()
    assert sorted(paths) == sorted(set(paths)) and len(paths) == 6


# regression: --prune rewrote every shard even when no row was gone
def test_prune_with_nothing_gone_rewrites_no_shard(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    draw(folder, 6)
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model, "--shard-size", "3").exit_code == 0
    before = {p.name: p.stat().st_ino for p in (store / "shards").glob("*.parquet")}
    assert cli("embed", "--store", store, "-m", tiny_model, "--prune").exit_code == 0
    assert {p.name: p.stat().st_ino for p in (store / "shards").glob("*.parquet")} == before


# regression: a run ended by a closed pipe did not commit what it had already encoded
def test_a_reader_that_goes_away_keeps_what_was_encoded(tiny_model, tmp_path):
    """`clip classify DIR --store S -f jsonl | head -1`: the images encoded before the pipe closed are stored."""
    folder = tmp_path / "photos"
    draw(folder, 40)
    store = tmp_path / "store"
    command = (f"{sys.executable} -m clipcli classify {folder} --store {store} -m {tiny_model} -l '{LABELS}' "
               f"-f jsonl --batch-size 4 --workers 0 -q | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and result.stdout.count("\n") == 1, result.stderr
    assert ds.dataset(store).to_table().num_rows >= 4


# regression: an older clipcli took an upgraded store for a new one and would have deleted its shards
def test_an_older_clipcli_refuses_an_upgraded_store(tiny_model, tmp_path):
    """Version 1 read `STORE/clip-store.json`; a version 2 store keeps an empty folder there, so the old reader
    fails to read it and refuses, instead of taking the store for a new one and deleting its shards."""
    folder = tmp_path / "photos"
    draw(folder, 3)
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model).exit_code == 0
    with pytest.raises(IsADirectoryError):
        (store / "clip-store.json").read_text()  # what version 1's read_manifest did first
    assert ds.dataset(store).to_table().num_rows == 3
