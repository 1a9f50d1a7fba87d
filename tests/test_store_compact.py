"""`clip store compact`: a store's small shards (one per commit) merged, every row readable exactly once at
every moment, also when the process is killed midway (issue 30: "stores gain a shard per commit and are never
compacted")."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from cli_helpers import cli, draw_kinds

KINDS = [("red", "circle"), ("blue", "square"), ("green", "star")]


@pytest.fixture
def photos(tmp_path) -> Path:
    return draw_kinds(tmp_path / "photos", 15, KINDS)


@pytest.fixture
def store(photos, tmp_path) -> Path:
    store = tmp_path / "s.store"
    assert cli("embed", photos, "--store", store, "-m", "demo", "--shard-size", "2", "-q").exit_code == 0
    assert len(shards(store)) == 8
    return store


def shards(store) -> list[str]:
    return sorted(p.name for p in (store / "shards").glob("*.parquet"))


def search(store) -> list[tuple[str, float]]:
    result = cli("search", "red circle", "--store", store, "-k", "0", "-f", "json")
    assert result.exit_code == 0, result.output
    return [(r["path"], r["score"]) for r in json.loads(result.stdout)["results"]]


def every_path(photos) -> list[str]:
    return sorted(str(p.resolve()) for p in photos.iterdir())


def test_compact_merges_small_shards_and_every_answer_stays(store, photos):
    want = search(store)
    result = cli("store", "compact", store)
    assert result.exit_code == 0 and "8 shard(s) compacted into 1" in result.stderr, result.output
    assert len(shards(store)) == 1 and search(store) == want
    assert sorted(ds.dataset(store / "shards").to_table(columns=["path"]).column(0).to_pylist()) == every_path(photos)
    (copy,) = (store / "_scan").iterdir()  # the merged shard's scan copy, and none of the old ones
    assert copy.name.startswith(shards(store)[0])
    assert cli("store", "check", store).exit_code == 0
    again = cli("store", "compact", store)
    assert again.exit_code == 0 and "nothing to compact" in again.stderr


def test_compact_to_a_shard_size_keeps_full_shards(store):
    assert cli("store", "compact", store, "--shard-size", "6").exit_code == 0
    import pyarrow.parquet as pq

    sizes = sorted(pq.ParquetFile(store / "shards" / n).metadata.num_rows for n in shards(store))
    assert sum(sizes) == 15 and max(sizes) <= 6 and len(sizes) < 8


# The child compacts the store and kills itself (SIGKILL: nothing runs after it) at one step of a merge.
CHILD = """
import os, signal, sys
from pathlib import Path
import clipcli.store as store

step = sys.argv[2]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
write, delete = store.atomic_write_bytes, store.StoreWriter._delete_shards

def atomic_write_bytes(target, data, durable=True):
    if Path(target).name.startswith("_compact-") and step == "journal":
        die()  # the merged shard is written under its hidden name, its journal not yet
    write(target, data, durable)
    if Path(target).name.startswith("_compact-") and step == "rename":
        die()  # the journal is written, the merged shard not yet renamed into place

def delete_shards(self, names):
    names = sorted(names)
    if step == "delete":
        die()  # the merged shard is in place, every shard it replaces still there
    if step == "half":
        delete(self, names[:len(names) // 2])
        die()
    delete(self, names)
    if step == "journal-left":
        die()  # the replaced shards are gone, the journal is not

store.atomic_write_bytes = atomic_write_bytes
store.StoreWriter._delete_shards = delete_shards
store.compact_store(sys.argv[1])
"""


@pytest.mark.parametrize("step", ["journal", "rename", "delete", "half", "journal-left"])
def test_a_compaction_killed_midway_loses_no_row_and_shows_none_twice(store, photos, step):
    want = search(store)
    run = subprocess.run([sys.executable, "-c", CHILD, str(store), step], capture_output=True, timeout=300,
                         cwd=store.parent)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()
    # clipcli's readers, at once: every row once (a merged shard in place hides the shards it replaced)
    assert search(store) == want
    info = json.loads(cli("store", "info", store, "-f", "json").stdout)
    assert info["images"] == 15
    classify = cli("classify", "--store", store, "-l", "red circle,blue square", "-f", "jsonl")
    assert classify.exit_code == 0 and len(classify.stdout.splitlines()) == 15
    # the next writer finishes (or forgets) the compaction: then any Parquet reader sees every row once
    assert cli("embed", photos, "--store", store, "-m", "demo", "-q").exit_code == 0
    assert sorted(ds.dataset(store / "shards").to_table(columns=["path"]).column(0).to_pylist()) == every_path(photos)
    assert not list((store / "shards").glob("_compact-*")) and not list((store / "shards").glob(".*"))
    assert cli("store", "check", store).exit_code == 0 and search(store) == want
    assert cli("store", "compact", store).exit_code == 0 and len(shards(store)) == 1 and search(store) == want


def test_a_reader_that_listed_shards_before_a_compaction_says_so(store):
    from clipcli.errors import StoreError
    from clipcli.store import compact_store, open_store

    reader = open_store(store)
    batches = reader.iter_record_batches(["path"])
    first = next(batches)
    compact_store(store)
    with pytest.raises(StoreError, match="compacted while this command read it"):
        list(batches)
    assert first.num_rows >= 1  # one shard was read before the compaction
