"""`clip sort`: classify, then file each image into OUT/<label>/ (previewed, journaled, reversible)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors
from .plans import plan_writer, undo_and_exit
from .options import (ADAPT, DECODE, ENGINE, LABEL_GROUP, MODEL_GROUP, OPEN_SET, OUTPUT, SOURCES, UI, StoreOpt,
                      check_format, check_outputs, open_sink, uses)

SORT = "Sorting"
PLAN_COLUMNS = ("source", "destination", "label", "score", "operation", "folder", "unsure", "note")


@handles_errors
@uses(SOURCES, LABEL_GROUP, OPEN_SET, MODEL_GROUP, DECODE, ENGINE, UI, ADAPT)
def sort(
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="Image files, folders (recursed) and glob patterns.", show_default=False)] = None,
    into: Annotated[Optional[Path], typer.Option(
        "--into", rich_help_panel=SORT, help="Destination: each image goes to INTO/<label>/.", show_default=False)
    ] = None,
    mode: Annotated[str, typer.Option(
        "--mode", rich_help_panel=SORT, help="copy, move, link (hard link) or symlink.")] = "copy",
    min_score: Annotated[float, typer.Option(
        "--min-score", rich_help_panel=SORT, help="Top score below this: the image goes to the unsure folder.")
    ] = 0.0,
    min_margin: Annotated[float, typer.Option(
        "--min-margin", rich_help_panel=SORT, help="Top two scores closer than this: the unsure folder.")] = 0.0,
    unsure_dir: Annotated[str, typer.Option(
        "--unsure-dir", rich_help_panel=SORT, help="Name of the unsure folder inside INTO.")] = "_unsure",
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", rich_help_panel=SORT, help="Journal of every file operation (for --undo). "
        "Default: INTO/clip-sort-<timestamp>.jsonl.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", "-n", rich_help_panel=SORT, help="Print the plan; touch no file, create no folder.")] = False,
    undo: Annotated[Optional[Path], typer.Option(
        "--undo", rich_help_panel=SORT, help="Reverse the sort journaled in this manifest.", show_default=False)
    ] = None,
    report: Annotated[Optional[Path], typer.Option(
        "--report", rich_help_panel=OUTPUT, help="Write an HTML page of thumbnails grouped by folder, unsure "
        "first (with --dry-run: look before moving).", show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel=OUTPUT,
                                     help="table (a summary), json, jsonl or csv (one row per image).")] = "table",
    output_path: Annotated[Optional[Path], typer.Option(
        "--output", "-o", rich_help_panel=OUTPUT, help="Write the plan/result records to FILE.", show_default=False)
    ] = None,
    store: StoreOpt = None,
    *, sources, labels, open_set, model, decode, engine, ui, adapt,
) -> None:
    """File images into label folders: previewed with --dry-run, journaled, reversible with --undo."""
    check_format(fmt)
    if undo is not None:
        from ..sorting import undo as undo_sort

        undo_and_exit(undo_sort, undo, ui)
    from ..errors import UsageError
    from ..sorting import SortRules, folder_names, outside_into, refuse_remote

    if into is None:
        raise UsageError("give --into FOLDER (where the label folders go), or --undo MANIFEST")
    from ..options import ScoreOptions
    from ..run import ClassifyRun

    rules = SortRules(into, mode, min_score, min_margin, unsure_dir, open_set.label if open_set.enabled else None)
    rules.check()
    with output.stage_bars(ui.progress) as progress:
        run = ClassifyRun(labels, model, decode, engine, ScoreOptions(top_k=2, adapt=adapt), open_set, store, progress)
        folder_names(rules.folder_labels(run.labels), unsure_dir)  # clashing folder names: refused now
        refuse_remote(inputs or [])  # named ones before any listing; --files-from ones below
        paths = refuse_remote(outside_into(sources.paths(inputs), into))
        check_outputs(files={"--output": output_path, "--report": report, "--manifest": manifest},
                      folders={"--store": store, **({} if dry_run else {"--into": into})})
        with run.open(paths):
            records = list(run.records(shots=False))

    from ..sorting import Manifest, default_manifest, execute, plan_sort, remove_temporaries

    plan = plan_sort(paths, records, run.labels, rules, manifest=manifest)

    operations = []
    with ExitStack() as stack:
        sink = open_sink(stack, output_path) if (fmt != "table" or output_path) else None
        record_writer = plan_writer(fmt, sink, {"into": str(into), "mode": mode, "dry_run": dry_run,
                                                 **run.scorer.header(),
                                                 **({"adapt": run.header["adapt"]} if adapt else {})}, PLAN_COLUMNS)
        if dry_run:
            operations = [op.as_record() for op in plan]
        else:
            into.mkdir(parents=True, exist_ok=True)
            remove_temporaries(into, manifest)
            journal = Manifest(manifest or default_manifest(into))
            stack.callback(journal.close)
            with output.progress_bar(f"{mode} files", ui.progress) as progress:
                for op in execute(plan, journal, progress):
                    operations.append(op.as_record())
                    if record_writer is not None:
                        record_writer.write(operations[-1])
            output.info(f"manifest: {journal.path} (undo with `clip sort --undo {journal.path}`)")
        if record_writer is not None:
            if dry_run:
                for op in operations:
                    record_writer.write(op)
            record_writer.close()
    if fmt == "table":
        output.print_table(_summary_table(operations, dry_run), to_stdout=output_path is None)
    if report is not None:
        from ..report import render_sort_preview
        from ..fsutil import atomic_output

        with atomic_output(report) as handle:
            handle.write(render_sort_preview(f"clip sort{' (dry run)' if dry_run else ''}: {into}",
                                             {"model": run.encoder.model.spec.display_name, "mode": mode,
                                              "images": len(operations)}, operations))
        output.info(f"preview written to {report}")
    failed = [op for op in operations if op["operation"] == "error"]
    for op in failed:
        output.error(f"{op['source']}: {op['note']}")
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _summary_table(operations: list[dict], dry_run: bool):
    counts: dict[tuple[str, str], int] = {}
    for op in operations:
        key = (op["folder"] or "-", op["operation"] if op["operation"] in ("skip", "error") else
               ("would " + op["operation"] if dry_run else op["operation"]))
        counts[key] = counts.get(key, 0) + 1
    table = output.plain_table("dry run: nothing was changed" if dry_run else None, "folder", "operation", "images",
                               right=("images",))
    for (folder, operation), count in sorted(counts.items()):
        table.add_row(output.escape(folder), operation, str(count))
    return table
