"""`clip classify`: parse options, wire the library together, render the records."""

from __future__ import annotations

from contextlib import ExitStack
from typing import List, Optional

import typer
from typing_extensions import Annotated

from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors
from .options import (ADAPT, DECODE, ENGINE, LABEL_GROUP, LABELS, MODEL_GROUP, OPEN_SET, OUTPUT, SOURCES, UI,
                      OutputOpt,
                      StoreOpt, check_choice, check_format, check_outputs, header_of, open_sink, scorer_for, uses,
                      check_other, warn_single_label, with_other)


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
    from ..options import ScoreOptions

    check_format(fmt)
    check_choice("--score", score, ("softmax", "sigmoid"))
    if labels.head is None:
        warn_single_label(labels.required(), score, open_set.enabled)  # no labels: refused before anything else
    check_other(open_set, labels)
    whole_store = store is not None and not inputs and sources.files_from is None
    paths = [] if whole_store else sources.paths(inputs)
    check_outputs(files={"--output": output_path}, folders={} if whole_store else {"--store": store})
    options = ScoreOptions(score, top_k, adapt)
    adapted: dict = {}  # what --adapt did: filled before the first record, shown in the JSON header
    with ExitStack() as stack:
        if whole_store:
            scorer, described, records = _from_store(store, labels, model, options, ui, open_set, adapted.update)
        else:
            from ..api import classify_paths
            from ..embeddings import open_encoder

            encoder = stack.enter_context(open_encoder(model, decode, engine, store, images=len(paths)))
            scorer = with_other(scorer_for(encoder.model, labels, model, ui), encoder.model, open_set, score, model, ui)
            described = encoder.describe()
            records = lambda progress: classify_paths(encoder, scorer, paths, options, progress,  # noqa: E731
                                                     adapted.update)
        scorer.check_score(score)
        header = header_of(labels, scorer, described, score, store)
        if adapt:
            header["adapt"] = adapted
        failures = _write(records, fmt, open_sink(stack, output_path), header, ui)
    if adapted.get("ran") and not ui.quiet:
        output.info(f"--adapt: {adapted['changed']} of {adapted['images']} answers changed")
    if store is not None and not whole_store and not ui.quiet:
        output.info(store_summary(encoder.report, store))
    raise typer.Exit(EXIT_SOME_FAILED if failures else EXIT_OK)


def _from_store(store, labels, model, options, ui, open_set, on_adapt=None):
    """Every stored image, scored from the store: without loading the model when the labels are cached or a
    head is given (and, with --other, the negative labels are cached)."""
    from ..api import classify_store, scorer_without_model
    from ..store import open_store

    reader = open_store(store)
    label_list = labels.required() if labels.head is None else None
    scorer = scorer_without_model(reader, label_list, labels.templates, labels.head, labels.head_path, model)
    if scorer is not None and open_set.enabled:
        from ..openset import open_set_without_model

        scorer = open_set_without_model(scorer, reader, open_set, options.score, model)
    described = reader.describe()
    if scorer is None:
        from ..embeddings import load_model, store_model
        from ..store import check_model

        loaded = load_model(model, store)
        check_model(reader.directory, reader.manifest, store_model(loaded))
        scorer, described = scorer_for(loaded, labels, model, ui), loaded.describe()
        scorer = with_other(scorer, loaded, open_set, options.score, model, ui)
    return scorer, described, lambda progress: classify_store(scorer, reader, options, progress,
                                                              on_adapt=on_adapt)


def _write(records, fmt: str, stream, header: dict, ui) -> int:
    """Render the records as they come; returns how many were errors.  The writer starts with the first record
    (or at the end), so the header holds what was learnt before it (--adapt)."""
    failures = 0
    writer = None
    try:
        with output.progress_bar("classifying", ui.progress) as progress:
            for record in records(progress):
                if "error" in record:
                    failures += 1
                    output.error(f"{record['path']}: {record['error']['message']}")
                writer = writer or make_record_writer(fmt, stream, header)
                writer.write(record)
    finally:
        (writer or make_record_writer(fmt, stream, header)).close()
    return failures


def store_summary(report, store) -> str:
    return (f"store {store}: {report.stored} already stored, {report.encoded} encoded"
            + (f", {report.failed} unreadable" if report.failed else "")
            + (f", {report.pruned} pruned" if report.pruned else ""))
