"""Messages and exit codes that cut across commands: parse and usage errors are one line with exit 2, a failed
run leaves the output file untouched, and a reader that goes away early ends the run quietly."""

import subprocess
import sys

import pytest
from cli_helpers import cli
from typer.testing import CliRunner

from clipcli.cli import app

LABELS = "red circle,blue square"


@pytest.mark.parametrize("args, words", [
    (["clasify"], ["no such command 'clasify'", "did you mean 'classify'"]),
    (["classify", "x.png", "-k", "-1"], ["--top-k", "greater than or equal to 0"]),
    (["classify", "x.png", "--frobnicate"], ["no such option", "--frobnicate"]),
    (["embed", "x.png"], ["missing option", "--store"]),
])
def test_parse_errors_are_one_line_with_exit_2(args, words):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "╭" not in result.stderr, result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    assert "--help`" in lines[0]


@pytest.mark.parametrize("args,message", [
    ([], "no labels given"),
    (["--labels", "a,b", "--templates", "nope"], "unknown template set 'nope'"),
    (["--labels", "a,b", "--format", "xml"], "unknown --format 'xml'"),
    (["--labels", "a,b", "--labels-file", "x.txt"], "either --labels or --labels-file"),
])
def test_usage_errors_exit_2_with_one_line(run, images, args, message):
    result = run(str(images / "red_circle.png"), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_output_file_is_untouched_when_the_run_fails(tiny_model, images, tmp_path):
    target = tmp_path / "results.jsonl"
    target.write_text("precious\n")
    result = CliRunner().invoke(app, ["classify", str(images), "--model", tiny_model, "--labels", LABELS,
                                      "--format", "jsonl", "-o", str(target), "--score", "sigmoid"])
    assert result.exit_code == 2
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_stdout_closed_early_exits_quietly(tiny_model, images):
    command = (f"{sys.executable} -m clipcli classify {images} {images} --model {tiny_model} --labels '{LABELS}' "
               f"--format jsonl --templates simple --no-cache --batch-size 1 | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
