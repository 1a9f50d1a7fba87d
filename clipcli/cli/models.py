"""`clip models`: the architectures and pretrained tags open_clip knows, and which are cached here."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from .. import config
from . import output
from .common import handles_errors
from .options import WeightsDirOpt


@handles_errors
def models(
    filter_text: Annotated[Optional[str], typer.Argument(
        help="Only names containing this text (case-insensitive), e.g. vit-b.", show_default=False)] = None,
    cached: Annotated[bool, typer.Option("--cached", help="Only models whose weights are in the local cache.")] = False,
    weights_dir: WeightsDirOpt = None,
) -> None:
    """List pretrained models (architecture and tag); no model is built."""
    from ..models import list_pretrained

    rows = list_pretrained(filter_text, config.weights_dir(weights_dir))
    if cached:
        rows = [row for row in rows if row["cached"]]
    table = output.plain_table(None, "architecture", "pretrained", "cached")
    for row in rows:
        table.add_row(output.escape(row["architecture"]), output.escape(row["pretrained"]), "yes" if row["cached"] else "")
    Console(highlight=False).print(table)
    output.info(f"{len(rows)} model(s); use one as --model ARCH --pretrained TAG, or --model ARCH:TAG")
