"""`clip sort`: classify, then file each image into OUT/<label>/ (previewed, journaled, reversible)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .. import config
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors, setup_reporting
from .options import (OUTPUT, BackendOpt, BatchOpt, CacheDirOpt, DeviceOpt, FilesFromOpt, HeadOpt, LabelsFileOpt,
                      LabelsOpt, MaxMegapixelsOpt, ModelOpt, NoCacheOpt, PrecisionOpt, PretrainedOpt, QuietOpt,
                      RecursiveOpt, StoreOpt, TemplatesOpt, VerboseOpt, WeightsDirOpt, WorkersOpt, check_choice,
                      check_outputs, gather_inputs, load_model_from_options, open_sink, read_head, read_labels,
                      scorer_for)

SORT = "Sorting"
PLAN_COLUMNS = ("source", "destination", "label", "score", "operation", "folder", "unsure", "note")


@handles_errors
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
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    templates: TemplatesOpt = None,
    files_from: FilesFromOpt = None,
    recursive: RecursiveOpt = True,
    store: StoreOpt = None,
    head: HeadOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    backend: BackendOpt = None,
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    max_megapixels: MaxMegapixelsOpt = config.DEFAULT_MAX_MEGAPIXELS,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    weights_dir: WeightsDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """File images into label folders: previewed with --dry-run, journaled, reversible with --undo."""
    setup_reporting(verbose)
    check_choice("--format", fmt, ("table", "json", "jsonl", "csv"))
    if undo is not None:
        _undo(undo, quiet)
        return
    from ..errors import UsageError
    from ..sorting import SortRules, folder_names, outside_into, refuse_remote

    if into is None:
        raise UsageError("give --into FOLDER (where the label folders go), or --undo MANIFEST")
    rules = SortRules(into, mode, min_score, min_margin, unsure_dir)
    rules.check()
    head_model = read_head(head, labels, labels_file)
    label_list = read_labels(labels, labels_file) if head_model is None else None
    label_names = head_model.labels if head_model is not None else [label.name for label in label_list]
    folder_names(label_names, unsure_dir)  # clashing folder names: refused now
    refuse_remote(inputs or [])  # named ones before any listing; --files-from ones below
    paths = refuse_remote(outside_into(gather_inputs(inputs, files_from, recursive), into))
    check_outputs(files={"--output": output_path, "--report": report, "--manifest": manifest},
                  folders={"--store": store, **({} if dry_run else {"--into": into})})

    from ..api import RunOptions, classify_paths
    from ..sorting import Manifest, default_manifest, execute, plan_sort, remove_temporaries
    from ..templates import load_template_set

    template_set = load_template_set(templates or config.default_templates())
    show_progress = output.progress_enabled(quiet)
    with ExitStack() as stack:
        loaded = load_model_from_options(model, pretrained, device, precision, weights_dir, store, backend, cache_dir)
        writer = None
        if store is not None:
            from ..embeddings import open_store_writer

            writer = stack.enter_context(open_store_writer(store, loaded))
        classifier = scorer_for(loaded, head_model, head, label_list, template_set, cache_dir, no_cache, show_progress)
        options = RunOptions(batch_size=batch_size, workers=workers, top_k=2, max_megapixels=max_megapixels)
        with output.progress_bar("classifying", show_progress) as progress:
            records = list(classify_paths(loaded, classifier, paths, options, progress, writer))
    plan = plan_sort(paths, records, classifier.labels, rules, manifest=manifest)

    operations = []
    with ExitStack() as stack:
        sink = open_sink(stack, output_path) if (fmt != "table" or output_path) else None
        record_writer = _plan_writer(fmt, sink, {"into": str(into), "mode": mode, "dry_run": dry_run})
        if dry_run:
            operations = [op.as_record() for op in plan]
        else:
            into.mkdir(parents=True, exist_ok=True)
            remove_temporaries(into, manifest)
            journal = Manifest(manifest or default_manifest(into))
            stack.callback(journal.close)
            with output.progress_bar(f"{mode} files", show_progress) as progress:
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
        from ..results import atomic_output

        with atomic_output(report) as handle:
            handle.write(render_sort_preview(f"clip sort{' (dry run)' if dry_run else ''}: {into}",
                                             {"model": loaded.spec.display_name, "mode": mode,
                                              "images": len(operations)}, operations))
        output.info(f"preview written to {report}")
    failed = [op for op in operations if op["operation"] == "error"]
    for op in failed:
        output.error(f"{op['source']}: {op['note']}")
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def _plan_writer(fmt: str, sink, header: dict):
    if sink is None:
        return None
    from ..results import DictCsvWriter, make_writer

    if fmt == "csv":
        return DictCsvWriter(sink, PLAN_COLUMNS)
    return make_writer("jsonl" if fmt == "table" else fmt, sink, header)


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


def _undo(manifest: Path, quiet: bool) -> None:
    from ..sorting import undo

    with output.progress_bar("undoing", output.progress_enabled(quiet)) as progress:
        result = undo(manifest, progress)
    for path, why in result.refused:
        output.error(f"{path}: {why}")
    output.info(f"undone: {len(result.restored)} file(s) restored or removed"
                + (f"; {len(result.refused)} refused" if result.refused else ""))
    raise typer.Exit(EXIT_SOME_FAILED if result.refused else EXIT_OK)
