"""`clip fit`: fit a few-shot head on labelled images, or print the few-shot curve for your own data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from .. import config
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors
from .evaluate import MappingOpt
from .options import (DECODE, ENGINE, MODEL_GROUP, OUTPUT, UI, StoreOpt, TemplatesOpt, check_choice, check_format,
                      check_outputs, uses)

FEW_SHOT = "Few-shot"


def parse_shots(text: str | None, curve: bool) -> list[int | None]:
    from ..errors import UsageError

    if text is None or text.strip().lower() == "all":
        if curve:
            return [0, 1, 2, 4, 8, 16]
        return [None]
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--shots {text!r}: give a whole number, or a comma-separated list with --eval") from None
    if not values or any(v < 0 for v in values) or (not curve and (len(values) != 1 or values[0] == 0)):
        raise UsageError(f"--shots {text!r}: one number >= 1 to fit a head (a list such as 0,1,2,4 goes with --eval)")
    return values


@handles_errors
@uses(MODEL_GROUP, DECODE, ENGINE, UI)
def fit(
    train: Annotated[str, typer.Argument(help="Labelled images: a folder of class subfolders, or a .csv/.jsonl "
                                         "manifest (path,label).")],
    output_path: Annotated[Optional[Path], typer.Option(
        "--output", "-o", rich_help_panel=OUTPUT, help="Write the head here (.safetensors).", show_default=False)
    ] = None,
    method: Annotated[str, typer.Option(
        "--method", rich_help_panel=FEW_SHOT, help="gda (default: zero-shot plus Gaussian discriminant analysis), "
        "logistic (the CLIP paper's probe), tip-adapter; with --eval, a comma-separated list.")] = "gda",
    shots: Annotated[Optional[str], typer.Option(
        "--shots", rich_help_panel=FEW_SHOT, help="Images per class to fit on (sampled with --seed). "
        "Default: all. With --eval: a list, default 0,1,2,4,8,16.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=FEW_SHOT, help="Seed for sampling shots.")] = 0,
    eval_set: Annotated[Optional[str], typer.Option(
        "--eval", rich_help_panel=FEW_SHOT, help="A test set (same classes): print accuracy per method and shot "
        "count instead of writing a head.", show_default=False)] = None,
    repeats: Annotated[int, typer.Option(
        "--repeats", min=1, rich_help_panel=FEW_SHOT, help="With --eval: samples of the shots per point.")] = 3,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel=OUTPUT, help="table or json.")] = "table",
    report: Annotated[Optional[Path], typer.Option(
        "--report", rich_help_panel=OUTPUT, help="With --eval: an HTML page with the curve (inline SVG).",
        show_default=False)] = None,
    mapping: MappingOpt = None,
    templates: TemplatesOpt = None,
    store: StoreOpt = None,
    *, model, decode, engine, ui,
) -> None:
    """Learn from a few labelled images per class: a head that starts from zero-shot and never trains the model."""
    from ..errors import UsageError
    from ..fewshot import METHODS

    check_format(fmt, ("table", "json"))
    methods = [m.strip() for m in method.split(",") if m.strip()]
    for name in methods:
        check_choice("--method", name, tuple(m for m in METHODS if m != "zero-shot"))
    curve = eval_set is not None
    shot_list = parse_shots(shots, curve)
    if not curve and output_path is None:
        raise UsageError("give -o HEAD.safetensors to write the head (or --eval TEST to print the few-shot curve)")
    if not curve and len(methods) != 1:
        raise UsageError("fit one --method at a time (a list goes with --eval)")
    check_outputs(files={"--output": output_path, "--report": report}, folders={"--store": store})

    from ..classifier import zero_shot_classifier
    from ..embeddings import open_encoder
    from ..evaluate import load_dataset
    from ..fewshot import ShotPlan
    from ..fewshot import fit as fit_head
    from ..fewshot import few_shot_curve
    from ..templates import load_template_set

    data = load_dataset(train, mapping)
    test = load_dataset(eval_set, mapping) if curve else None
    template_set = load_template_set(templates or config.default_templates())
    plan = ShotPlan(tuple(methods), tuple(shot_list), repeats, seed)
    with open_encoder(model, decode, engine, store) as encoder:
        classifier = zero_shot_classifier(encoder.model, data.class_names, template_set, model.cache_dir,
                                          model.use_cache)
        with output.progress_bar("encoding images", ui.progress) as progress:
            if curve:
                rows, errors = few_shot_curve(encoder, data, test, classifier, plan, progress)
            else:
                head, errors = fit_head(encoder, data, classifier, template_set, plan, progress, train_name=train)
    name = encoder.model.spec.display_name
    for error in errors:
        output.error(f"{error['path']}: {error['error']['message']}")
    if curve:
        _print_curve(rows, fmt, {"model": name, "train": train, "test": eval_set,
                                 "templates": template_set.name, "repeats": repeats, "seed": seed})
        if report is not None:
            from ..report import render_curve
            from ..fsutil import atomic_output

            with atomic_output(report) as handle:
                handle.write(render_curve(f"clip fit: {train} -> {eval_set}",
                                          {"model": name, "templates": template_set.name,
                                           "repeats": repeats}, rows))
            output.info(f"report written to {report}")
    else:
        from ..fewshot import save_head

        save_head(head, output_path)
        cv = head.meta.get("cv_accuracy")
        output.info(f"head written to {output_path}: {head.method}, {len(head.labels)} labels, "
                    f"{head.meta['train_images']} images, "
                    + (f"cross-validated accuracy {cv:.1%}, " if cv is not None else "")
                    + ", ".join(f"{k} {v:.3g}" for k, v in head.params.items()))
    raise typer.Exit(EXIT_SOME_FAILED if errors else EXIT_OK)


def _print_curve(rows: list[dict], fmt: str, header: dict) -> None:
    if fmt == "json":
        print(json.dumps({**header, "results": rows}, indent=2))
        return
    shots = sorted({row["shots"] for row in rows})
    methods = list(dict.fromkeys(row["method"] for row in rows if row["shots"]))
    by_key = {(row["method"], row["shots"]): row for row in rows}
    columns = [str(k) for k in shots]
    table = output.plain_table("test accuracy, %, by shots per class (mean ±std over repeats)", "method", *columns,
                               right=tuple(columns))
    zero = by_key.get(("zero-shot", 0))
    for method in methods:
        cells = []
        for k in shots:
            row = zero if k == 0 else by_key.get((method, k))
            cells.append("" if row is None else f"{100 * row['mean']:.1f}" + (f" ±{100 * row['std']:.1f}" if k else ""))
        table.add_row(output.escape(method), *cells)
    Console(highlight=False).print(table)
