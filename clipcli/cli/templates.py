"""`clip templates [NAME]`: list the bundled prompt-template sets, or show one."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from . import output
from .common import handles_errors


@handles_errors
def templates(
    name: Annotated[Optional[str], typer.Argument(
        help="A set's name or a YAML file, to show its templates.", show_default=False)] = None,
) -> None:
    """List prompt-template sets, or show the templates of one."""
    from ..templates import list_template_sets, load_template_set

    console = Console(highlight=False)
    if name is None:
        table = output.plain_table(None, "name", "templates", "language", "description", right=("templates",))
        for template_set in list_template_sets():
            table.add_row(template_set.name, str(len(template_set.templates)), template_set.language or "-",
                          output.escape(template_set.description))
        console.print(table)
        return
    template_set = load_template_set(name)
    console.print(f"[bold]{output.escape(template_set.name)}[/]: {output.escape(template_set.description)}")
    if template_set.language:
        console.print(f"language: {output.escape(template_set.language)}", style="dim")
    if template_set.source:
        console.print(f"source: {output.escape(template_set.source)}", style="dim")
    for template in template_set.templates:
        console.print(f"  {output.escape(template)}")
