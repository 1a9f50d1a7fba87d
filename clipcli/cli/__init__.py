"""The `clip` command.  Only parsing and rendering live here; heavy imports wait inside commands."""

from __future__ import annotations

import typer

from . import cache, classify, compare, embed, evaluate, fit, models, sort, store, templates

app = typer.Typer(
    name="clip",
    help="Zero-shot image classification with CLIP models: label images with words you choose, no training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("classify")(classify.classify)
app.command("embed")(embed.embed)
app.command("eval")(evaluate.evaluate)
app.command("fit")(fit.fit)
app.command("compare")(compare.compare)
app.command("sort")(sort.sort)
app.command("models")(models.models)
app.command("templates")(templates.templates)
app.add_typer(cache.app, name="cache")
app.add_typer(store.app, name="store")


def main() -> None:
    app()
