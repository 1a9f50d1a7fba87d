"""`clip classify`: parse options, wire the library together, render the records."""

from __future__ import annotations

from contextlib import ExitStack
from typing import List, Optional

import typer
from typing_extensions import Annotated

from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors
from .options import (ADAPT, DECODE, ENGINE, LABEL_GROUP, LABELS, MODEL_GROUP, OPEN_SET, OUTPUT, SOURCES, UI,
                      OutputOpt, StoreOpt, check_format, check_outputs, open_sink, uses)


def make_record_writer(fmt: str, stream, header: dict):
    from ..results import make_writer

    if fmt == "table":
        return output.TableWriter(stream)
    return make_writer(fmt, stream, header)


@handles_errors
@uses(SOURCES, LABEL_GROUP, OPEN_SET, MODEL_GROUP, DECODE, ENGINE, UI, ADAPT)
def classify(
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="Image files, folders (recursed) and glob patterns. With --store and no inputs: every stored image.",
        show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel=OUTPUT,
                                     help="table, json, jsonl or csv.")] = "table",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=0, rich_help_panel=OUTPUT,
                                       help="Predictions per image (0: all labels).")] = 5,
    output_path: OutputOpt = None,
    score: Annotated[str, typer.Option(
        "--score", rich_help_panel=LABELS,
        help="softmax (probabilities over the labels) or sigmoid (independent, SigLIP models).")] = "softmax",
    store: StoreOpt = None,
    *, sources, labels, open_set, model, decode, engine, ui, adapt,
) -> None:
    """Classify images into the labels you give (zero-shot, with a CLIP model)."""
    check_format(fmt)
    from ..options import ScoreOptions
    from ..run import ClassifyRun

    with output.stage_bars(ui.progress) as progress:
        run = ClassifyRun(labels, model, decode, engine, ScoreOptions(score, top_k, adapt), open_set, store, progress)
        whole_store = store is not None and not inputs and sources.files_from is None
        paths = None if whole_store else sources.paths(inputs)
        check_outputs(files={"--output": output_path}, folders={} if whole_store else {"--store": store})
        with run.open(paths), ExitStack() as stack:
            failures = _write(run.records(), fmt, open_sink(stack, output_path), run.header)
    adapted = run.header.get("adapt", {})
    if adapted.get("ran") and not ui.quiet:
        output.info(f"--adapt: {adapted['changed']} of {adapted['images']} answers changed")
    if run.report is not None and not ui.quiet:
        output.info(store_summary(run.report, store))
    raise typer.Exit(EXIT_SOME_FAILED if failures else EXIT_OK)


def _write(records, fmt: str, stream, header: dict) -> int:
    """Render the records as they come; returns how many were errors.  The writer starts with the first record
    (or at the end), so the header holds what was learnt before it (--adapt)."""
    failures = 0
    writer = None
    try:
        for record in records:
            if "error" in record:
                failures += 1
                output.error(f"{record['path']}: {record['error']['message']}")
            for said in record.get("warnings", ()):  # a video decoded only in part
                output.warning(f"{record['path']}: {said}")
            writer = writer or make_record_writer(fmt, stream, header)
            writer.write(record)
    finally:
        (writer or make_record_writer(fmt, stream, header)).close()
    return failures


def store_summary(report, store) -> str:
    return (f"store {store}: {report.stored} already stored, {report.encoded} encoded"
            + (f", {report.failed} unreadable" if report.failed else "")
            + (f", {report.pruned} pruned" if report.pruned else ""))
