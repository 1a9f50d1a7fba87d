"""`clip store info`: what an image-embedding store holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

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
             "videos": f"{facts['videos']} ({facts['video_frames']} frames)", "errors": str(facts["errors"]), "embedding": f"{facts['dim']} x {facts['dtype']}",
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
        "--repair", help="Delete damaged shards (`clip embed` then encodes their images again) and scan copies, "
        "keep one row per image where shards hold the same image twice, fix the manifest.")] = False,
) -> None:
    """Read every stored row, checking each page against its checksum, each scan copy against its shard, and
    that every image is stored once; exit 4 when something is wrong (and, with --repair, left unrepaired)."""
    from ..store import check_store

    good, problems = check_store(store, repair)
    for problem in problems:
        done = f"; {problem.repair}" if problem.repaired else ("; --repair cannot fix this" if repair else "")
        output.error(f"store {store}: {problem.what} {problem.why}{done}")
    left = [p for p in problems if not p.repaired]
    output.info(f"store {store}: {good} rows read, {len(problems)} problem(s)"
                + (f", {len(problems) - len(left)} repaired" if repair and problems else "")
                + (f"; `clip store check --repair {store}` repairs them" if left and not repair else ""))
    raise typer.Exit(StoreError.exit_code if left else 0)


@app.command("compact")
@handles_errors
def compact(
    store: Annotated[Path, typer.Argument(help="The store folder.")],
    shard_size: Annotated[Optional[int], typer.Option(
        "--shard-size", min=1, help="Rows per merged shard.", show_default=False)] = None,
) -> None:
    """Merge small shards (a store gains one per commit) into shards of up to --shard-size rows (default 4096);
    crash-safe: every image stays readable once at every moment."""
    from ..store import compact_store

    before, after = compact_store(store, shard_size)
    output.info(f"store {store}: {before} shard(s) compacted into {after}" if after < before
                else f"store {store}: {before} shard(s), nothing to compact")
