"""`clip store info`: what an image-embedding store holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from typing_extensions import Annotated

from ..errors import StoreError
from . import output
from .common import handles_errors

app = typer.Typer(help="Inspect an image-embedding store (made by `clip embed`).", no_args_is_help=True)


@app.command("info")
@handles_errors
def info(
    store: Annotated[Path, typer.Argument(help="The store folder.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """Model, number of images and errors, size on disk, last update."""
    from ..store import open_store
    from .options import check_choice

    check_choice("--format", fmt, ("table", "json"))
    facts = open_store(store).info()
    if fmt == "json":
        print(json.dumps(facts, indent=2))
        return
    table = output.plain_table(None, "", "")
    table.show_header = False
    shown = {"store": facts["store"], "model": facts["model"], "images": str(facts["images"]),
             "errors": str(facts["errors"]), "embedding": f"{facts['dim']} x {facts['dtype']}",
             "shards": str(facts["shards"]), "size on disk": output.human_size(facts["size_bytes"]),
             "created": facts["created"], "updated": facts["updated"]}
    for key, value in shown.items():
        table.add_row(key, output.escape(str(value)))
    Console(highlight=False).print(table)


@app.command("check")
@handles_errors
def check(
    store: Annotated[Path, typer.Argument(help="The store folder.")],
    repair: Annotated[bool, typer.Option(
        "--repair", help="Delete damaged shards (`clip embed` then encodes their images again).")] = False,
) -> None:
    """Read every stored row, checking each page against its checksum; exit 4 when a shard is damaged."""
    from ..store import check_store

    good, damaged = check_store(store, repair)
    for name, why in damaged:
        what = name if name.startswith("_scan/") else f"shard {name}"
        output.error(f"store {store}: {what} is damaged ({why})" + ("; removed" if repair else ""))
    output.info(f"store {store}: {good} rows read, {len(damaged)} damaged shard(s)"
                + ("" if not damaged or repair else f"; `clip store check --repair {store}` removes them"))
    raise typer.Exit(StoreError.exit_code if damaged and not repair else 0)
