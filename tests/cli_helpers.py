"""Helpers shared by several test files: the command through typer's runner or in a subprocess, drawn folders."""

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from clipcli.cli import app
from clipcli.demo import shapes

# The commands that encode images, and so take the engine, model and decoding options.
ENCODING_COMMANDS = ("classify", "embed", "eval", "fit", "sort", "compare")


def cli(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def clip(*args, timeout=120, **kwargs):
    """The command in a subprocess, with a timeout so a regression that hangs fails instead of hanging."""
    return subprocess.run([sys.executable, "-m", "clipcli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def draw(folder: Path, count: int, start: int = 0, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    colors, kinds = ["red", "blue", "green", "yellow"], ["circle", "square", "star", "triangle"]
    paths = []
    for i in range(start, start + count):
        path = folder / f"img_{i:04d}.png"
        shapes.draw_pil(colors[i % 4], kinds[(i // 4) % 4], size=size, seed=i).save(path)
        paths.append(path)
    return paths


def draw_kinds(folder: Path, count: int, kinds, size: int = 40) -> Path:
    """`count` drawings cycling through (colour, shape) `kinds`, named 00.png, 01.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour, kind = kinds[i % len(kinds)]
        shapes.draw_pil(colour, kind, size=size, seed=i).save(folder / f"{i:02d}.png")
    return folder
