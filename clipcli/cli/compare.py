"""`clip compare`: several backbones over the same images and labels, side by side."""

from __future__ import annotations

import gc
import json
import sys
from contextlib import ExitStack
from dataclasses import replace
from typing import Callable, List

import typer
from rich.console import Console
from rich.table import Table
from typing_extensions import Annotated

from .. import config
from ..errors import UsageError
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors
from .evaluate import MappingOpt
from .options import (DECODE, ENGINE, MODEL_GROUP, OUTPUT, UI, LabelsFileOpt, LabelsOpt, OutputOpt, TemplatesOpt,
                      check_format, open_sink, read_labels, uses)


def image_table(path: str, labels: list[str], per_model: dict[str, list[dict]]) -> Table:
    """Rows: labels, in the first model's order; a column of probabilities per model."""
    from ..models import parse_model_spec

    table = output.plain_table(output.escape(path), "label")
    for name in per_model:
        table.add_column(output.escape(parse_model_spec(name).short_name), justify="right")
    scores = [{p["label"]: p["score"] for p in predictions} for predictions in per_model.values()]
    for label in sorted(labels, key=lambda x: -scores[0].get(x, 0.0)):
        table.add_row(output.escape(label), *(f"{by_label[label]:.4f}" for by_label in scores))
    return table


def one_model_at_a_time(specs: list[str], encoder_of: Callable, ui, work: Callable) -> list:
    """work(spec, encoder, progress) for each model in turn.  The model lives only inside this call's
    frame, so it is freed before the next one loads: memory holds one model at a time."""
    results = []
    for spec in specs:
        with output.progress_bar(spec, ui.progress) as progress, encoder_of(spec) as encoder:
            results.append(work(spec, encoder, progress))
        del encoder  # before the next model loads
        gc.collect()
        _empty_cuda_cache()
    return results


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")  # only when a model ran on torch: never import it for this
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@handles_errors
@uses(MODEL_GROUP, DECODE, ENGINE, UI)
def compare(
    inputs: Annotated[List[str], typer.Argument(help="Images, folders or globs; with --dataset, one dataset.")],
    models: Annotated[str, typer.Option(
        "--models", "-M", rich_help_panel="Model", help="Comma-separated: ARCH:TAG, hf-hub:org/repo, local-dir:DIR or demo.")],
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    templates: TemplatesOpt = None,
    dataset: Annotated[bool, typer.Option(
        "--dataset", rich_help_panel="Inputs", help="INPUTS is a labelled dataset (as for `clip eval`): print accuracy per model.")] = False,
    mapping: MappingOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel=OUTPUT, help="table or json.")] = "table",
    output_path: OutputOpt = None,
    *, model, decode, engine, ui,
) -> None:
    """Compare backbones on the same images: probabilities per model, or accuracy per model."""
    check_format(fmt, ("table", "json"))
    specs = [m.strip() for m in models.split(",") if m.strip()]
    if not specs:
        raise UsageError("--models needs at least one model")
    if model.name is not None or model.pretrained is not None:
        raise UsageError("name the models with --models (ARCH:TAG,...), not --model / --pretrained")
    from ..embeddings import open_encoder
    from ..options import ScoreOptions
    from ..templates import load_template_set

    template_set = load_template_set(templates or config.default_templates())
    options = ScoreOptions(top_k=0)

    def run_models(work: Callable) -> list:
        return one_model_at_a_time(specs, lambda spec: open_encoder(replace(model, name=spec), decode, engine), ui,
                                   work)

    with ExitStack() as stack:
        stream = open_sink(stack, output_path)
        if dataset:
            failed = compare_accuracy(inputs, mapping, specs, template_set, run_models, model, fmt, stream)
        else:
            failed = compare_images(inputs, labels, labels_file, specs, template_set, options, run_models, model, fmt,
                                    stream)
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)


def compare_images(inputs, labels, labels_file, specs, template_set, options, run_models, model, fmt, stream) -> bool:
    from ..api import classify_paths, zero_shot_classifier
    from .options import Sources

    label_list = read_labels(labels, labels_file)
    paths = Sources(None, True).paths(inputs)

    def classify_with(spec, encoder, progress) -> list[dict]:
        classifier = zero_shot_classifier(encoder.model, label_list, template_set, model.cache_dir, model.use_cache)
        return list(classify_paths(encoder, classifier, paths, options, progress))

    by_path: dict[str, dict[str, list[dict]]] = {}
    errors: dict[str, str] = {}
    for spec, records in zip(specs, run_models(classify_with)):
        for record in records:
            if "error" in record:
                errors[record["path"]] = record["error"]["message"]
            else:
                by_path.setdefault(record["path"], {})[spec] = record["predictions"]
    for path, message in errors.items():
        output.error(f"{path}: {message}")
    names = [label.name for label in label_list]
    if fmt == "json":
        results = [{"path": path, "models": per_model} for path, per_model in by_path.items()]
        stream.write(json.dumps({"models": specs, "templates": template_set.name, "labels": names,
                                 "results": results}, ensure_ascii=False, indent=2) + "\n")
    else:
        console = Console(file=stream, highlight=False)
        for path, per_model in by_path.items():
            console.print(image_table(path, names, per_model))
            console.print()
    return bool(errors)


def compare_accuracy(inputs, mapping, specs, template_set, run_models, model, fmt, stream) -> bool:
    from ..api import evaluate
    from ..evaluate import load_dataset

    if len(inputs) != 1:
        raise UsageError("--dataset takes exactly one dataset (a folder of class subfolders or a manifest)")
    data = load_dataset(inputs[0], mapping)

    from ..options import LabelOptions
    from ..run import ScorerChoice

    choice = ScorerChoice(LabelOptions(tuple(data.class_names), template_set))

    def evaluate_with(spec, encoder, progress):
        return evaluate(encoder, data, [choice], model, progress)

    rows, failed = [], False
    for spec, (results, errors) in zip(specs, run_models(evaluate_with)):
        failed = failed or bool(errors)
        if results:
            rows.append({"model": spec, **results[0].metrics.as_dict()})
    if fmt == "json":
        stream.write(json.dumps({"dataset": inputs[0], "templates": template_set.name, "classes": data.class_names,
                                 "results": rows}, ensure_ascii=False, indent=2) + "\n")
    else:
        title = (f"{output.escape(inputs[0])}: {len(data.class_names)} classes, templates "
                 f"{output.escape(template_set.name)}")
        Console(file=stream, highlight=False).print(output.metrics_table(title, "model", rows, "model"))
    return failed
