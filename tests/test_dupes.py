"""One file reached by several paths is one input, never its own duplicate (issue 30, item 1), and dupes' JSON
counts and lists what it could not read (item 13)."""

import csv
import io
import json
import os
from pathlib import Path

import pytest

from clipcli.demo import shapes
from cli_helpers import cli


@pytest.fixture
def album(tmp_path) -> Path:
    folder = tmp_path / "album"
    folder.mkdir()
    shapes.draw_pil("red", "circle", size=64, seed=1).save(folder / "IMG_0001.png")
    shapes.draw_pil("blue", "square", size=64, seed=2).save(folder / "IMG_0002.png")
    (folder / "Favorite.png").symlink_to("IMG_0001.png")
    return folder


def rows(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


@pytest.mark.parametrize("with_store", [False, True])
def test_a_symlink_is_never_a_copy_of_its_own_file(album, tmp_path, with_store):
    # defect: `Favorite.png -> IMG_0001.png`: dupes marked the real file keep=False, so deleting those lost it
    store = ["--store", tmp_path / "s.store"] if with_store else []
    listed = rows(cli("dupes", album, "-f", "csv", "-m", "demo", *store))
    assert listed == []  # no group: one file, however many names
    result = cli("dupes", album, "-f", "json", "-m", "demo", *store)
    assert json.loads(result.stdout)["searched"] == 2


def test_a_file_named_twice_is_not_its_own_duplicate(album, monkeypatch):
    # defect: `clip dupes imgs/x ./imgs/x/0.png` (or its absolute path) listed a file as a copy of itself
    monkeypatch.chdir(album.parent)
    for again in ("./album/IMG_0002.png", str(album / "IMG_0002.png"), f"file://{album / 'IMG_0002.png'}"):
        assert rows(cli("dupes", "album", again, "-f", "csv", "-m", "demo")) == []


def test_classify_lists_a_file_named_two_ways_once_under_the_name_first_given(album, monkeypatch):
    # defect: classify of the same file by a relative and an absolute path classified it twice
    monkeypatch.chdir(album.parent)
    result = cli("classify", "album/IMG_0002.png", str(album / "IMG_0002.png"), "./album/IMG_0002.png",
                 "-l", "red circle,blue square", "-m", "demo", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == ["album/IMG_0002.png"]


def test_a_folder_keeps_the_files_own_name_over_a_symlink_to_it(album):
    from clipcli.images import discover

    assert discover([str(album)]) == [str(album / "IMG_0001.png"), str(album / "IMG_0002.png")]


def test_hard_links_and_true_copies(album):
    from clipcli.images import discover

    os.link(album / "IMG_0002.png", album / "linked.png")
    (album / "copy.png").write_bytes((album / "IMG_0002.png").read_bytes())
    assert discover([str(album)]) == [str(album / n) for n in ("IMG_0001.png", "IMG_0002.png", "copy.png")]
    groups = rows(cli("dupes", album, "-f", "csv", "-m", "demo"))
    assert sorted(r["path"] for r in groups) == [str(album / "IMG_0002.png"), str(album / "copy.png")]


def test_dupes_json_lists_errors_and_counts_only_readable_images(album, tmp_path):
    # defect: dupes JSON had no `errors` list, and "among N images" counted the rows of unreadable files
    (album / "broken.png").write_bytes(b"not an image")
    result = cli("dupes", album, "-f", "json", "-m", "demo")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["errors"] == [{"path": str(album / "broken.png"), "error": "not an image Pillow can decode"}]
    assert document["searched"] == 2
    store = tmp_path / "s.store"
    assert cli("embed", album, "--store", store, "-m", "demo", "-q").exit_code == 1
    stored = cli("dupes", "--store", store, "-f", "json")
    assert stored.exit_code == 0 and json.loads(stored.stdout)["searched"] == 2
    assert "among 2 images" in stored.stderr


def test_dupes_in_a_store_reads_its_checked_scan_copies(album, tmp_path, monkeypatch):
    # defect: `clip dupes --store` decoded every embedding from Parquet, never from the scan copies
    import shutil

    from clipcli.search import dupes_job
    from clipcli.store import ImageStore

    (album / "copy.png").write_bytes((album / "IMG_0002.png").read_bytes())
    store = tmp_path / "s.store"
    assert cli("embed", album, "--store", store, "-m", "demo", "-q").exit_code == 0
    want = rows(cli("dupes", "--store", store, "-f", "csv"))
    assert sorted(r["path"] for r in want) == sorted(str((album / n).resolve()) for n in ("IMG_0002.png", "copy.png"))
    used = []
    original = ImageStore._scan_copy
    monkeypatch.setattr(ImageStore, "_scan_copy", lambda *a, **k: used.append(original(*a, **k)) or used[-1])
    assert len(dupes_job(store).groups) == 1
    assert used and all(copy is not None for copy in used)
    monkeypatch.undo()
    shutil.rmtree(store / "_scan")  # from Parquet alone: the same answer
    assert rows(cli("dupes", "--store", store, "-f", "csv")) == want
