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
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors, setup_reporting
from .options import (BackendOpt, BatchOpt, CacheDirOpt, DeviceOpt, EngineOpt, GpusPerWorkerOpt, HeadOpt, ModelOpt,
                      NoCacheOpt, OutputOpt, PrecisionOpt, PretrainedOpt, QuietOpt, RayAddressOpt, StoreOpt, VerboseOpt,
                      WeightsDirOpt, WorkersOpt, check_choice, check_head_against, check_outputs, engine_options,
                      load_model_from_options, open_sink, read_head)

MappingOpt = Annotated[Optional[str], typer.Option(
    "--mapping", help="Folder or manifest name -> label text (.yaml/.json mapping, or .csv name,label).",
    show_default=False)]


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
             "mistakes": r.mistakes} for r in results]


@handles_errors
def evaluate(
    dataset: Annotated[str, typer.Argument(help="A folder of class subfolders, or a .csv/.jsonl manifest (path,label).")],
    templates: Annotated[Optional[str], typer.Option(
        "--templates", "-t", help="Template set(s), comma-separated, evaluated side by side. "
        f"Default: {config.DEFAULT_TEMPLATES}.", show_default=False)] = None,
    mapping: MappingOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Write a self-contained HTML report (heatmap, confident mistakes).", show_default=False)
    ] = None,
    output_path: OutputOpt = None,
    store: StoreOpt = None,
    head: HeadOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    backend: BackendOpt = None,
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    weights_dir: WeightsDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Measure zero-shot accuracy on a labelled dataset (metrics as in CLIP_benchmark)."""
    setup_reporting(verbose)
    check_choice("--format", fmt, ("table", "json"))
    from ..evaluate import load_dataset
    from ..templates import load_template_set

    check_outputs(files={"--output": output_path, "--report": report}, folders={"--store": store})
    data = load_dataset(dataset, mapping)
    names = [n.strip() for n in (templates or config.default_templates()).split(",") if n.strip()]
    template_sets = [load_template_set(name) for name in names]

    from ..api import RunOptions
    from ..api import evaluate as run_evaluation

    options = RunOptions(batch_size=batch_size, workers=workers,
                         **engine_options(engine, ray_address, gpus_per_worker))
    head_model = read_head(head, None, None)
    loaded = load_model_from_options(model, pretrained, device, precision, weights_dir, store, backend, cache_dir)
    if head_model is not None:
        check_head_against(head_model, head, loaded)
    with ExitStack() as stack:
        writer = None
        if store is not None:
            from ..embeddings import open_store_writer

            writer = stack.enter_context(open_store_writer(store, loaded))
        with output.progress_bar("encoding images", output.progress_enabled(quiet)) as progress:
            results, errors = run_evaluation(loaded, data, template_sets, options, cache_dir, not no_cache, progress,
                                             store=writer, head=head_model)
    for error in errors:
        output.error(f"{error['path']}: {error['error']['message']}")
    if not results:
        output.error("no image in the dataset could be read")
        raise typer.Exit(EXIT_SOME_FAILED)
    rows = result_dicts(results)
    header = {"model": loaded.describe(), "dataset": dataset, "classes": data.class_names}
    with ExitStack() as stack:
        stream = open_sink(stack, output_path)
        if fmt == "json":
            stream.write(json.dumps({**header, "errors": errors, "results": rows}, ensure_ascii=False, indent=2) + "\n")
        else:
            console = Console(file=stream, highlight=False)
            console.print(output.metrics_table(f"{output.escape(dataset)}: {len(data.class_names)} classes",
                                               "templates", rows, "templates"))
            if len(data.class_names) <= 60:
                console.print()
                console.print(per_class_table(rows[0]))
    if report is not None:
        from ..report import render_report
        from ..results import atomic_output

        with atomic_output(report) as handle:
            handle.write(render_report(f"clip eval: {dataset}", {"model": header["model"]["name"],
                                       **({"pretrained": loaded.spec.pretrained} if loaded.spec.pretrained else {}),
                                       "images": rows[0]["count"]},
                                       rows, data.class_names))
        output.info(f"report written to {report}")
    raise typer.Exit(EXIT_SOME_FAILED if errors else EXIT_OK)
