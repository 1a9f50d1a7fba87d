"""`clip sort`: folder names, the pure plan, never overwriting, undo byte for byte, dry run, the preview page
in a real browser, and a real `clip sort --mode move` killed with SIGKILL mid-run, checked by hash."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import cli

from clipcli.demo import shapes
from clipcli.errors import UsageError
from clipcli.sorting import SortRules, folder_names, plan_sort, safe_folder_name

LABELS = "red circle,blue square,green star,yellow triangle"
KINDS = [("red", "circle"), ("blue", "square"), ("green", "star"), ("yellow", "triangle")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file (links followed) under root."""
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def photos(tmp_path):
    """Drawn shapes the demo model knows, in two folders, with one file name used in both."""
    root = tmp_path / "photos"
    for folder, seed in (("a", 0), ("b", 10)):
        for i, (colour, kind) in enumerate(KINDS):
            (root / folder).mkdir(parents=True, exist_ok=True)
            shapes.draw_pil(colour, kind, size=64, seed=seed + i).save(root / folder / f"{colour}_{kind}.png")
    shapes.draw_pil("red", "circle", size=64, seed=50).save(root / "a" / "IMG_0001.png")
    shapes.draw_pil("blue", "square", size=64, seed=51).save(root / "b" / "IMG_0001.png")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def test_safe_folder_names():
    assert safe_folder_name("cats/dogs") == "cats_dogs"
    assert safe_folder_name("a\x00b\nc") == "a_b_c"
    assert safe_folder_name("CON") == "_CON" and safe_folder_name("lpt1.txt") == "_lpt1.txt"
    assert safe_folder_name("..") == "_" and safe_folder_name("  ") == "_" and safe_folder_name("end. ") == "end"
    assert safe_folder_name('what?<>:*|"') == "what_______"
    long = safe_folder_name("é" * 200)
    assert len(long.encode()) <= 120 and long == "é" * 60
    assert safe_folder_name("小笼包") == "小笼包"


def test_clashing_folder_names_are_refused():
    with pytest.raises(UsageError, match="'a/b' and 'a:b' would share the folder 'a_b'"):
        folder_names(["a/b", "a:b"])
    with pytest.raises(UsageError, match="share the folder"):
        folder_names(["Cat", "cat"])  # one folder on case-insensitive filesystems
    with pytest.raises(UsageError, match="unsure folder"):
        folder_names(["_unsure"])


def test_plan_numbers_taken_names_and_skips_identical(tmp_path):
    into = tmp_path / "out"
    records = [{"path": "x", "predictions": [{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.1}]}] * 3
    existing = {into / "cat" / "IMG.jpg", into / "cat" / "IMG-2.jpg"}
    identical_to = {("/src/c/IMG.jpg", into / "cat" / "IMG.jpg")}
    plan = plan_sort(["/src/a/IMG.jpg", "/src/b/IMG.jpg", "/src/c/IMG.jpg"], records, ["cat", "dog"],
                     SortRules(into), exists=lambda p: p in existing,
                     identical=lambda s, d: (s, d) in identical_to)
    assert [op.destination for op in plan] == [str(into / "cat" / "IMG-3.jpg"), str(into / "cat" / "IMG-4.jpg"), None]
    assert plan[2].operation == "skip" and "identical" in plan[2].note


def test_plan_sends_uncertain_images_to_unsure(tmp_path):
    def record(top, second):
        return {"path": "x", "predictions": [{"label": "cat", "score": top}, {"label": "dog", "score": second}]}

    rules = SortRules(tmp_path, min_score=0.6, min_margin=0.3, unsure_dir="maybe")
    plan = plan_sort(["/1.jpg", "/2.jpg", "/3.jpg"], [record(0.9, 0.1), record(0.55, 0.45), record(0.62, 0.38)],
                     ["cat", "dog"], rules, exists=lambda p: False)
    assert [(op.folder, op.unsure) for op in plan] == [("cat", False), ("maybe", True), ("maybe", True)]


def test_copy_sorts_every_image_and_names_never_clash(photos, tmp_path):
    before = tree(photos)
    into = tmp_path / "sorted"
    result = cli("sort", photos, "-m", "demo", "-l", LABELS, "--into", into, "-f", "jsonl")
    assert result.exit_code == 1  # the broken file is reported and not sorted
    assert "broken.jpg" in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 11
    assert tree(photos) == before  # copy leaves the sources alone
    sorted_files = {k: v for k, v in tree(into).items() if "/" in k}  # the label folders, not the manifest
    assert sorted(sorted_files.values()) == sorted(v for k, v in before.items() if not k.endswith("broken.jpg"))
    assert {k.split("/")[0] for k in sorted_files if "/" in k} == set(LABELS.split(","))
    assert {"red circle/IMG_0001.png", "blue square/IMG_0001.png"} <= sorted_files.keys()
    manifest = next(into.glob("clip-sort-*.jsonl"))
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(lines) == 10 and all(line["operation"] == "copy" and len(line["sha256"]) == 64 for line in lines)
    assert all(os.path.isabs(line["source"]) and os.path.isabs(line["destination"]) for line in lines)

    again = cli("sort", photos, "-m", "demo", "-l", LABELS, "--into", into, "-f", "json")
    ops = json.loads(again.stdout)["results"]
    assert [op["operation"] for op in ops].count("skip") == 10  # identical files already there: skipped
    assert {k for k in tree(into) if "/" in k} == sorted_files.keys()


def test_dry_run_touches_nothing_and_prints_the_plan(photos, tmp_path):
    into = tmp_path / "sorted"
    before = tree(photos)
    result = cli("sort", photos, "-m", "demo", "-l", LABELS, "--into", into, "--dry-run", "-f", "csv",
                 "--mode", "move")
    assert not into.exists() and tree(photos) == before
    rows = result.stdout.splitlines()
    assert rows[0] == "source,destination,label,score,operation,folder,unsure,note"
    assert sum(",move," in row for row in rows) == 10
    table = cli("sort", photos, "-m", "demo", "-l", LABELS, "--into", into, "--dry-run")
    assert "dry run: nothing was changed" in table.stdout and "would copy" in table.stdout
    assert not into.exists()


@pytest.mark.parametrize("mode", ["move", "copy", "link", "symlink"])
def test_undo_restores_byte_for_byte(photos, tmp_path, mode):
    into = tmp_path / "sorted"
    before = tree(photos)
    manifest = tmp_path / "journal.jsonl"
    result = cli("sort", photos, "-m", "demo", "-l", LABELS, "--into", into, "--mode", mode, "--manifest", manifest)
    assert result.exit_code == 1, result.output
    if mode == "move":
        assert set(tree(photos)) == {"a/broken.jpg"}
    if mode == "symlink":
        assert all((into / k).is_symlink() for k in tree(into))
    undone = cli("sort", "--undo", manifest)
    assert undone.exit_code == 0, undone.output
    assert tree(photos) == before
    assert not any(p.is_file() or p.is_symlink() for p in into.rglob("*"))  # label folders removed too


def test_undo_refuses_files_changed_since(photos, tmp_path):
    into = tmp_path / "sorted"
    manifest = tmp_path / "journal.jsonl"
    cli("sort", photos, "-m", "demo", "-l", LABELS, "--into", into, "--mode", "move", "--manifest", manifest)
    edited = into / "green star" / "green_star.png"
    edited.write_bytes(edited.read_bytes() + b"edited")
    undone = cli("sort", "--undo", manifest)
    assert undone.exit_code == 1
    assert f"{edited}: changed since the sort; left as it is" in undone.stderr
    assert edited.exists() and not (photos / "a" / "green_star.png").exists()
    assert (photos / "a" / "red_circle.png").exists()  # the others were restored


def test_move_across_filesystems_copies_verifies_then_unlinks(photos, tmp_path, monkeypatch):
    from clipcli import sorting

    monkeypatch.setattr(sorting, "same_filesystem", lambda source, folder: False)
    before = tree(photos)
    into = tmp_path / "sorted"
    cli("sort", photos / "a", "-m", "demo", "-l", LABELS, "--into", into, "--mode", "move")
    assert set(tree(photos)) == {"a/broken.jpg"} | {k for k in before if k.startswith("b/")}
    assert sorted(v for k, v in tree(into).items() if "/" in k) == sorted(
        v for k, v in before.items() if k.startswith("a/") and "broken" not in k)
    assert not list(into.rglob(".clip-sort-*"))


def test_hard_links_across_filesystems_fail_per_file_with_a_hint(photos, tmp_path, monkeypatch):
    import errno

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    result = cli("sort", photos / "b", "-m", "demo", "-l", LABELS, "--into", tmp_path / "out", "--mode", "link")
    assert result.exit_code == 1
    assert "cannot hard-link across filesystems; use --mode copy or --mode symlink" in result.stderr


def test_sort_never_picks_up_its_own_output(photos):
    into = photos / "sorted"
    cli("sort", photos, "-m", "demo", "-l", LABELS, "--into", into)
    again = cli("sort", photos, "-m", "demo", "-l", LABELS, "--into", into, "-f", "jsonl")
    assert len(again.stdout.splitlines()) == 11  # the sorted copies are not inputs


def test_bad_options_fail_before_any_work(photos, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--into", a_file], "is a file"),
        (["--into", tmp_path / "o", "--mode", "teleport"], "unknown --mode"),
        (["--into", tmp_path / "o", "--min-score", "2"], "from 0 to 1"),
        (["--into", tmp_path / "o", "--report", tmp_path], "is a folder"),
        ([], "--into"),
    ]
    for extra, message in cases:
        result = cli("sort", photos, "-m", "local-dir:/nonexistent", "-l", LABELS, *extra)
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)
    clash = cli("sort", photos, "-m", "local-dir:/nonexistent", "-l", "a/b,a:b", "--into", tmp_path / "o")
    assert clash.exit_code == 2 and "would share the folder" in clash.stderr


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_preview_page_renders_in_headless_chromium(photos, tmp_path):
    report = tmp_path / "preview.html"
    # no "yellow triangle" label: the yellow triangles are the uncertain ones
    result = cli("sort", photos, "-m", "demo", "-l", "red circle,blue square,green star", "--into", tmp_path / "o",
                 "--dry-run", "--min-score", "0.999", "--report", report)
    assert report.exists() and not (tmp_path / "o").exists(), result.output
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    sections = [chunk.split('"', 1)[0] for chunk in dom.split('data-folder="')[1:]]
    assert sections and sections[0] == "_unsure"  # the unsure group comes first
    assert sections[1:] and set(sections[1:]) <= {"red circle", "blue square", "green star"}
    assert dom.count('<img src="data:image/jpeg;base64,') == 10
    assert "broken.jpg" in dom.split('id="errors"', 1)[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_sigkill_mid_move_loses_nothing_and_rerun_finishes(tmp_path):
    source = tmp_path / "inbox"
    source.mkdir()
    for i in range(400):
        colour, kind = KINDS[i % 4]
        shapes.draw_pil(colour, kind, size=48, seed=i).save(source / f"img_{i:03d}.png")
    before = sorted(tree(source).values())
    into = tmp_path / "sorted"
    manifest = tmp_path / "journal.jsonl"
    command = [sys.executable, "-c", "from clipcli.cli import main; main()", "sort", str(source), "-m", "demo",
               "-l", LABELS, "--into", str(into), "--mode", "move", "--manifest", str(manifest), "-q",
               "--workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if manifest.exists() and manifest.read_text().count("\n") >= 20:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -9
    moved = manifest.read_text().count("\n")
    assert 20 <= moved < 400, moved
    # every file whole, at its source or its destination, never both, never a partial copy
    after = sorted(list(tree(source).values()) + [v for k, v in tree(into).items() if "/" in k])
    assert after == before
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert tree(source) == {}
    assert sorted(v for k, v in tree(into).items() if "/" in k) == before
    undone = subprocess.run([*command[:3], "sort", "--undo", str(manifest)], capture_output=True, text=True,
                            timeout=300)
    assert undone.returncode == 0, undone.stderr
    assert sorted(tree(source).values()) == before


# A `clip` command that SIGKILLs itself at one exact moment: when MODULE.NAME is first called with an argument
# containing MARKER (argv: MODULE NAME MARKER, then clip's own arguments).
KILL_WHEN = """
import os, shutil, signal, sys
module, name, marker = sys.argv[1:4]
del sys.argv[1:4]
owner = {"os": os, "shutil": shutil}[module]
real = getattr(owner, name)
def hook(*args, **kwargs):
    if any(marker in str(arg) for arg in args):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(owner, name, hook)
from clipcli.cli import main
main()
"""


def killed_clip(module: str, name: str, marker: Path, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", KILL_WHEN, module, name, str(marker), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture
def inbox(tmp_path):
    """Three drawn shapes the demo model knows."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    for colour, kind in KINDS[:3]:
        shapes.draw_pil(colour, kind, size=64, seed=7).save(folder / f"{colour}_{kind}.png")
    return folder


@pytest.fixture
def other_fs(tmp_path):
    """A tmpfs folder, so that moves into it cross filesystems for real."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


NEW_KEYS = ("id", "source_id", "link", "destination_id", "resumed")


def to_old_journal(journal: Path) -> None:
    """Rewrite a journal as the first format wrote it: without ids or identities."""
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    journal.write_text("".join(json.dumps({k: v for k, v in line.items() if k not in NEW_KEYS}) + "\n"
                               for line in lines))


@pytest.mark.parametrize("mode, old_journal", [("copy", False), ("link", False), ("copy", True), ("link", True)])
def test_undo_never_deletes_the_only_copy(inbox, tmp_path, mode, old_journal):
    before = tree(inbox)
    into, journal = tmp_path / "sorted", tmp_path / "journal.jsonl"
    assert cli("sort", inbox, "-m", "demo", "-l", LABELS, "--into", into, "--mode", mode,
               "--manifest", journal).exit_code == 0
    original = inbox / "red_circle.png"
    filed = next(into.rglob("red_circle.png"))
    original.unlink()  # copy: the user deletes the original, so the copy in OUT is the only one left
    if mode == "link":  # an editor's save: a new file at the original's name, the old bytes only in OUT
        original.write_bytes(b"rewritten")
    if old_journal:
        to_old_journal(journal)
    undone = cli("sort", "--undo", journal)
    assert undone.exit_code == 1, undone.output
    assert f"{filed}: " in undone.stderr and "undone: 2" in undone.stderr
    assert digest(filed) == before["red_circle.png"]  # kept, byte for byte
    assert {k: v for k, v in tree(inbox).items() if k != "red_circle.png"} == {
        k: v for k, v in before.items() if k != "red_circle.png"}
    assert [p for p in into.rglob("*.png")] == [filed]  # the other two were undone


def test_inputs_all_inside_into_are_refused_before_the_model_loads(photos):
    result = cli("sort", photos / "a", "-m", "local-dir:/nonexistent", "-l", LABELS, "--into", photos)
    assert result.exit_code == 2, result.output
    assert "inside --into" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not list(photos.glob("clip-sort-*"))


@pytest.mark.e2e
def test_rerun_finishes_a_cross_filesystem_move_killed_between_copy_and_unlink(inbox, other_fs):
    before = tree(inbox)
    into = other_fs / "sorted"
    args = ["sort", inbox, "-m", "demo", "-l", LABELS, "--into", into, "--mode", "move", "-q", "--workers", "0"]
    killed = killed_clip("os", "unlink", inbox, *args)  # the first source unlink, its copy verified in OUT
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(tree(inbox)) == 3 and len(set(tree(inbox).values()) & set(tree(into).values())) == 1
    rerun = cli(*args)
    assert rerun.exit_code == 0, rerun.output
    assert tree(inbox) == {}
    assert sorted(v for k, v in tree(into).items() if "/" in k) == sorted(before.values())
    assert not list(into.rglob(".clip-sort-*"))
    for journal in sorted(into.glob("clip-sort-*.jsonl"), reverse=True):
        undone = cli("sort", "--undo", journal)
        assert undone.exit_code == 0, undone.output
    assert tree(inbox) == before


@pytest.mark.e2e
def test_undo_killed_mid_copy_leaves_no_temporary_behind(inbox, other_fs):
    before = tree(inbox)
    into, journal = other_fs / "sorted", other_fs / "journal.jsonl"
    assert cli("sort", inbox, "-m", "demo", "-l", LABELS, "--into", into, "--mode", "move",
               "--manifest", journal).exit_code == 0
    killed = killed_clip("shutil", "copystat", inbox, "sort", "--undo", journal)  # a whole copy, not yet renamed
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.stat().st_size > 0 for p in inbox.glob(".clip-sort-*.tmp")] == [True]
    undone = cli("sort", "--undo", journal)
    assert undone.exit_code == 0, undone.output
    assert tree(inbox) == before  # no hidden temporary either


def test_sort_never_deletes_a_users_files_named_like_its_temporaries(inbox, tmp_path):
    into = tmp_path / "sorted"
    (into / "red circle").mkdir(parents=True)
    users = [into / ".clip-sort-notes.tmp", into / "red circle" / ".clip-sort-123-red_circle.png.tmp"]
    for path in users:
        path.write_bytes(b"the user's own")
    result = cli("sort", inbox, "-m", "demo", "-l", LABELS, "--into", into)
    assert result.exit_code == 0, result.output
    assert [path.read_bytes() for path in users] == [b"the user's own"] * 2


def test_a_label_folder_that_is_a_symlink_is_refused(inbox, tmp_path):
    into, elsewhere = tmp_path / "sorted", tmp_path / "elsewhere"
    elsewhere.mkdir()
    into.mkdir()
    (into / "red circle").symlink_to(elsewhere)
    before = tree(inbox)
    result = cli("sort", inbox, "-m", "demo", "-l", LABELS, "--into", into, "--mode", "move")
    assert result.exit_code == 2, result.output
    assert "red circle" in result.stderr and "symbolic link" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert list(elsewhere.iterdir()) == [] and tree(inbox) == before


def test_moving_a_symlink_files_its_images_bytes_and_undo_puts_the_link_back(tmp_path):
    library, inbox = tmp_path / "library", tmp_path / "inbox"
    library.mkdir()
    inbox.mkdir()
    shapes.draw_pil("red", "circle", size=64, seed=3).save(library / "pic.png")
    (inbox / "alias.png").symlink_to("../library/pic.png")  # relative: moved as a link, it would dangle
    into, journal = tmp_path / "sorted", tmp_path / "journal.jsonl"
    result = cli("sort", inbox, "-m", "demo", "-l", LABELS, "--into", into, "--mode", "move", "--manifest", journal)
    assert result.exit_code == 0, result.output
    filed = Path(json.loads(journal.read_text().splitlines()[0])["destination"])
    assert filed.name == "alias.png" and not filed.is_symlink() and digest(filed) == digest(library / "pic.png")
    assert not os.path.lexists(inbox / "alias.png") and (library / "pic.png").is_file()
    undone = cli("sort", "--undo", journal)
    assert undone.exit_code == 0, undone.output
    assert os.readlink(inbox / "alias.png") == "../library/pic.png" and not os.path.lexists(filed)


def test_undo_of_a_file_that_is_not_a_journal_is_one_line(tmp_path):
    image = tmp_path / "image.png"
    shapes.draw_pil("red", "circle", size=64, seed=3).save(image)
    result = cli("sort", "--undo", image)
    assert result.exit_code == 2 and "not a clip sort manifest" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_one_manifest_is_written_by_one_sort_at_a_time(tmp_path):
    from clipcli.errors import OutputPathError
    from clipcli.sorting import Manifest

    first = Manifest(tmp_path / "journal.jsonl")
    with pytest.raises(OutputPathError, match="being written by another clip sort"):
        Manifest(tmp_path / "journal.jsonl")  # its half-written lines would interleave with ours
    first.close()
    Manifest(tmp_path / "journal.jsonl").close()
