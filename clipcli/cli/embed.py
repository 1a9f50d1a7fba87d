"""`clip embed`: encode images once into an image-embedding store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .. import config
from . import output
from .classify import store_summary
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors, setup_reporting
from .options import (STORE, BackendOpt, BatchOpt, DeviceOpt, EngineOpt, FilesFromOpt, GpusPerWorkerOpt,
                      MaxMegapixelsOpt, ModelOpt, PrecisionOpt, PretrainedOpt, QuietOpt, RayAddressOpt, RecursiveOpt,
                      ReducedDecodeOpt, VerboseOpt, WeightsDirOpt, WorkersOpt, check_choice, check_outputs,
                      engine_options, gather_inputs, load_model_from_options)


@handles_errors
def embed(
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="Image files, folders (recursed) and glob patterns.", show_default=False)] = None,
    store: Annotated[Path, typer.Option(
        "--store", "-s", rich_help_panel=STORE, help="The store folder (created if missing).")] = ...,
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", rich_help_panel=STORE, help="float16 (half the disk, probabilities within 2e-3) or float32. "
        "Default: the store's, float16 for a new store.", show_default=False)] = None,
    prune: Annotated[bool, typer.Option(
        "--prune", rich_help_panel=STORE, help="Remove stored rows whose files no longer exist.")] = False,
    shard_size: Annotated[int, typer.Option(
        "--shard-size", min=1, rich_help_panel=STORE,
        help="Rows per committed shard (a run also commits every 30 s).")] = 4096,
    files_from: FilesFromOpt = None,
    recursive: RecursiveOpt = True,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    backend: BackendOpt = None,
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    max_megapixels: MaxMegapixelsOpt = config.DEFAULT_MAX_MEGAPIXELS,
    reduced_decode: ReducedDecodeOpt = False,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    weights_dir: WeightsDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Encode images once into an embedding store; later classify/eval runs with --store reuse them."""
    setup_reporting(verbose)
    if dtype is not None:
        check_choice("--dtype", dtype, ("float16", "float32"))
    paths = gather_inputs(inputs, files_from, recursive) if (inputs or files_from is not None or not prune) else []
    check_outputs(folders={"--store": store})

    from ..embeddings import SyncReport, open_store_writer, prune_store, sync_store
    from ..pipeline import RunOptions

    options = RunOptions(batch_size=batch_size, workers=workers, max_megapixels=max_megapixels,
                         reduced_decode=reduced_decode,
                         **engine_options(engine, ray_address, gpus_per_worker))
    loaded = load_model_from_options(model, pretrained, device, precision, weights_dir, store, backend, None)
    report = SyncReport()
    with open_store_writer(store, loaded, dtype, shard_size) as writer:
        if paths:
            with output.progress_bar("encoding images", output.progress_enabled(quiet)) as progress:
                report = sync_store(loaded, writer, paths, options, progress)
        if prune:
            report.pruned = prune_store(writer)
    for path, message in report.errors:
        output.error(f"{path}: {message}")
    output.info(store_summary(report, store))
    raise typer.Exit(EXIT_SOME_FAILED if report.failed else EXIT_OK)
