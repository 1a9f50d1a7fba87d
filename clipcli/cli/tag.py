"""`clip tag`: classify, then write each image's labels into its XMP sidecar (or, --embed, the image), merged
with what is there, previewed with --dry-run, journaled, reversible with --undo."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors
from .plans import plan_writer, undo_and_exit
from .options import (ADAPT, DECODE, ENGINE, LABEL_GROUP, LABELS, MODEL_GROUP, OPEN_SET, OUTPUT, SOURCES, UI, StoreOpt,
                      check_format, check_outputs, open_sink, uses)

TAG = "Tagging"
PLAN_COLUMNS = ("path", "target", "kind", "operation", "labels", "add", "remove", "note")


@handles_errors
@uses(SOURCES, LABEL_GROUP, OPEN_SET, MODEL_GROUP, DECODE, ENGINE, UI, ADAPT)
def tag(
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="Image files, folders (recursed) and glob patterns.", show_default=False)] = None,
    sidecar_name: Annotated[str, typer.Option(
        "--sidecar-name", rich_help_panel=TAG, help="New sidecars as darktable names them (IMG.JPG.xmp) or as "
        "digiKam and Lightroom do (IMG.xmp: digikam). An existing sidecar of either name is the one updated.")
    ] = "darktable",
    embed: Annotated[bool, typer.Option(
        "--embed", rich_help_panel=TAG, help="Write into JPEG, PNG, WebP and TIFF files themselves (XMP, and IPTC "
        "keywords for JPEG) instead of a sidecar; other formats still get a sidecar.")] = False,
    root: Annotated[str, typer.Option(
        "--root", rich_help_panel=TAG, help="The top of the hierarchical tags: ROOT|label, ROOT/label.")] = "clip",
    top_k: Annotated[Optional[int], typer.Option(
        "--top-k", "-k", min=0, rich_help_panel=TAG, help="Labels per image at most (0: every label that passes "
        "--min-score). Default: 1 with softmax, 0 with --score sigmoid.", show_default=False)] = None,
    min_score: Annotated[Optional[float], typer.Option(
        "--min-score", rich_help_panel=TAG, help="A label's score must be at least this (0-1). Default: 0 with "
        "softmax, 0.5 with --score sigmoid.", show_default=False)] = None,
    score: Annotated[str, typer.Option(
        "--score", rich_help_panel=LABELS,
        help="softmax (the labels compete: CLIP) or sigmoid (each label decided on its own: SigLIP models).")
    ] = "softmax",
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", rich_help_panel=TAG, help="Journal of every file written (for --undo). "
        "Default: ./clip-tag-<timestamp>.jsonl.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "-n", rich_help_panel=TAG, help="Print what each file would gain and lose; write nothing.")
    ] = False,
    undo: Annotated[Optional[Path], typer.Option(
        "--undo", rich_help_panel=TAG, help="Put back every file the tagging journaled in this manifest.",
        show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel=OUTPUT,
                                     help="table, json, jsonl or csv (one row per image).")] = "table",
    output_path: Annotated[Optional[Path], typer.Option(
        "--output", "-o", rich_help_panel=OUTPUT, help="Write the plan/result records to FILE.", show_default=False)
    ] = None,
    store: StoreOpt = None,
    *, sources, labels, open_set, model, decode, engine, ui, adapt,
) -> None:
    """Write labels where photo managers read them (XMP sidecars or embedded keywords): merged, previewed with
    --dry-run, reversible with --undo."""
    check_format(fmt)
    if undo is not None:
        from ..tagging import undo as undo_tags

        undo_and_exit(undo_tags, undo, ui)
    from ..errors import UsageError
    from ..options import ScoreOptions
    from ..sorting import refuse_remote
    from ..tagging import TagRules, default_manifest, plan_tags

    if score not in ("softmax", "sigmoid"):
        raise UsageError(f"unknown --score {score!r}; use one of softmax, sigmoid")
    rules = TagRules(root, top_k, min_score, score, open_set.label if open_set.enabled else None, sidecar_name, embed)
    rules.check()
    rules.check_tools()
    journal_path = manifest or default_manifest()
    whole_store = store is not None and not inputs and sources.files_from is None
    refuse_remote(inputs or [])
    checks = dict(files={"--output": output_path, **({} if dry_run else {"--manifest": journal_path})},
                  folders={} if whole_store else {"--store": store})
    paths, records, header = _records(inputs, whole_store, sources, ScoreOptions(score, 0, adapt), labels, open_set,
                                      model, decode, engine, store, ui, lambda: check_outputs(**checks))
    plan = plan_tags(paths, records, rules)

    operations = []
    with ExitStack() as stack:
        sink = open_sink(stack, output_path) if (fmt != "table" or output_path) else None
        writer = plan_writer(fmt, sink, {**header, "dry_run": dry_run, "root": rules.root,
                                          "sidecar_name": sidecar_name, "embed": embed}, PLAN_COLUMNS, _flat)
        if dry_run:
            operations = [op.as_record() for op in plan]
            for op in operations:
                if writer is not None:
                    writer.write(op)
        else:
            from ..tagging import TagJournal, execute, read_tag_journal, remove_temporaries

            if journal_path.exists():
                remove_temporaries(read_tag_journal(journal_path))  # what an interrupted run left
            journal = TagJournal(journal_path)
            stack.callback(journal.close)
            with output.progress_bar("tagging", ui.progress) as progress:
                for op in execute(plan, journal, progress):
                    operations.append(op.as_record())
                    if writer is not None:
                        writer.write(operations[-1])
            output.info(f"manifest: {journal.path} (undo with `clip tag --undo {journal.path}`)")
        if writer is not None:
            writer.close()
    if fmt == "table":
        output.print_table(_table(operations, dry_run), to_stdout=output_path is None)
    failed = [op for op in operations if op["operation"] == "error"]
    for op in failed:
        output.error(f"{op['path']}: {op['note']}")
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _records(inputs, whole_store: bool, sources, options, labels, open_set, model, decode, engine, store, ui,
             check) -> tuple[list[str], list[dict], dict]:
    """The images, their records (every label ranked, in input order) and the run's header: the one place where
    clip tag classifies (whole_store: every image of the store).  `check` runs before the model loads."""
    from ..run import ClassifyRun
    from ..sorting import refuse_remote

    with output.stage_bars(ui.progress) as progress:
        run = ClassifyRun(labels, model, decode, engine, options, open_set, store, progress)
        paths = None if whole_store else refuse_remote(sources.paths(inputs))
        check()
        with run.open(paths):
            records = list(run.records(shots=False))
    return paths or [record["path"] for record in records], records, run.header


def _flat(record: dict) -> dict:
    """A plan record as one csv row: its label lists joined."""
    return {**record, "labels": "; ".join(p["label"] for p in record["labels"]), "add": "; ".join(record["add"]),
            "remove": "; ".join(record["remove"])}


def _table(operations: list[dict], dry_run: bool):
    import os

    verb = {"create": "would create", "update": "would update"} if dry_run else {}
    table = output.plain_table("dry run: nothing was changed" if dry_run else None, "image", "written to", "gains",
                               "loses", "operation")
    for op in operations:
        target = op["target"]
        where = os.path.basename(target) if target and op["kind"] == "sidecar" else ("the image" if target else "-")
        table.add_row(output.escape(os.path.basename(op["path"])), output.escape(where),
                      output.escape(", ".join(op["add"]) or "-"), output.escape(", ".join(op["remove"]) or "-"),
                      verb.get(op["operation"], op["operation"]))
    return table
