"""The Ray engine on a real local Ray: the same records, store and metrics as the local engine, each input
exactly once, a killed worker retried, and a clear line when Ray is missing or unreachable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_helpers import cli

pytestmark = pytest.mark.slow  # a real local Ray: seconds to start, minutes in all

ray = pytest.importorskip("ray")

LABELS = "red circle,blue square,green star,yellow heart"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    from clipcli.demo import shapes

    folder = tmp_path_factory.mktemp("ray-shapes")
    for i, (colour, shape) in enumerate([(c, s) for c in ("red", "blue", "green") for s in ("circle", "square", "star")]
                                        * 6):
        (folder / f"{colour}_{shape}").mkdir(exist_ok=True)
        shapes.draw_pil(colour, shape, seed=i).save(folder / f"{colour}_{shape}" / f"{i:03d}.png")
    (folder / "red_circle" / "broken.jpg").write_bytes(b"not an image")
    return folder


def records(result) -> dict:
    assert result.exit_code in (0, 1), result.output
    return {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}


def test_classify_on_ray_equals_local(shapes_dir):
    local = records(cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "0"))
    on_ray = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "-f", "jsonl", "-k", "0", "--engine", "ray",
                 "-b", "8")
    lines = [json.loads(line) for line in on_ray.stdout.splitlines()]
    assert on_ray.exit_code == 1  # the broken file, as locally
    assert [r["path"] for r in lines] == list(local)  # same order, each input exactly once
    for record in lines:
        want = local[record["path"]]
        if "error" in want:
            assert record["error"] == want["error"]
            continue
        got = {p["label"]: p["score"] for p in record["predictions"]}
        for p in want["predictions"]:
            assert abs(got[p["label"]] - p["score"]) <= 1e-5


def test_file_uris_name_the_same_images_on_both_engines(shapes_dir):
    plain = cli("classify", shapes_dir / "red_circle", "-m", "demo", "-l", LABELS, "-f", "jsonl")
    for engine in ("local", "ray"):
        uri = cli("classify", (shapes_dir / "red_circle").as_uri(), "-m", "demo", "-l", LABELS, "-f", "jsonl",
                  "--engine", engine)
        assert uri.exit_code == plain.exit_code == 1  # broken.jpg: exit 1 on both
        got, want = ([json.loads(line) for line in r.stdout.splitlines()] for r in (uri, plain))
        assert [r["path"] for r in got] == [r["path"] for r in want]
        assert [r.get("error") for r in got] == [r.get("error") for r in want]
        for a, b in zip(got, want):  # a short local run's quick session and Ray's packed one differ in rounding
            scores = {p["label"]: p["score"] for p in b.get("predictions", [])}
            assert all(abs(p["score"] - scores[p["label"]]) <= 1e-6 for p in a.get("predictions", []))


def test_embed_on_ray_writes_the_same_store_and_either_engine_extends_it(shapes_dir, tmp_path):
    ray_store, local_store = tmp_path / "ray", tmp_path / "local"
    assert cli("embed", shapes_dir, "--store", ray_store, "-m", "demo", "--engine", "ray", "--dtype", "float32").exit_code == 1
    assert cli("embed", shapes_dir, "--store", local_store, "-m", "demo", "--dtype", "float32").exit_code == 1

    def table(store):
        manifest = json.loads((store / "_clip-store.json").read_text())
        rows = pq.read_table(store).to_pylist()  # the store's root is a plain Parquet dataset
        return manifest, {row["path"]: row for row in rows}

    (m_ray, t_ray), (m_local, t_local) = table(ray_store), table(local_store)
    assert m_ray["model"] == m_local["model"] and m_ray["dim"] == m_local["dim"]
    assert set(t_ray) == set(t_local) and len(t_ray) == 55
    for path, row in t_local.items():
        other = t_ray[path]
        assert (row["size"], row["mtime_ns"], row["width"], row["height"], row["error_type"]) == \
            (other["size"], other["mtime_ns"], other["width"], other["height"], other["error_type"])
        if row["embedding"] is not None:
            assert max(abs(a - b) for a, b in zip(row["embedding"], other["embedding"])) <= 1e-5
    again = cli("embed", shapes_dir, "--store", ray_store, "-m", "demo")  # the local engine finds it complete
    assert "55 already stored, 0 encoded" in again.stderr  # the broken file is a stored error row


def test_eval_on_ray_prints_the_same_metrics(shapes_dir):
    local = cli("eval", shapes_dir, "-m", "demo", "-t", "simple", "-f", "json")
    on_ray = cli("eval", shapes_dir, "-m", "demo", "-t", "simple", "-f", "json", "--engine", "ray")
    assert_close(json.loads(on_ray.stdout)["results"], json.loads(local.stdout)["results"])


def assert_close(got, want, path="results"):
    """Equal structure and values; floats within 1e-6 (a short local run's quick session and Ray's packed one
    round differently, which moves calibration figures in the last digits)."""
    if isinstance(want, float) or isinstance(got, float):
        assert got == pytest.approx(want, abs=1e-6), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), path
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, f"{path}[{i}]")
    else:
        assert got == want, path


def test_engine_errors(shapes_dir, monkeypatch):
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "--engine", "spark")
    assert result.exit_code == 2 and "unknown --engine 'spark'" in result.output
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "--ray-address", "auto")
    assert result.exit_code == 2 and "--ray-address and --gpus-per-worker go with --engine ray" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "--engine", "ray")
    assert result.exit_code == 2 and result.output.strip() == \
        "error: --engine ray needs Ray: pip install 'ray[data]>=2.9' (in a clipcli checkout: pip install '.[ray]')"


def test_unreachable_cluster_is_one_line(shapes_dir):
    if ray.is_initialized():
        ray.shutdown()
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "--engine", "ray", "--ray-address", "127.0.0.1:9")
    assert result.exit_code == 3 and result.output.startswith("error: cannot reach a Ray cluster at --ray-address")


def ray_workers(pattern: str = "MapWorker") -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines()[1:] if pattern in line and "ps -eo" not in line]


@pytest.mark.e2e
def test_a_killed_ray_worker_is_retried_and_every_image_arrives_once(tmp_path):
    from clipcli.demo import shapes

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        shapes.draw_pil(("red", "blue", "green")[i % 3], ("circle", "square", "star")[i // 3 % 3], size=48,
                        seed=i).save(folder / f"{i:04d}.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "clipcli", "classify", str(folder), "-m", "demo", "-l", LABELS, "-f", "jsonl",
               "-k", "1", "--engine", "ray", "-b", "2", "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines, killed = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if killed is None and len(lines) >= 40:
                workers = ray_workers()
                assert workers, "no Ray map worker process found"
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None and proc.returncode == 0, proc.stderr.read()
    paths = [json.loads(line)["path"] for line in lines]
    assert len(paths) == 1500 and len(set(paths)) == 1500  # every image, exactly once
    assert paths == sorted(str(p) for p in folder.iterdir())  # and in input order
    time.sleep(0.5)
    assert killed not in ray_workers()


@pytest.mark.e2e
def test_interrupted_embed_on_ray_resumes_with_every_image_once(tiny_model, tmp_path):
    from clipcli.demo import shapes

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        shapes.draw_pil(("red", "blue")[i % 2], ("circle", "star")[i // 2 % 2], size=32, seed=i).save(folder / f"{i:03d}.png")
    store = tmp_path / "store"
    command = [sys.executable, "-m", "clipcli", "embed", str(folder), "--store", str(store), "--model", tiny_model,
               "--shard-size", "8", "--batch-size", "4", "--engine", "ray", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shards = store / "shards"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # some shards committed: kill the driver mid-run
        if shards.is_dir() and len(list(shards.glob("*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    process.kill()
    process.communicate(timeout=60)
    done = pq.read_table(store).num_rows
    assert 0 < done < 400, done
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} already stored, {400 - done} encoded" in rerun.stderr
    paths = pq.read_table(store).column("path").to_pylist()
    assert len(paths) == 400 and sorted(paths) == sorted(os.path.realpath(p) for p in folder.iterdir())
