"""Rendering for people: rich tables on stdout, messages and progress on stderr."""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from typing import IO, Callable, Iterator

from rich.console import Console
from rich.table import Table

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
METRIC_COLUMNS = ("acc1", "acc5", "mean per-class recall", "images")


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


def warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False)


def info(message: str) -> None:
    err_console.print(printable(message, keep="\n\t"), markup=False, highlight=False)  # info may span lines


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# Characters a terminal acts on instead of showing: C0 and C1 controls (ESC starts a terminal command), DEL, line
# and paragraph separators, and the bidirectional controls that reorder what follows (U+202E shows "gpj.exe" as
# "exe.jpg").  A file name can hold any of them.
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_UNPRINTABLE.update({c: f"\\u{c:04x}" for c in (*_BIDI, 0x2028, 0x2029)})


def printable(text: str, keep: str = "") -> str:
    """Text as a terminal shows it literally: each control character as its escape (`\\x1b`, `\\u202e`), except
    those in `keep`."""
    table = _UNPRINTABLE if not keep else {k: v for k, v in _UNPRINTABLE.items() if chr(k) not in keep}
    return text.translate(table)


def escape(text: str) -> str:
    """Text for rich output: markup escaped and control characters shown as escapes (see printable)."""
    from rich.markup import escape as rich_escape

    return rich_escape(printable(text))


def adapt_title(rows: list[dict]) -> str:
    """' (--adapt)' for a title when adaptation ran on the results shown; '' when it did not (too few images...)."""
    return " (--adapt)" if any((row.get("adapt") or {}).get("ran") for row in rows) else ""


def plain_table(title: str | None = None, *columns: str, right: tuple[str, ...] = ()) -> Table:
    """The house table style: no outer border, title on the left; `right` columns are right-aligned."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def metrics_table(title: str, first_column: str, rows: list[dict], key: str) -> Table:
    """acc1 / acc5 / mean per-class recall per row: template sets (`clip eval`) or models (`clip compare`)."""
    from ..evaluate import percent

    table = plain_table(title, first_column, *METRIC_COLUMNS, right=METRIC_COLUMNS)
    for row in rows:
        table.add_row(escape(row[key]), percent(row["acc1"]), percent(row["acc5"]),
                      percent(row["mean_per_class_recall"]), str(row["count"]))
    return table


def print_table(table: Table, to_stdout: bool = True) -> None:
    (Console(highlight=False) if to_stdout else err_console).print(table)


def prediction_table(record: dict) -> Table:
    """An image's (or a whole video's) ranked labels; a video's title says its length and shots, and its caption
    how long each label was a shot's answer."""
    from ..paths import clock

    title = record["path"]
    if "shots" in record:
        title += f"  video {clock(record['end'])}, {record['shots']} shot{'s' if record['shots'] != 1 else ''}"
    table = plain_table(escape(title))
    if record.get("time"):
        table.caption = escape(" · ".join(f"{label} {clock(s)}" for label, s in record["time"].items()))
        table.caption_justify = "left"
    table.add_column("#", justify="right", style="dim")
    table.add_column("label")
    table.add_column("probability", justify="right")
    table.add_column("", min_width=20)
    for rank, prediction in enumerate(record["predictions"], start=1):
        score = prediction["score"]
        bar = "█" * round(score * 20)
        table.add_row(str(rank), escape(prediction["label"]), f"{score:.4f}", f"[green]{bar}[/]")
    return table


def shots_table(shots: list[dict]) -> Table:
    """A video's shots, one row each: its times and its best label."""
    from ..paths import clock

    table = plain_table(None, "shot", "time", "label", "probability", right=("shot", "probability"))
    table.add_column("", min_width=20)
    for shot in shots:
        best = shot["predictions"][0]
        table.add_row(str(shot["shot"]), f"{clock(shot['start'])}-{clock(shot['end'])}", escape(best["label"]),
                      f"{best['score']:.4f}", f"[green]{'█' * round(best['score'] * 20)}[/]")
    return table


def console_for(stream: IO[str]) -> Console:
    """A console for tables on stdout (the terminal's width) or in a file (100 columns)."""
    return Console(file=stream, highlight=False, soft_wrap=False, width=None if stream is sys.stdout else 100)


class TableWriter:
    """Writes each record as a rich table; error records go to stderr only."""

    def __init__(self, stream: IO[str]) -> None:
        self.console = console_for(stream)
        self.shots: list[dict] = []  # a video's shots, shown together once the last is in
        self.expected = 0

    def write(self, record: dict) -> None:
        if "error" in record:
            return
        if "shot" in record:
            self.shots.append(record)
            if len(self.shots) == self.expected:
                self.console.print(shots_table(self.shots))
                self.console.print()
            return
        self.shots, self.expected = [], record.get("shots", 0)
        self.console.print(prediction_table(record))
        self.console.print()

    def close(self) -> None:
        self.console.file.flush()


@contextmanager
def progress_bar(description: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on stderr (count, rate, ETA), or a no-op callback."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err_console,
                  transient=True) as progress:
        task = progress.add_task(description, total=None, rate="")

        def update(done: int, total: int) -> None:
            elapsed = progress.tasks[0].elapsed or 0
            rate = f"{done / elapsed:.1f}/s" if elapsed > 0 else ""
            progress.update(task, completed=done, total=total, rate=rate)

        yield update


def progress_enabled(quiet: bool) -> bool:
    return not quiet and err_console.is_terminal


@contextmanager
def stage_bars(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A library run's `progress(stage, done, total)` as one transient bar per stage, each closed when the next
    stage starts (or on the way out)."""
    with ExitStack() as stack:
        shown: dict = {"stage": None, "update": None}

        def update(stage: str, done: int, total: int) -> None:
            if stage != shown["stage"]:
                stack.close()
                shown.update(stage=stage, update=stack.enter_context(progress_bar(stage, enabled)))
            shown["update"](done, total)

        yield update
