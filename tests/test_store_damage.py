"""A damaged or concurrently rewritten store: one line and exit 4 (never a traceback or silent wrong scores), a
repair path, and readers that never fail while a writer replaces shards."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import cli

from clipcli.demo import shapes

LABELS = "red circle,blue square,green star"


@pytest.fixture
def store(tiny_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(30):
        shapes.draw_pil(("red", "blue")[i % 2], ("circle", "square")[i // 2 % 2], size=40, seed=i).save(
            folder / f"{i:03d}.png")
    store = tmp_path / "store"
    assert cli("embed", folder, "--store", store, "-m", tiny_model, "--dtype", "float32").exit_code == 0
    return store


def one_line(result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("change", [
    lambda m: m.pop("shards", None) or m.pop("model"),
    lambda m: m.update(dim="512"),
    lambda m: m.update(schema_version="two"),
    lambda m: m.update(dtype="int3"),
    lambda m: m.update(model={"name": 3}),
])
def test_damaged_manifest_is_one_line_exit_4(store, change):
    path = store / "_clip-store.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    for command in (["classify", "--store", store, "-l", LABELS], ["store", "info", store]):
        one_line(cli(*command), 4, "manifest is damaged")


def test_damaged_bytes_in_a_shard_never_give_silent_wrong_scores(store, tiny_model):
    """2 KB of zeroes, or one flipped byte, anywhere in a shard: the same scores as before, or one line and exit 4."""
    shard = next((store / "shards").glob("*.parquet"))
    original = shard.read_bytes()
    args = ["classify", "--store", store, "-l", LABELS, "-m", tiny_model, "-f", "jsonl", "-k", "0"]
    want = cli(*args).stdout
    caught = 0
    for start in range(4, len(original) - 8, max(1, len(original) // 23)):
        for damage in (bytes(min(2048, len(original) - 8 - start)), bytes([original[start] ^ 0x55])):
            data = bytearray(original)
            data[start:start + len(damage)] = damage
            shard.write_bytes(bytes(data))
            result = cli(*args)
            if result.exit_code == 0:
                assert result.stdout == want, start  # the damage fell where nothing is read
            else:
                one_line(result, 4, "is damaged", "clip store check --repair")
                caught += 1
    assert caught > 10
    shard.write_bytes(bytes(original[:len(original) // 2]) + bytes(2048) + original[len(original) // 2 + 2048:])
    check = cli("store", "check", store)
    assert check.exit_code == 4 and "is damaged" in check.stderr and "Traceback" not in check.output
    repaired = cli("store", "check", store, "--repair")
    assert repaired.exit_code == 0 and "removed" in repaired.stderr
    again = cli("embed", store.parent / "photos", "--store", store, "-m", tiny_model)
    assert again.exit_code == 0 and "0 already stored, 30 encoded" in again.stderr
    assert cli("store", "check", store).exit_code == 0


def test_truncated_shard_is_one_line_and_repairable(store, tiny_model):
    shard = next((store / "shards").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:200])
    one_line(cli("classify", "--store", store, "-l", LABELS, "-m", tiny_model), 4, "is damaged")
    one_line(cli("embed", store.parent / "photos", "--store", store, "-m", tiny_model), 4, "--repair")
    assert cli("store", "check", store, "--repair").exit_code == 0
    assert cli("embed", store.parent / "photos", "--store", store, "-m", tiny_model).exit_code == 0


READER = """
import sys
from clipcli.store import open_store
store = open_store(sys.argv[1])
for _ in range(int(sys.argv[2])):
    rows = [p for paths, _, _ in store.iter_embeddings() for p in paths]
    assert len(rows) == len(set(rows)) == int(sys.argv[3]), (len(rows), len(set(rows)))
"""


@pytest.mark.slow
def test_readers_never_fail_while_a_writer_replaces_shards(store, tiny_model):
    """A writer rewrites every shard again and again (files touched, so each row is replaced in place); readers
    in other processes read the whole store all the while and always see each of the 30 rows once."""
    folder = store.parent / "photos"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(store), "40", "30"], env=env,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    deadline = time.monotonic() + 60
    rounds = 0
    while any(r.poll() is None for r in readers) and time.monotonic() < deadline:
        for path in folder.iterdir():
            os.utime(path, ns=(time.time_ns(), time.time_ns() + rounds + 1))
        assert cli("embed", folder, "--store", store, "-m", tiny_model, "--shard-size", "7").exit_code == 0
        rounds += 1
    for reader in readers:
        _, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
    assert rounds >= 2


@pytest.mark.slow
def test_a_store_moves_with_its_package(tmp_path):
    """The demo model's identity holds no install path: a copy of the package elsewhere uses the same store."""
    import shutil

    import clipcli

    copy = tmp_path / "alt"
    package = Path(clipcli.__file__).parent
    shutil.copytree(package, copy / "clipcli")
    if not (copy / "clipcli" / "prompts").is_dir():  # a source checkout keeps the bundled templates beside it
        shutil.copytree(package.parent / "prompts", copy / "clipcli" / "prompts")
    images = Path(__file__).parent.parent / "examples"  # the checkout's drawn examples
    store = tmp_path / "store"
    assert cli("embed", images, "--store", store, "-m", "demo").exit_code == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(copy)}
    moved = subprocess.run([sys.executable, "-m", "clipcli", "classify", "--store", str(store), "-m", "demo", "-l",
                            LABELS, "-f", "json"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["labels"] == LABELS.split(",")
