"""Help and version: help reads cleanly at 80 columns with its panels in one order, every help page works, a short
flag means the same thing in every command, and every encoding command takes the same engine and decoding
options."""

import re

import pytest
from cli_helpers import ENCODING_COMMANDS, cli
from typer.testing import CliRunner

from clipcli import __version__
from clipcli.cli import app

COMMANDS = [["classify"], ["embed"], ["eval"], ["fit"], ["sort"], ["compare"], ["models"], ["templates"],
            ["cache", "info"], ["cache", "clear"], ["store", "info"], ["store", "check"], ["cache"], ["store"], []]


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
    assert "pip install 'ray[data]', or '.[ray]' in a checkout" in " ".join(text.split())


@pytest.mark.parametrize("command", [[], ["classify"], ["templates"], ["cache"], ["cache", "info"], ["cache", "clear"]])
def test_every_help_works(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.stdout


@pytest.mark.parametrize("command", ENCODING_COMMANDS)
def test_every_encoding_command_takes_the_same_engine_and_decoding_options(command, monkeypatch):
    result = cli(command, "--help", terminal_width=200)
    for flag in ("--engine", "--ray-address", "--gpus-per-worker", "--batch-size", "--workers", "--max-megapixels",
                 "--reduced-decode", "--model", "--backend", "--precision", "--weights-dir", "--cache-dir", "--quiet"):
        assert flag in result.stdout, (command, flag)
    monkeypatch.setenv("CLIPCLI_ENGINE", "spark")  # the environment variable is read by every command alike
    args = {"classify": ["x.png", "-l", "a,b"], "embed": ["x.png", "--store", "s"], "eval": ["data"],
            "fit": ["data", "-o", "h.safetensors"], "sort": ["x.png", "-l", "a,b", "--into", "o"],
            "compare": ["x.png", "--models", "demo", "-l", "a,b"]}[command]
    refused = cli(command, *args)
    assert refused.exit_code == 2 and refused.stderr.strip() == "error: unknown --engine 'spark'; use one of local, ray"
