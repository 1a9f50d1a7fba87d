"""A store's caches and folders never lose a row or hang a run: scan copies are checked against their shard and
rebuilt, never trusted and never the reason to delete a shard; writers delete only their own files; copied
shards and a stray shard list in the manifest are damage that `store check` reports and `--repair` resolves
(issue 30, items 2, 3, 4, 6, 8, 9, 12 and 16)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from clipcli.demo import shapes
from cli_helpers import cli, draw_kinds

KINDS = [("red", "circle"), ("blue", "square"), ("green", "star")]


@pytest.fixture
def photos(tmp_path) -> Path:
    return draw_kinds(tmp_path / "photos", 15, KINDS)


@pytest.fixture
def store(photos, tmp_path) -> Path:
    store = tmp_path / "s.store"
    assert cli("embed", photos, "--store", store, "-m", "demo", "-q").exit_code == 0
    return store


def search(store, *more) -> list[tuple[str, float]]:
    result = cli("search", "red circle", "--store", store, "-k", "0", "-f", "json", *more)
    assert result.exit_code == 0, result.output
    return [(r["path"], r["score"]) for r in json.loads(result.stdout)["results"]]


def info(store) -> dict:
    result = cli("store", "info", store, "-f", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def the_copy(store) -> Path:
    (copy,) = (store / "_scan").iterdir()
    return copy


def stored_paths(store) -> list[str]:
    return sorted(ds.dataset(store / "shards").to_table(columns=["path"]).column(0).to_pylist())


def test_a_scan_copy_with_too_few_rows_is_never_used_and_never_costs_its_shard(store, photos):
    # defect: 12 of 15 rows in a copy: search returned 12 rows, check blamed the shard, --repair deleted it
    want = search(store)
    copy = the_copy(store)
    np.save(copy, np.load(copy)[:12])
    assert search(store) == want and len(want) == 15
    check = cli("store", "check", store)
    assert check.exit_code == 4 and f"_scan/{copy.name}" in check.stderr and "shard part-" not in check.stderr
    assert cli("store", "check", "--repair", store).exit_code == 0
    assert info(store)["images"] == 15 and search(store) == want
    assert cli("embed", photos, "--store", store, "-m", "demo", "-q").exit_code == 0
    assert len(np.load(the_copy(store))) == 15 and cli("store", "check", store).exit_code == 0


def test_a_scan_copy_with_extra_rows_gives_the_right_answer(store):
    # defect: a copy with more rows than its shard made `clip search` crash with an IndexError
    want = search(store)
    copy = the_copy(store)
    matrix = np.load(copy)
    np.save(copy, np.concatenate([matrix, matrix[:5]]))
    assert search(store) == want


def test_a_scan_copy_with_the_right_shape_and_wrong_values_is_replaced_by_the_next_writer(store, photos):
    # defect: a copy of the right shape and wrong values was trusted by search and never replaced by a writer
    want = search(store)
    copy = the_copy(store)
    original = np.load(copy)
    np.save(copy, original[::-1].copy())
    assert search(store) == want  # checked against the checksum its shard records: Parquet answers
    assert cli("embed", photos, "--store", store, "-m", "demo", "-q").exit_code == 0
    assert np.array_equal(np.load(the_copy(store)), original)


@pytest.mark.parametrize("kind", ["fifo", "empty"])
def test_a_fifo_or_empty_file_named_as_a_scan_copy_neither_hangs_nor_interrupts(store, photos, kind, tmp_path):
    # defect: np.load opened a FIFO there and blocked search, check and embed forever; a 0-byte copy read as Ctrl-C
    want = search(store)
    copy = the_copy(store)
    copy.unlink()
    if kind == "fifo":
        os.mkfifo(copy)
    else:
        copy.write_bytes(b"")
    code = ("import sys; from typer.testing import CliRunner; from clipcli.cli import app\n"
            "r = CliRunner().invoke(app, sys.argv[1:]); sys.stdout.write(r.stdout); sys.exit(r.exit_code)")
    for args in (["search", "red circle", "--store", store, "-k", "0", "-f", "json"], ["store", "check", store],
                 ["embed", photos, "--store", store, "-m", "demo", "-q"]):
        run = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)  # not the checkout's folder: clipcli as PYTHONPATH says
        assert run.returncode in (0, 4), (args, run.stderr)
        if args[0] == "search":
            assert [(r["path"], r["score"]) for r in json.loads(run.stdout)["results"]] == want
    assert search(store) == want


def test_writers_never_delete_foreign_files_through_a_scan_symlink(store, photos, tmp_path):
    # defect: a writer deleted every foreign file in _scan, following a symlink to the user's folder
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    (elsewhere / "thesis.txt").write_text("years of work")
    (elsewhere / "part-1.parquet.1-2-3.npy").write_bytes(b"looks like ours, but is not in the store")
    shutil.rmtree(store / "_scan")
    (store / "_scan").symlink_to(elsewhere, target_is_directory=True)
    shapes.draw_pil("white", "heart", size=40, seed=99).save(photos / "new.png")
    result = cli("embed", photos, "--store", store, "-m", "demo", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in elsewhere.iterdir()) == ["part-1.parquet.1-2-3.npy", "thesis.txt"]
    assert len(search(store)) == 16
    check = cli("store", "check", store)
    assert check.exit_code == 4 and "_scan is not a folder of the store" in check.stderr


def test_writers_delete_only_their_own_names_in_the_scan_folder(store, photos):
    # defect: every foreign file in _scan was deleted, and a subfolder there gave a traceback
    (store / "_scan" / "notes.txt").write_text("mine")
    (store / "_scan" / "sub").mkdir()
    (store / "_scan" / "sub" / "keep.npy").write_bytes(b"x")
    stale = store / "_scan" / "part-x.parquet.1-2-3.npy"
    stale.write_bytes(b"a stale copy of a shard that is gone")
    shapes.draw_pil("white", "heart", size=40, seed=99).save(photos / "new.png")
    result = cli("embed", photos, "--store", store, "-m", "demo", "-q")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert (store / "_scan" / "notes.txt").read_text() == "mine" and (store / "_scan" / "sub" / "keep.npy").exists()
    assert not stale.exists()


def test_scan_or_shards_being_a_plain_file(store, photos):
    # defect: `_scan` as a plain file gave embed a FileExistsError traceback
    want = search(store)
    shutil.rmtree(store / "_scan")
    (store / "_scan").write_text("not a folder")
    assert search(store) == want
    shapes.draw_pil("white", "heart", size=40, seed=99).save(photos / "new.png")
    result = cli("embed", photos, "--store", store, "-m", "demo", "-q")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert len(search(store)) == 16 and (store / "_scan").read_text() == "not a folder"
    other = store.parent / "other.store"
    other.mkdir()
    (other / "shards").write_text("not a folder")
    result = cli("embed", photos, "--store", other, "-m", "demo", "-q")
    assert result.exit_code == 4 and "shards is not a folder" in result.stderr and "Traceback" not in result.output


def test_a_v1_shard_list_in_a_v2_manifest_hides_and_deletes_nothing(store, photos):
    # defect: `"shards": []` in a v2 manifest: 0 images in silence, and `embed --prune` deleted every shard
    want = search(store)
    path = store / "_clip-store.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "shards": []}))
    assert search(store) == want and info(store)["images"] == 15
    check = cli("store", "check", store)
    assert check.exit_code == 4 and "manifest carries a version 1 shard list" in check.stderr
    result = cli("embed", "--store", store, "--prune", "-m", "demo", "-q")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert len(stored_paths(store)) == 15 and search(store) == want
    assert "shards" not in json.loads(path.read_text())  # the writer's next manifest drops it
    path.write_text(json.dumps({**manifest, "shards": []}))
    assert cli("store", "check", "--repair", store).exit_code == 0
    assert "shards" not in json.loads(path.read_text()) and cli("store", "check", store).exit_code == 0


def test_a_copied_shard_is_found_and_repaired_without_losing_a_row(photos, tmp_path):
    # defect: a sync tool's conflict copy of a shard listed every path twice and `store check` said 0 damaged
    store = tmp_path / "s.store"
    assert cli("embed", photos, "--store", store, "-m", "demo", "--shard-size", "5", "-q").exit_code == 0
    want = search(store)
    first = sorted((store / "shards").glob("part-*.parquet"))[0]
    shutil.copy2(first, first.with_name(first.stem + "-conflict.parquet"))
    refused = cli("search", "red circle", "--store", store)
    assert refused.exit_code == 4 and "is a copy of shard" in refused.stderr and "--repair" in refused.stderr
    check = cli("store", "check", store)
    assert check.exit_code == 4 and "count twice" in check.stderr
    repaired = cli("store", "check", "--repair", store)
    assert repaired.exit_code == 0, repaired.output
    assert stored_paths(store) == sorted(str(p.resolve()) for p in photos.iterdir())  # each once, none lost
    assert search(store) == want and cli("store", "check", store).exit_code == 0


def test_a_copied_shard_of_an_older_store_is_refused_by_writers_before_they_touch_it(photos, tmp_path):
    # defect: a copied shard was never noticed, and a writer went on with every image stored twice
    import pyarrow.parquet as pq

    store = tmp_path / "s.store"
    assert cli("embed", photos, "--store", store, "-m", "demo", "--shard-size", "5", "-q").exit_code == 0
    for shard in (store / "shards").glob("*.parquet"):  # as an older clipcli wrote them: no clipcli:shard record
        pq.write_table(pq.read_table(shard).replace_schema_metadata(None), shard)
    first = sorted((store / "shards").glob("part-*.parquet"))[0]
    shutil.copy2(first, first.with_name(first.stem + "-conflict.parquet"))
    for command in (["embed", photos, "--store", store, "-m", "demo", "-q"],
                    ["classify", photos, "--store", store, "-l", "red circle,blue square", "-m", "demo"]):
        result = cli(*command)
        assert result.exit_code == 4 and "hold the same image" in result.stderr, result.output
    assert all(pq.ParquetFile(p).metadata.metadata is None or b"clipcli:shard" not in pq.ParquetFile(p).metadata.metadata
               for p in (store / "shards").glob("*.parquet"))  # nothing rewritten under the copy's name
    assert cli("store", "check", "--repair", store).exit_code == 0
    assert cli("embed", photos, "--store", store, "-m", "demo", "-q").exit_code == 0
    assert stored_paths(store) == sorted(str(p.resolve()) for p in photos.iterdir())
    assert cli("store", "check", store).exit_code == 0


def test_shards_that_overlap_keep_the_newest_row_of_each_image(photos, tmp_path):
    # defect: shards holding the same image twice (not byte copies) were never noticed by `store check`
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    store = tmp_path / "s.store"
    assert cli("embed", photos, "--store", store, "-m", "demo", "--shard-size", "5", "-q").exit_code == 0
    shards = sorted((store / "shards").glob("part-*.parquet"))
    older = pq.read_table(shards[0]).slice(0, 2)
    older = older.set_column(2, "mtime_ns", pc.subtract(older.column("mtime_ns"), 10**9))  # an older state
    pq.write_table(older.replace_schema_metadata(None), store / "shards" / "part-zz-older.parquet")
    check = cli("store", "check", store)
    assert check.exit_code == 4 and "part-zz-older.parquet holds 2 row(s) also stored" in check.stderr
    assert cli("store", "check", "--repair", store).exit_code == 0
    assert not (store / "shards" / "part-zz-older.parquet").exists()
    assert stored_paths(store) == sorted(str(p.resolve()) for p in photos.iterdir())


def test_a_v1_store_naming_a_missing_shard_says_so(store):
    # defect: a version 1 manifest naming a missing shard showed fewer rows in silence
    manifest = json.loads((store / "_clip-store.json").read_text())
    (shard,) = (store / "shards").glob("*.parquet")
    legacy = {**manifest, "schema_version": 1, "shards": [{"file": f"shards/{shard.name}", "rows": 15},
                                                          {"file": "shards/part-gone.parquet", "rows": 4}]}
    (store / "clip-store.json").rmdir()
    (store / "clip-store.json").write_text(json.dumps(legacy))
    (store / "_clip-store.json").unlink()
    result = cli("search", "red circle", "--store", store)
    assert result.exit_code == 4 and "names shard part-gone.parquet, which is missing" in result.stderr
    assert cli("store", "check", store).exit_code == 4
    assert cli("store", "check", "--repair", store).exit_code == 0
    assert len(search(store)) == 15


def test_store_info_size_on_disk_is_the_bytes_of_its_files(store):
    # defect: "size on disk" added uncompressed row-group bytes and left out the scan copies
    files = [p for p in store.rglob("*") if p.is_file()]
    assert any(p.parent.name == "_scan" for p in files)
    assert info(store)["size_bytes"] == sum(p.stat().st_size for p in files)


def test_non_utf8_and_escaped_names_are_two_rows(tmp_path):
    # defect: `caf\xe9.jpg` (a backslash in the name) and a non-UTF-8 `caf<E9>.jpg` shared one store key
    folder = tmp_path / "photos"
    folder.mkdir()
    shapes.draw_pil("red", "circle", size=40, seed=1).save(folder / "caf\\xe9.png")
    shapes.draw_pil("blue", "square", size=40, seed=2).save(os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9.png"))
    store = tmp_path / "s.store"
    first = cli("embed", folder, "--store", store, "-m", "demo")
    assert first.exit_code == 0 and "0 already stored, 2 encoded" in first.stderr, first.stderr
    again = cli("embed", folder, "--store", store, "-m", "demo")
    assert again.exit_code == 0 and "2 already stored, 0 encoded" in again.stderr, again.stderr
    assert cli("embed", "--store", store, "--prune", "-m", "demo", "-q").exit_code == 0  # both files are there
    assert len(stored_paths(store)) == 2
    (folder / "caf\\xe9.png").unlink()
    assert cli("embed", "--store", store, "--prune", "-m", "demo", "-q").exit_code == 0
    assert stored_paths(store) == [str(folder.resolve()) + "/caf\\xe9.png"]  # the non-UTF-8 one, \xNN-escaped
