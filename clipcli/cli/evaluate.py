"""`clip eval`: accuracy on a labelled dataset, for one or several template sets."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typing_extensions import Annotated

from .. import config
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors, warn_unknown_overlap
from .options import (ADAPT, DECODE, ENGINE, INPUTS, LABELS, MODEL_GROUP, OPEN_SET, OUTPUT, UI, HeadOpt, OutputOpt,
                      StoreOpt, check_format, check_outputs, open_sink, option, uses)

UnknownOpt = option("--unknown", panel=INPUTS, kind=Optional[Path], metavar="DIR", help="Images that belong to none "
                    "of the classes: adds open-set metrics (AUROC, FPR at 95% TPR, accuracy with --other on).")
MappingOpt = option("--mapping", panel=INPUTS, help="Folder or manifest name -> label text (.yaml/.json mapping, or "
                    ".csv name,label).")


def per_class_table(result: dict) -> Table:
    from ..evaluate import percent

    table = output.plain_table(f"per class ({output.escape(result['templates'])})", "label", "precision", "recall",
                               "support", right=("precision", "recall", "support"))
    for row in result["per_class"]:
        table.add_row(output.escape(row["label"]), percent(row["precision"]), percent(row["recall"]),
                      str(row["support"]))
    return table


def result_dicts(results) -> list[dict]:
    return [{"templates": r.templates.name, "template_count": len(r.templates.templates), **r.metrics.as_dict(),
             "mistakes": r.mistakes, **({"calibration": r.calibration} if r.calibration is not None else {}),
             **({"open_set": r.open_set} if r.open_set is not None else {}),
             **({"adapt": r.adapt} if r.adapt is not None else {})} for r in results]


def trust_table(rows: list[dict]) -> Table:
    """Calibration (ECE) and, with --other or --unknown, the open-set metrics, per template set."""
    from ..evaluate import percent

    open_set = any("open_set" in row for row in rows)
    columns = ("ECE", *(("AUROC", "FPR95", "acc1 with other", "unknown to other") if open_set else ()))
    table = output.plain_table("calibration" + (" and open set" if open_set else ""), "templates", *columns,
                               right=columns)
    for row in rows:
        cells = [f"{row['calibration']['ece']:.3f}"]
        if open_set:
            metrics = row["open_set"]
            cells += ["–" if metrics["auroc"] is None else f"{metrics['auroc']:.3f}", percent(metrics["fpr95"]),
                      percent(metrics["known_accuracy"]), percent(metrics["unknown_rejected"])]
        table.add_row(output.escape(row["templates"]), *cells)
    return table


@handles_errors
@uses(OPEN_SET, MODEL_GROUP, DECODE, ENGINE, UI, ADAPT)
def evaluate(
    dataset: Annotated[str, typer.Argument(help="A folder of class subfolders, or a .csv/.jsonl manifest (path,label).")],
    templates: Annotated[Optional[str], typer.Option(
        "--templates", "-t", rich_help_panel=LABELS, help="Template set(s), comma-separated, evaluated side by side. "
        f"Default: {config.DEFAULT_TEMPLATES}.", show_default=False)] = None,
    mapping: MappingOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel=OUTPUT, help="table or json.")] = "table",
    report: Annotated[Optional[Path], typer.Option(
        "--report", rich_help_panel=OUTPUT, help="Write a self-contained HTML report (heatmap, confident mistakes).", show_default=False)
    ] = None,
    output_path: OutputOpt = None,
    store: StoreOpt = None,
    head: HeadOpt = None,
    unknown: UnknownOpt = None,
    *, open_set, model, decode, engine, ui, adapt,
) -> None:
    """Measure zero-shot accuracy on a labelled dataset (metrics as in CLIP_benchmark)."""
    check_format(fmt, ("table", "json"))
    from ..evaluate import evaluate as run_evaluation
    from ..evaluate import load_dataset
    from ..options import OpenSetOptions

    check_outputs(files={"--output": output_path, "--report": report}, folders={"--store": store})
    data = load_dataset(dataset, mapping)
    unknown_paths = _unknown_images(unknown)
    warn_unknown_overlap(dataset, data.paths, unknown, unknown_paths)
    choices = _scorer_choices(data, templates, head, open_set if open_set.enabled or unknown is None else
                              OpenSetOptions(True))
    from ..embeddings import open_encoder

    with open_encoder(model, decode, engine, store) as encoder:
        with output.progress_bar("encoding images", ui.progress) as progress:
            results, errors = run_evaluation(encoder, data, choices, model, progress, unknown=unknown_paths,
                                             adapt=adapt)
    for error in errors:
        output.error(f"{error['path']}: {error['error']['message']}")
    if not results:
        output.error("no image in the dataset could be read")
        raise typer.Exit(EXIT_SOME_FAILED)
    rows = result_dicts(results)
    header = {"model": encoder.describe(), "dataset": dataset, "classes": data.class_names,
              **({"adapt": rows[0]["adapt"]} if adapt else {})}
    if open_set.enabled or unknown is not None:
        header.update(other={"label": open_set.label, "threshold": rows[0]["open_set"]["threshold"],
                             "enabled": open_set.enabled}, unknown=None if unknown is None else str(unknown))
    with ExitStack() as stack:
        stream = open_sink(stack, output_path)
        if fmt == "json":
            stream.write(json.dumps({**header, "errors": errors, "results": rows}, ensure_ascii=False, indent=2) + "\n")
        else:
            console = Console(file=stream, highlight=False)
            console.print(output.metrics_table(f"{output.escape(dataset)}: {len(data.class_names)} classes"
                                               + output.adapt_title(rows),
                                               "templates", rows, "templates"))
            console.print()
            console.print(trust_table(rows))
            if len(data.class_names) <= 60:
                console.print()
                console.print(per_class_table(rows[0]))
    if report is not None:
        from ..report import render_report
        from ..fsutil import atomic_output

        with atomic_output(report) as handle:
            handle.write(render_report(f"clip eval: {dataset}", {"model": header["model"]["name"],
                                       **({"pretrained": encoder.model.spec.pretrained} if encoder.model.spec.pretrained else {}),
                                       "images": rows[0]["count"]},
                                       rows, data.class_names))
        output.info(f"report written to {report}")
    raise typer.Exit(EXIT_SOME_FAILED if errors else EXIT_OK)


def _unknown_images(folder: Path | None) -> list[str]:
    """The images of --unknown (checked before any slow work)."""
    if folder is None:
        return []
    from ..errors import InputError
    from ..images import walk_images

    if not folder.is_dir():
        raise InputError(f"--unknown {folder}: not a folder (give a folder of images that belong to no class)")
    paths = list(walk_images(str(folder), videos=False))
    if not paths:
        raise InputError(f"--unknown {folder}: no images found")
    return paths


def _scorer_choices(data, templates: str | None, head: Path | None, open_set) -> list:
    """A head, or each template set over the dataset's class names: checked before any slow work."""
    from ..options import LabelOptions
    from ..run import ScorerChoice

    if head is not None:
        return [ScorerChoice(LabelOptions(head=head), open_set)]
    names = [n.strip() for n in (templates or config.default_templates()).split(",") if n.strip()]
    return [ScorerChoice(LabelOptions(tuple(data.class_names), name), open_set) for name in names]
