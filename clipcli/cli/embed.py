"""`clip embed`: encode images once into an image-embedding store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .. import config
from . import output
from .classify import store_summary
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors
from .options import DECODE, ENGINE, MODEL_GROUP, SOURCES, STORE, UI, check_choice, check_outputs, uses


@handles_errors
@uses(SOURCES, MODEL_GROUP, DECODE, ENGINE, UI)
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
        help="Rows per committed shard (a run also commits every 30 s).")] = config.DEFAULT_SHARD_ROWS,
    *, sources, model, decode, engine, ui,
) -> None:
    """Encode images once into an embedding store; later classify/eval runs with --store reuse them."""
    from ..embeddings import open_encoder

    if dtype is not None:
        check_choice("--dtype", dtype, ("float16", "float32"))
    paths = sources.paths(inputs) if (inputs or sources.files_from is not None or not prune) else []
    check_outputs(folders={"--store": store})
    with open_encoder(model, decode, engine, store, dtype, shard_size) as encoder:
        if paths:
            with output.progress_bar("encoding images", ui.progress) as progress:
                encoder.sync(paths, progress)
        if prune:
            encoder.report.pruned = encoder.store.prune()
    report = encoder.report
    for path, message in report.errors:
        output.error(f"{path}: {message}")
    output.info(store_summary(report, store))
    raise typer.Exit(EXIT_SOME_FAILED if report.failed else EXIT_OK)
