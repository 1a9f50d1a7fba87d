"""The `clip` command.  Only parsing and rendering live here; heavy imports wait inside commands."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperCommand, TyperGroup

from . import cache, classify, compare, embed, evaluate, fit, models, search, serve, sort, store, tag, templates

EXIT_PARSE = 2
# The parser's own exceptions (Typer vendors click in newer versions: take them from Typer itself).
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def metavar(param, ctx=None) -> str | None:
    """What help shows after an option: nothing for a flag, the option's own metavar, or a plain word for its type
    (PATH, N, X, TEXT; ... when repeated) instead of the `<list[str]>` style of newer Typers."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    if param.metavar and getattr(param, "param_type_name", "") == "option":
        return param.metavar
    shown = (type(param).display_type_rich(param, ctx) or "").lower()
    word = next((w for key, w in (("path", "PATH"), ("int", "N"), ("float", "X"), ("bool", None)) if key in shown),
                "TEXT")
    if word and ("list" in shown or getattr(param, "nargs", 1) != 1 or getattr(param, "multiple", False)):
        word += "..."
    return word


class Readable:
    """Help with readable metavars; parse errors as one `error: ...` line (exit 2) like every other error."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            param.display_type_rich = lambda ctx=None, param=param: metavar(param, ctx)
        return params

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from . import output

        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
            code = code if isinstance(code, int) else 0
        except UsageError as exc:
            message = " ".join(exc.format_message().split()).rstrip(".")
            if message:  # (no message: a group called with no arguments, whose help is already printed)
                where = exc.ctx.command_path if exc.ctx is not None else "clip"
                output.error(f"{message[:1].lower()}{message[1:]} (see `{where} --help`)")
            code = EXIT_PARSE
        except ClickException as exc:
            output.error(" ".join(exc.format_message().split()))
            code = exc.exit_code
        except typer.Abort:
            output.info("interrupted")
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


class CommandGroup(Readable, TyperGroup):
    pass


class Command(Readable, TyperCommand):
    pass


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"clip {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="clip",
    cls=CommandGroup,
    help="Zero-shot image classification with CLIP models: label images with words you choose, no training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
)


@app.callback()
def root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                      help="Print clipcli's version and exit.")) -> None:
    """Zero-shot image classification with CLIP models: label images with words you choose, no training."""


EXAMPLES = {
    "classify": "clip classify photos/ -l 'cat,dog' -f jsonl",
    "embed": "clip embed photos/ --store photos.store",
    "eval": "clip eval dataset/ --templates imagenet,simple --report report.html",
    "fit": "clip fit train/ --shots 4 -o head.safetensors",
    "sort": "clip sort inbox/ -l 'cat,dog' --into sorted/ --dry-run",
    "tag": "clip tag photos/ -l 'cat,dog,beach' --dry-run",
    "compare": "clip compare img.jpg --models ViT-B-32:openai,demo -l 'cat,dog'",
    "models": "clip models vit-b --cached",
    "templates": "clip templates food",
    "search": "clip search 'a red bicycle' --store photos.store -k 20",
    "dupes": "clip dupes --store photos.store -f csv -o dupes.csv",
    "serve": "clip serve --model demo --port 8000",
}
for name, command in (("classify", classify.classify), ("embed", embed.embed), ("eval", evaluate.evaluate),
                      ("fit", fit.fit), ("sort", sort.sort), ("tag", tag.tag), ("compare", compare.compare),
                      ("search", search.search), ("dupes", search.dupes), ("models", models.models),
                      ("templates", templates.templates), ("serve", serve.serve)):
    app.command(name, cls=Command, epilog=f"Example: {EXAMPLES[name]}")(command)
for name, group in (("cache", cache.app), ("store", store.app)):
    group.info.cls = CommandGroup
    for info in group.registered_commands:
        info.cls = Command
    app.add_typer(group, name=name)


def main() -> None:
    app()


def run() -> None:
    """The `clip` command: main(), then os._exit once the command is done.  The atexit handlers run (Ray's
    shutdown among them) and the standard streams are flushed, but the interpreter's teardown of numpy and
    ONNX Runtime, 0.1-0.2 s of a one-image run, is skipped; every file is closed and renamed into place
    inside the command."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    _quick_exit(code)


def _quick_exit(code) -> None:
    import atexit
    import os

    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away: nothing more to say
            pass
    os._exit(code or 0)
