"""Paper cuts in what the tool tells people (issue 30, item 13): two outputs on one file, label warnings as clean
lines, file names that steer the terminal, `eval --unknown` inside the dataset, and eval's "(--adapt)" title."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from clipcli.demo import shapes

    root = tmp_path_factory.mktemp("messages") / "shapes"
    for colour in ("red", "blue"):
        for shape in ("circle", "square"):
            folder = root / f"{colour}_{shape}"
            folder.mkdir(parents=True)
            for i in range(5):
                shapes.draw_pil(colour, shape, seed=i).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("command", ["eval", "search"])
def test_output_and_report_on_the_same_file_are_refused(dataset, tmp_path, command):
    # issue 30 #13: `-o X --report X` wrote the report over the results in silence
    target = tmp_path / "out.txt"
    if command == "eval":
        args = ["eval", dataset, "-m", "demo", "-t", "simple"]
    else:
        args = ["search", "red circle", "--in", dataset, "-m", "demo"]
    result = cli(*args, "-o", target, "--report", target)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: --output {target} and --report {target} are the same file; give "
                                          "each its own"]
    assert not target.exists()  # refused before any work


def test_a_hard_link_is_the_same_file(dataset, tmp_path):
    # issue 30 #13: the same file under two names is still one file
    first, second = tmp_path / "a.json", tmp_path / "b.html"
    first.write_text("keep me\n")
    os.link(first, second)
    result = cli("eval", dataset, "-m", "demo", "-t", "simple", "-f", "json", "-o", first, "--report", second)
    assert result.exit_code == 2 and "are the same file" in result.stderr
    assert first.read_text() == "keep me\n"


def test_blank_and_duplicate_labels_warn_in_one_clean_line_each(tmp_path):
    # issue 30 #13: the warnings printed as raw Python warnings with a source line ("labels.py:36: ClipCliWarning")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "clipcli", "classify", str(EXAMPLES / "red_circle.png"), "-m", "demo",
                           "-l", "red circle,red circle,,blue square", "-f", "jsonl", "--backend", "torch"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["warning: ignored 1 blank label(s)",
                                        "warning: ignored duplicate label(s): 'red circle'"]
    labels = [p["label"] for p in json.loads(done.stdout)["predictions"]]
    assert sorted(labels) == ["blue square", "red circle"]


def test_the_table_shows_control_characters_of_file_names_as_escapes(tmp_path):
    # issue 30 #13: the table passed ESC and the RTL override of a file name to the terminal
    from clipcli.demo import shapes

    name = "a\x1b[31mred\u202egnp.exe\x07.png"
    shapes.draw_pil("red", "circle", seed=1).save(tmp_path / name)
    result = cli("classify", tmp_path, "-m", "demo", "-l", "red circle,blue square", "-k", "1")
    assert result.exit_code == 0, result.output
    for raw in ("\x1b", "\u202e", "\x07"):
        assert raw not in result.stdout
    assert "a\\x1b[31mred\\u202egnp.exe\\x07.png" in result.stdout  # each shown as its escape, nothing dropped
    (tmp_path / name).write_bytes(b"not an image")
    broken = cli("classify", tmp_path, "-m", "demo", "-l", "red circle,blue square")
    assert broken.exit_code == 1 and "\x1b" not in broken.stderr and "\\x1b[31mred\\u202e" in broken.stderr


@pytest.mark.parametrize("where", ["the dataset", "a class folder", "a new subfolder"])
def test_eval_unknown_equal_to_or_inside_the_dataset_warns(dataset, tmp_path, where):
    # issue 30 #13: `eval --unknown` equal to or inside the dataset gave no warning (its images were also known)
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(dataset, root)
    unknown = {"the dataset": root, "a class folder": root / "red_circle", "a new subfolder": root / "others"}[where]
    if where == "a new subfolder":
        shutil.copytree(root / "blue_square", unknown)
    result = cli("eval", root, "-m", "demo", "-t", "simple", "-f", "json", "--unknown", unknown)
    assert result.exit_code == 0, result.output
    count = 20 if where == "the dataset" else 5  # a new subfolder is read as one more class of the dataset
    verb = "is the dataset" if where == "the dataset" else "is inside the dataset"
    assert result.stderr.splitlines() == [
        f"warning: --unknown {unknown} {verb} {root}: {count} of its {count} images are also scored as known "
        "classes; keep images of no class in a folder outside the dataset"]


def test_eval_unknown_outside_the_dataset_does_not_warn(dataset, tmp_path):
    import shutil

    unknown = tmp_path / "elsewhere"
    shutil.copytree(dataset / "blue_square", unknown)
    result = cli("eval", dataset, "-m", "demo", "-t", "simple", "-f", "json", "--unknown", unknown)
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_eval_title_says_adapt_only_when_adaptation_ran(dataset, tmp_path, monkeypatch):
    # issue 30 #13: the title said "(--adapt)" when adaptation did not run (too few images)
    import shutil

    monkeypatch.chdir(tmp_path)  # short relative names: the title fits on one line
    for folder in ("red_circle", "blue_square"):
        shutil.copytree(dataset / folder, Path("few") / folder, ignore=shutil.ignore_patterns("[3-9].png"))
    shutil.copytree(dataset, "all")
    skipped = cli("eval", "few", "-m", "demo", "-t", "simple", "--adapt")
    assert skipped.exit_code == 0, skipped.output
    assert "needs at least" in skipped.stderr
    assert skipped.stdout.splitlines()[0].strip() == "few: 2 classes"
    ran = cli("eval", "all", "-m", "demo", "-t", "simple", "--adapt")
    document = cli("eval", "all", "-m", "demo", "-t", "simple", "--adapt", "-f", "json")
    assert json.loads(document.stdout)["adapt"]["ran"] is True
    assert ran.stdout.splitlines()[0].strip() == "all: 4 classes (--adapt)"
