"""`clip compare`: several backbones over the same images and labels, side by side."""

from __future__ import annotations

import gc
import json
from contextlib import ExitStack
from typing import List

import typer
from rich.console import Console
from rich.table import Table
from typing_extensions import Annotated

from .. import config
from ..errors import UsageError
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors, setup_reporting
from .evaluate import MappingOpt, pct
from .options import (BatchOpt, CacheDirOpt, DeviceOpt, LabelsFileOpt, LabelsOpt, NoCacheOpt, OutputOpt, PrecisionOpt,
                      QuietOpt, TemplatesOpt, VerboseOpt, WeightsDirOpt, WorkersOpt, gather_inputs,
                      check_choice, load_model_from_options, open_sink, read_labels)


def image_table(path: str, labels: list[str], per_model: dict[str, dict[str, float]]) -> Table:
    from ..models import parse_model_spec

    table = Table(title=output.escape(path), title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("label")
    for name in per_model:
        table.add_column(output.escape(parse_model_spec(name).short_name), justify="right")
    first = next(iter(per_model.values()))
    for label in sorted(labels, key=lambda x: -first.get(x, 0.0)):
        table.add_row(output.escape(label), *(f"{scores[label]:.4f}" for scores in per_model.values()))
    return table


def release(loaded) -> None:
    """Free a model before the next one loads, so memory holds one model at a time."""
    device = loaded.device
    del loaded
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


@handles_errors
def compare(
    inputs: Annotated[List[str], typer.Argument(help="Images, folders or globs; with --dataset, one dataset.")],
    models: Annotated[str, typer.Option(
        "--models", "-M", help="Comma-separated: ARCH:TAG, hf-hub:org/repo, local-dir:DIR or demo.")],
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    templates: TemplatesOpt = None,
    dataset: Annotated[bool, typer.Option(
        "--dataset", help="INPUTS is a labelled dataset (as for `clip eval`): print accuracy per model.")] = False,
    mapping: MappingOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    output_path: OutputOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    weights_dir: WeightsDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Compare backbones on the same images: probabilities per model, or accuracy per model."""
    setup_reporting(verbose)
    check_choice("--format", fmt, ("table", "json"))
    specs = [m.strip() for m in models.split(",") if m.strip()]
    if len(specs) < 1:
        raise UsageError("--models needs at least one model")
    from ..api import RunOptions
    from ..templates import load_template_set

    template_set = load_template_set(templates or config.default_templates())
    options = RunOptions(batch_size=batch_size, workers=workers, top_k=0)
    load = lambda spec: load_model_from_options(spec, None, device, precision, weights_dir)  # noqa: E731
    with ExitStack() as stack:
        stream = open_sink(stack, output_path)
        if dataset:
            failed = compare_accuracy(inputs, mapping, specs, template_set, options, load, cache_dir, no_cache, quiet,
                                      fmt, stream)
        else:
            failed = compare_images(inputs, labels, labels_file, specs, template_set, options, load, cache_dir,
                                    no_cache, quiet, fmt, stream)
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def compare_images(inputs, labels, labels_file, specs, template_set, options, load, cache_dir, no_cache, quiet, fmt,
                   stream) -> bool:
    from ..api import classify_paths, prepare_classifier

    label_list = read_labels(labels, labels_file)
    paths = gather_inputs(inputs, None, True)
    by_path: dict[str, dict[str, dict[str, float]]] = {}
    errors: dict[str, str] = {}
    for spec in specs:
        loaded = load(spec)
        with output.progress_bar(f"{spec}", output.progress_enabled(quiet)) as progress:
            classifier = prepare_classifier(loaded, label_list, template_set, cache_dir, not no_cache)
            for record in classify_paths(loaded, classifier, paths, options, progress):
                if "error" in record:
                    errors[record["path"]] = record["error"]["message"]
                else:
                    scores = {p["label"]: p["score"] for p in record["predictions"]}
                    by_path.setdefault(record["path"], {})[spec] = scores
        release(loaded)
    for path, message in errors.items():
        output.error(f"{path}: {message}")
    names = [label.name for label in label_list]
    if fmt == "json":
        results = [{"path": path, "models": {m: sorted(({"label": k, "score": v} for k, v in s.items()),
                                                       key=lambda p: -p["score"]) for m, s in per_model.items()}}
                   for path, per_model in by_path.items()]
        stream.write(json.dumps({"models": specs, "templates": template_set.name, "labels": names,
                                 "results": results}, ensure_ascii=False, indent=2) + "\n")
    else:
        console = Console(file=stream, highlight=False)
        for path, per_model in by_path.items():
            console.print(image_table(path, names, per_model))
            console.print()
    return bool(errors)


def compare_accuracy(inputs, mapping, specs, template_set, options, load, cache_dir, no_cache, quiet, fmt,
                     stream) -> bool:
    from ..api import evaluate
    from ..evaluate import load_dataset

    if len(inputs) != 1:
        raise UsageError("--dataset takes exactly one dataset (a folder of class subfolders or a manifest)")
    data = load_dataset(inputs[0], mapping)
    rows, failed = [], False
    for spec in specs:
        loaded = load(spec)
        with output.progress_bar(f"{spec}", output.progress_enabled(quiet)) as progress:
            results, errors = evaluate(loaded, data, [template_set], options, cache_dir, not no_cache, progress)
        release(loaded)
        failed = failed or bool(errors)
        if results:
            rows.append({"model": spec, **results[0].metrics.as_dict()})
    if fmt == "json":
        stream.write(json.dumps({"dataset": inputs[0], "templates": template_set.name, "classes": data.class_names,
                                 "results": rows}, ensure_ascii=False, indent=2) + "\n")
        return failed
    table = Table(title=f"{output.escape(inputs[0])}: {len(data.class_names)} classes, templates "
                  f"{output.escape(template_set.name)}", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("model")
    for column in ("acc1", "acc5", "mean per-class recall", "images"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(output.escape(row["model"]), pct(row["acc1"]), pct(row["acc5"]),
                      pct(row["mean_per_class_recall"]), str(row["count"]))
    Console(file=stream, highlight=False).print(table)
    return failed
