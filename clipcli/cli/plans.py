"""What `clip sort` and `clip tag` print about the file operations they plan and carry out: the plan's records
(jsonl, json, csv) and the outcome of an undo."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import typer

from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED


def plan_writer(fmt: str, sink, header: dict, columns: Sequence[str], flat: Callable[[dict], dict] | None = None):
    """A writer of plan records to `sink` (None: no writer): csv with these columns (each record made flat first),
    else json or jsonl (a table's plan goes to a file as jsonl)."""
    if sink is None:
        return None
    from ..results import DictCsvWriter, make_writer

    if fmt == "csv":
        writer = DictCsvWriter(sink, columns)
        if flat is not None:
            plain = writer.write
            writer.write = lambda record: plain(flat(record))
        return writer
    return make_writer("jsonl" if fmt == "table" else fmt, sink, header)


def undo_and_exit(undo: Callable, manifest: Path, ui) -> None:
    """Reverse the operations journaled in `manifest` with the command's `undo`; refusals named one by one."""
    with output.progress_bar("undoing", ui.progress) as progress:
        result = undo(manifest, progress)
    for path, why in result.refused:
        output.error(f"{path}: {why}")
    output.info(f"undone: {len(result.restored)} file(s) restored or removed"
                + (f"; {len(result.refused)} refused" if result.refused else ""))
    raise typer.Exit(EXIT_SOME_FAILED if result.refused else EXIT_OK)
