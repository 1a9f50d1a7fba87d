"""One path for options and embeddings: write-through store (streaming, exact fresh rows), the store's root as a
plain Parquet dataset, read-only stores, the same engine and decoding options on every encoding command, and
warm runs of every encoding command with torch unimportable."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.demo import shapes

LABELS = "red circle,blue square,green star"
ENCODING_COMMANDS = ("classify", "embed", "eval", "fit", "sort", "compare")


def cli(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def draw(folder: Path, count: int, start: int = 0, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    colours, kinds = ["red", "blue", "green", "yellow"], ["circle", "square", "star", "triangle"]
    for i in range(start, start + count):
        shapes.draw_pil(colours[i % 4], kinds[(i // 4) % 4], size=size, seed=i).save(folder / f"img_{i:04d}.png")


def scores(records: list[dict]) -> dict[str, dict[str, float]]:
    return {r["path"]: {p["label"]: p["score"] for p in r["predictions"]} for r in records if "predictions" in r}


def jsonl(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


# --- write-through -------------------------------------------------------------------------------------------
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


# --- the store's root is a plain Parquet dataset ------------------------------------------------------------
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


# --- the same options on every encoding command --------------------------------------------------------------
@pytest.mark.parametrize("command", ENCODING_COMMANDS)
def test_every_encoding_command_takes_the_same_engine_and_decoding_options(command, monkeypatch):
    result = cli(command, "--help", terminal_width=200)
    for flag in ("--engine", "--ray-address", "--gpus-per-worker", "--batch-size", "--workers", "--max-megapixels",
                 "--reduced-decode", "--model", "--backend", "--precision", "--weights-dir", "--cache-dir", "--quiet"):
        assert flag in result.stdout, (command, flag)
    monkeypatch.setenv("CLIPCLI_ENGINE", "spark")  # the environment variable is read by every command alike
    args = {"classify": ["x.png", "-l", "a,b"], "embed": ["x.png", "--store", "s"], "eval": ["data"],
            "fit": ["data", "-o", "h.safetensors"], "sort": ["x.png", "-l", "a,b", "--into", "o"],
            "compare": ["x.png", "--models", "demo", "-l", "a,b"]}[command]
    refused = cli(command, *args)
    assert refused.exit_code == 2 and refused.stderr.strip() == "error: unknown --engine 'spark'; use one of local, ray"


def test_weights_dir_is_where_weights_are_looked_up(tmp_path, monkeypatch):
    images = tmp_path / "x"
    draw(images, 1)
    weights = tmp_path / "weights"
    for how in (["--weights-dir", weights], []):
        monkeypatch.setenv("CLIPCLI_WEIGHTS_DIR", str(weights))
        result = cli("classify", images, "-l", "a,b", "-m", "ViT-B-32", "-p", "laion2b_s34b_b79k", *how)
        assert result.exit_code == 3 and str(weights) in result.stderr, result.output  # offline: not there


# --- warm paths: no torch ------------------------------------------------------------------------------------
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


def test_library_modules_flow_one_way():
    """Nothing below the encoders imports a scorer; the leaf modules import nothing of clipcli."""
    import ast

    root = Path(__file__).parent.parent / "clipcli"

    def imports(module: str) -> set[str]:
        tree = ast.parse((root / f"{module}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                found.add((node.module or "").split(".")[0] or next(a.name for a in node.names))
        return found

    scorers = {"classifier", "scoring", "fewshot", "heads", "openset", "adapt", "evaluate", "run", "api"}
    for below in ("store", "images", "remote", "batches", "pipeline", "embeddings", "models", "preprocess"):
        assert not imports(below) & scorers, below
    assert imports("vectors") == set() and imports("paths") == set() and imports("options") == {"config", "errors"}
    assert "images" not in imports("remote")
    onnx_imports = {n for n in imports("backends/onnx")}
    assert not onnx_imports & scorers


def test_python_facade_names(tiny_model):
    import clipcli

    records = clipcli.classify([str(Path(__file__).parent.parent / "examples")], ["red circle", "blue square"],
                               model="demo", templates="simple")
    assert len(records) == 4 and all(np.isclose(sum(p["score"] for p in r["predictions"]), 1.0) for r in records)
    assert {"open_encoder", "classify_paths", "zero_shot_classifier", "ModelOptions"} <= set(clipcli.__all__)


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


def test_prune_with_nothing_gone_rewrites_no_shard(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    draw(folder, 6)
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model, "--shard-size", "3").exit_code == 0
    before = {p.name: p.stat().st_ino for p in (store / "shards").glob("*.parquet")}
    assert cli("embed", "--store", store, "-m", tiny_model, "--prune").exit_code == 0
    assert {p.name: p.stat().st_ino for p in (store / "shards").glob("*.parquet")} == before


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
