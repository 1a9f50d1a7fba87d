"""A newcomer's first hour: one-line parse errors, --version, help that reads cleanly at 80 columns, the same short
flag meaning the same thing everywhere, hints for typos, and README's Python example on a folder with a bad file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipcli import __version__
from clipcli.cli import app

ROOT = Path(__file__).parent.parent
COMMANDS = [["classify"], ["embed"], ["eval"], ["fit"], ["sort"], ["compare"], ["models"], ["templates"],
            ["cache", "info"], ["cache", "clear"], ["store", "info"], ["store", "check"], ["cache"], ["store"], []]


def cli(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


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


def test_version():
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"clip {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "clip")
def test_help_reads_cleanly_at_80_columns(command):
    result = cli(*command, "--help", env={"COLUMNS": "80", "TERM": "dumb"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert not re.search(r"<(bool|str|int|float|path|list\[str\])[^>]*>", text), text
    panels = [p for p in re.findall(r"╭─ ([^─]+?) ─", text) if p not in ("Arguments", "Options", "Commands")]
    order = ["Inputs", "Labels and templates", "Model", "Embedding store", "Performance", "Output"]
    known = [p for p in panels if p in order]
    assert known == sorted(known, key=order.index), panels
    if command and command[0] in ("classify", "embed", "eval", "fit", "sort", "compare", "models", "templates"):
        assert "Example: clip " + command[0] in text


def test_short_flags_mean_the_same_thing_in_every_command():
    meanings: dict[str, set[str]] = {}
    for command in COMMANDS:
        text = cli(*command, "--help", terminal_width=200).stdout
        for long, short in re.findall(r"│ (--[a-z][a-z-]*)\S*\s+(-[a-zA-Z])\s", text):
            meanings.setdefault(short, set()).add(long)
    assert meanings.get("-k") == {"--top-k"}
    assert all(len(longs) == 1 for longs in meanings.values()), meanings


def test_help_shows_the_ray_extra_literally():
    text = re.sub("[│╭╮╰╯─]", " ", cli("classify", "--help", terminal_width=200).stdout)
    assert "pip install 'clipcli[ray]'" in " ".join(text.split())


def test_template_typo_gets_a_suggestion():
    result = cli("classify", "x.png", "-l", "a,b", "-t", "fod")
    assert result.exit_code == 2 and "did you mean food?" in result.stderr


def test_one_label_under_softmax_warns(tmp_path):
    image = ROOT / "examples" / "red_circle.png"
    result = cli("classify", image, "-m", "demo", "-l", "red circle", "-f", "jsonl")
    assert result.exit_code == 0 and "one label ('red circle') under softmax always scores 1.0" in result.stderr
    assert "--score sigmoid" in result.stderr
    assert "always scores" not in cli("classify", image, "-m", "demo", "-l", "red circle,blue square").stderr


def test_empty_files_from_says_what_is_empty():
    result = cli("classify", "--files-from", "-", "-l", "a,b", input="\n")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --files-from -: standard input holds no paths (one path per line)"


@pytest.mark.e2e
def test_readme_python_example_survives_an_unreadable_file(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python"):]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 3)]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "red_circle.png").write_bytes((ROOT / "examples" / "red_circle.png").read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "broken.jpg could not be read" in result.stdout and "red_circle.png {'label'" in result.stdout


def test_models_lists_open_clips_table_without_importing_torch():
    """`clip models` reads open_clip's pretrained table without building its models (6 s before, ~1 s now)."""
    import json as _json

    probe = ("import sys, json\nfrom clipcli.models import list_pretrained\nrows = list_pretrained()\n"
             "print(json.dumps([[r['architecture'], r['pretrained']] for r in rows]))\n"
             "print(json.dumps(sorted(m for m in ('torch', 'open_clip') if m in sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    listed, imported = (_json.loads(line) for line in result.stdout.splitlines())
    import open_clip

    assert [tuple(pair) for pair in listed] == list(open_clip.list_pretrained())
    assert imported == []
