"""What a run reads: folders (recursion, hidden files, non-images), globs, --files-from, a bad file among good
ones, special files (FIFOs, devices), symlink loops and folders that cannot be listed.  Each bad input is one
error record and one line on stderr, the rest of the batch done, never a hang or a traceback."""

import errno
import json
import os
from pathlib import Path

import pytest
from cli_helpers import cli, clip

from clipcli.demo import shapes
from clipcli.images import discover

LABELS = "red circle,blue square,green star"


def paths_in(records):
    return [r["path"].rsplit("/", 1)[-1] for r in records]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_folder_recursion_jsonl_skips_hidden_and_non_images(run, images):
    result = run(str(images), "--labels", LABELS, "--format", "jsonl", "--top-k", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert paths_in(records) == ["blue_square.jpg", "red_circle.png", "green_star.webp"]
    for record in records:
        assert len(record["predictions"]) == 2
        scores = [p["score"] for p in record["predictions"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_no_recursive(run, images):
    result = run(str(images), "--labels", LABELS, "--format", "jsonl", "--no-recursive")
    assert paths_in(json.loads(line) for line in result.stdout.splitlines()) == ["blue_square.jpg", "red_circle.png"]


def test_files_from_stdin(run, images):
    listing = f"{images / 'red_circle.png'}\n{images / 'sub' / 'green_star.webp'}\n"
    result = run("--files-from", "-", "--labels", LABELS, "--format", "jsonl", input=listing)
    assert result.exit_code == 0, result.output
    assert paths_in(json.loads(line) for line in result.stdout.splitlines()) == ["red_circle.png", "green_star.webp"]


def test_glob_input(run, images):
    result = run(str(images / "*.png"), "--labels", LABELS, "--format", "jsonl")
    assert paths_in(json.loads(line) for line in result.stdout.splitlines()) == ["red_circle.png"]


def test_no_inputs_is_a_usage_error(run):
    result = run("--labels", "a,b")
    assert result.exit_code == 2
    assert "no images given" in result.stderr


def test_bad_file_is_reported_and_skipped(run, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    result = run(str(images / "red_circle.png"), str(bad), str(tmp_path / "missing.png"),
                 "--labels", LABELS, "--format", "jsonl")
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert "predictions" in records[0]
    assert records[1]["error"]["type"] == "not_an_image"
    assert records[2]["error"] == {"type": "not_found", "message": "file not found"}
    assert f"error: {bad}: not an image" in result.stderr
    assert "Traceback" not in result.output


# regression: an empty --files-from list was not named as the thing that was empty
def test_empty_files_from_says_what_is_empty():
    result = cli("classify", "--files-from", "-", "-l", "a,b", input="\n")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --files-from -: standard input holds no paths (one path per line)"


# regression: a FIFO named like an image was opened for reading, so the run hung waiting for a writer
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("command", ["classify", "embed", "sort"])
def test_fifo_named_like_an_image_is_an_error_record(shapes_dir, tmp_path, command):
    fifo = shapes_dir / "x.jpg"
    os.mkfifo(fifo)
    args = {"classify": ["classify", shapes_dir, "-l", LABELS, "-f", "jsonl"],
            "embed": ["embed", shapes_dir, "--store", tmp_path / "store"],
            "sort": ["sort", shapes_dir, "-l", LABELS, "--into", tmp_path / "sorted", "--dry-run", "-f", "jsonl"]}
    result = clip(*args[command], "-m", "demo", "--quiet", timeout=60)
    assert result.returncode == 1, result.stderr
    assert error_lines(result.stderr) == [f"error: {fifo}: is a FIFO (named pipe), not a regular file"]
    assert "Traceback" not in result.stderr
    if command == "classify":
        records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
        assert records["x.jpg"]["error"]["type"] == "not_a_file"
        assert "predictions" in records["red_circle.png"] and "predictions" in records["blue_square.png"]
    elif command == "embed":
        assert "2 encoded, 1 unreadable" in result.stderr
    else:
        operations = {Path(r["source"]).name: r["operation"] for r in map(json.loads, result.stdout.splitlines())}
        assert operations == {"x.jpg": "error", "red_circle.png": "copy", "blue_square.png": "copy"}


# regression: a device file named on the command line was opened and read as if it were an image
def test_devices_are_refused_without_reading_them():
    from clipcli.errors import ImageReadError
    from clipcli.images import read_image

    if os.path.exists("/dev/null"):
        with pytest.raises(ImageReadError, match="is a character device, not a regular file"):
            read_image("/dev/null")


# regression: a symlink loop named like an image was not reported as its own error record (symlink_loop)
def test_looping_symlinks_are_per_file_errors(shapes_dir):
    os.symlink("self.png", shapes_dir / "self.png")
    os.symlink("b.png", shapes_dir / "a.png")
    os.symlink("a.png", shapes_dir / "b.png")
    (shapes_dir / "sub").mkdir()
    os.symlink("..", shapes_dir / "sub" / "loop")
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "-f", "jsonl")
    assert result.exit_code == 1, result.output
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert sorted(records) == ["a.png", "b.png", "blue_square.png", "red_circle.png", "self.png"]
    for name in ("a.png", "b.png", "self.png"):
        assert records[name]["error"] == {"type": "symlink_loop",
                                          "message": "symlink loop (too many levels of symbolic links)"}
    assert len(error_lines(result.stderr)) == 3 and "Traceback" not in result.output


def test_symlink_loop_ends_and_duplicates_are_classified_once(tmp_path):
    (tmp_path / "a").mkdir()
    shapes.draw_pil("red", "circle").save(tmp_path / "a" / "x.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    found = discover([str(tmp_path), str(tmp_path / "a" / "x.png")])
    assert found == [str(tmp_path / "a" / "x.png")]


def deny_listing(monkeypatch, folder):
    """Tests run as root, where chmod 000 does not stop reads: make the OS answer "permission denied"."""
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


# regression: a subfolder that could not be listed was skipped silently
def test_unlistable_subfolder_is_reported_and_the_rest_classified(monkeypatch, shapes_dir):
    secret = shapes_dir / "secret"
    secret.mkdir()
    shapes.draw_pil("green", "star").save(secret / "green_star.png")
    deny_listing(monkeypatch, secret)
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS, "-f", "jsonl", "--workers", "0")
    assert result.exit_code == 1, result.output
    assert error_lines(result.stderr) == [f"error: {secret}: cannot list folder: permission denied"]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {"path": str(secret), "error": {"type": "permission_denied",
                                           "message": "cannot list folder: permission denied"}} in records
    assert sum("predictions" in r for r in records) == 2


# regression: an unlistable folder named on the command line was skipped silently, not refused as permission denied
def test_unlistable_top_folder_says_permission_denied(monkeypatch, shapes_dir):
    deny_listing(monkeypatch, shapes_dir)
    result = cli("classify", shapes_dir, "-m", "demo", "-l", LABELS)
    assert result.exit_code == 2
    assert result.stderr == f"error: cannot list {shapes_dir}: permission denied\n"
