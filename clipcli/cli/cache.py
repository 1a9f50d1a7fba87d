"""`clip cache info` and `clip cache clear`: the on-disk class-embedding cache."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from .. import config
from . import output
from .common import handles_errors
from .options import CacheDirOpt

app = typer.Typer(help="Inspect or clear the cache: class embeddings and ONNX exports of models.", no_args_is_help=True)


@app.command("info")
@handles_errors
def info(cache_dir: CacheDirOpt = None) -> None:
    """Where the cache is, its size, and its entries by model."""
    from ..cache import cache_summary, export_summary

    root = config.cache_dir(cache_dir)
    rows = cache_summary(root)
    exports, export_bytes = export_summary(root)
    console = Console(highlight=False)
    console.print(f"location: {root}")
    console.print(f"size: {output.human_size(sum(r.size_bytes for r in rows))} in {sum(r.entries for r in rows)} entries")
    console.print(f"ONNX exports: {exports} model(s), {output.human_size(export_bytes)}")
    if rows:
        table = output.plain_table(None, "model", "entries", "size", "key", right=("entries", "size"))
        for row in rows:
            table.add_row(output.escape(row.name), str(row.entries), output.human_size(row.size_bytes), row.key)
        console.print(table)


@app.command("clear")
@handles_errors
def clear(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Only models whose name contains this text.", show_default=False)] = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Delete cached class embeddings and ONNX exports (all, or one model's)."""
    from ..cache import clear_cache, clear_exports

    root = config.cache_dir(cache_dir)
    removed = clear_cache(root, model)
    exports = clear_exports(root, model)
    output.info(f"removed cached embeddings of {removed} model(s) and {exports} ONNX export(s) from {root}")
