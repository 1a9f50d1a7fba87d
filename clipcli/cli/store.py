"""`clip store info`: what an image-embedding store holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from typing_extensions import Annotated

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
