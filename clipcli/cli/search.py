"""`clip search` and `clip dupes`: parse options, call the library (`clipcli.search`), render."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..options import DUPE_THRESHOLD
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors
from .options import (DECODE, ENGINE, INPUTS, LABELS, MODEL_GROUP, OUTPUT, SOURCES, UI, OutputOpt, StoreOpt,
                      check_format, check_outputs, open_sink, uses)

REPORT_HITS = 500  # thumbnails in a --report page at most (each is an image decoded)
SEARCH_TEMPLATES = "simple"  # as good as the 80 templates and the raw query, one prompt: bench/bench_search.py
ReportOpt = Annotated[Optional[Path], typer.Option(
    "--report", rich_help_panel=OUTPUT, show_default=False, metavar="FILE",
    help="Also write a self-contained HTML page with thumbnails.")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", rich_help_panel=OUTPUT, help="table, json, jsonl or csv.")]


def _inputs(sources, inputs: list[str] | None, store: Path | None) -> list[str]:
    if inputs or sources.files_from is not None or store is None:
        return sources.paths(inputs)
    return []


def _errors(found) -> list[dict]:
    """The inputs that could not be read, for a JSON document."""
    return [{"path": path, "error": message} for path, message in found.errors or []]


def _report_errors(found) -> None:
    for path, message in found.errors or []:
        output.error(f"{path}: {message}")


@handles_errors
@uses(SOURCES, MODEL_GROUP, DECODE, ENGINE, UI)
def search(
    query: Annotated[Optional[str], typer.Argument(
        help="What to find, in words (put through the prompt templates, like a label).", metavar="QUERY",
        show_default=False)] = None,
    inputs: Annotated[Optional[List[str]], typer.Option(
        "--in", "-i", rich_help_panel=INPUTS, metavar="PATH", show_default=False,
        help="Search these images and videos (files, folders, globs; repeatable) instead of the whole store; with "
        "--store they are encoded once into it.")] = None,
    like: Annotated[Optional[List[str]], typer.Option(
        "--like", rich_help_panel=INPUTS, metavar="IMAGE", show_default=False,
        help="Find images like this one (a file, or a path in the store; repeatable; with a text query, both "
        "count equally).")] = None,
    store: StoreOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=0, rich_help_panel=OUTPUT,
                                       help="How many results to list: photos and video moments (0: all).")] = 10,
    min_score: Annotated[Optional[float], typer.Option(
        "--min-score", rich_help_panel=OUTPUT, show_default=False, metavar="COSINE",
        help="List only images (and video frames) at least this similar (cosine, -1 to 1).")] = None,
    templates: Annotated[str, typer.Option(
        "--templates", "-t", rich_help_panel=LABELS, metavar="NAME|FILE",
        help="Prompt templates the query goes through (`raw`: the query as typed).")] = SEARCH_TEMPLATES,
    cut: Annotated[Optional[Path], typer.Option(
        "--cut", rich_help_panel=OUTPUT, metavar="DIR", show_default=False,
        help="Also write each listed video moment as its own clip into DIR (video_0m12s-0m18s.mp4, the source's "
        "container), copied without re-encoding: so a clip starts at the keyframe at or before the moment, up "
        "to a keyframe interval early.  Existing files are never replaced (a taken name gets -2, -3, ...).")] = None,
    fmt: FormatOpt = "table",
    output_path: OutputOpt = None,
    report: ReportOpt = None,
    *, sources, model, decode, engine, ui,
) -> None:
    """Find images and video moments by a text query or an example image (or both), in a store or in folders.

    A video's matching frames are merged into moments (start-end, scored by their best frame); -k counts
    photos and moments."""
    from ..search import search_job

    check_format(fmt)
    paths = _inputs(sources, inputs, store)
    check_outputs(files={"--output": output_path, "--report": report},
                  folders={**({"--store": store} if paths else {}), **({"--cut": cut} if cut is not None else {})})
    with output.progress_bar("searching", ui.progress) as progress:
        found = search_job(query, like or (), templates, store, paths, model, decode, engine, top_k, min_score,
                           progress)
    _report_errors(found)
    header = {"query": {"text": query, "like": list(like or []), "templates": templates}, "model": found.model,
              "searched": found.searched, **({"store": str(store)} if store is not None else {}),
              "errors": _errors(found)}
    records = [{"rank": rank, **hit.record()} for rank, hit in enumerate(found.hits, start=1)]
    with ExitStack() as stack:
        stream = open_sink(stack, output_path)
        if fmt == "table":
            table = output.plain_table(None, "#", "score", "path", right=("#", "score"))
            for record in records:
                table.add_row(str(record["rank"]), f"{record['score']:.4f}",
                              output.escape(record["path"]) + (f"  {_span(record)}" if "start" in record else ""))
            output.console_for(stream).print(table)
        else:
            moments = ("start", "end", "best") if any("start" in record for record in records) else ()
            _write_flat(fmt, stream, header, records, ("rank", "path", "score", *moments))
    failed = bool(found.errors)
    if cut is not None:
        failed = _cut(found.hits, cut, ui) or failed
    if report is not None:
        from ..report import render_search
        from ..results import atomic_output

        title = "clip search: " + " + ".join([repr(query)] * bool(query) + [f"like {p}" for p in like or []])
        shown = records[:REPORT_HITS]
        facts = {"model": found.model["name"], "searched": found.searched,
                 **({"shown": f"the best {REPORT_HITS} of {len(records)}"} if len(records) > REPORT_HITS else {})}
        with atomic_output(report) as handle:
            handle.write(render_search(title, facts, shown))
        output.info(f"report written to {report}")
    raise typer.Exit(EXIT_SOME_FAILED if failed else EXIT_OK)




def _span(record: dict) -> str:
    """A moment's time as shown: 0:12-0:18 (its start rounded down, its end up)."""
    import math

    from ..paths import clock

    return f"{clock(math.floor(record['start']))}-{clock(math.ceil(record['end'] - 1e-6))}"


def _cut(hits, into: Path, ui) -> bool:
    """Write each moment among the hits into its own clip; True when one could not be cut (said on stderr)."""
    from ..errors import ClipCliError
    from ..moments import Moment, cut_moment

    moments = [hit for hit in hits if isinstance(hit, Moment)]
    failed, early = False, 0.0
    for moment in moments:
        try:
            made = cut_moment(moment, into)
        except ClipCliError as exc:
            if getattr(exc, "exit_code", 1) != 1:  # a write error stops the run (WriteError: its own exit code)
                raise
            output.error(f"--cut: {exc}")
            failed = True
            continue
        early = max(early, made.early)
        if not ui.quiet:
            output.info(f"cut {made.path} ({made.start:.3f}-{made.end:.3f} s of {moment.path})")
    if not ui.quiet:
        output.info(f"{len(moments)} moment(s) cut into {into}" + (
            f" (cut at keyframes: starts up to {early:.2f} s early)" if early > 0 else " (cut at keyframes)"))
    return failed


@handles_errors
@uses(SOURCES, MODEL_GROUP, DECODE, ENGINE, UI)
def dupes(
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="Image and video files, folders and globs; with --store and no inputs: every stored image and video.",
        show_default=False)] = None,
    store: StoreOpt = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", rich_help_panel=OUTPUT, metavar="COSINE", show_default=False,
        help=f"Embedding cosine from which two images count as copies (default {DUPE_THRESHOLD}, from 0.5 to 1; "
        "lower finds more).")] = None,
    fmt: FormatOpt = "table",
    output_path: OutputOpt = None,
    report: ReportOpt = None,
    *, sources, model, decode, engine, ui,
) -> None:
    """List groups of near-duplicate images (resized, recompressed, lightly cropped copies) and videos
    (re-encoded copies: compared as whole videos, never frame by frame); deletes nothing."""
    from ..search import dupes_job

    check_format(fmt)
    if threshold is not None and not 0.5 <= threshold <= 1.0:
        from ..errors import UsageError

        raise UsageError(f"--threshold {threshold}: use a cosine from 0.5 to 1 (default {DUPE_THRESHOLD}); below "
                         "0.5 nearly every pair would be compared as copies")
    threshold = DUPE_THRESHOLD if threshold is None else threshold
    paths = _inputs(sources, inputs, store)
    check_outputs(files={"--output": output_path, "--report": report}, folders={"--store": store} if paths else {})
    with output.progress_bar("encoding images", ui.progress) as progress:
        found = dupes_job(store, paths, model, decode, engine, threshold, progress)
    _report_errors(found)
    header = {"model": found.model, "threshold": threshold, "searched": found.searched,
              **({"store": str(store)} if store is not None else {}), "errors": _errors(found)}
    records = [{"group": number, "path": copy.path, "keep": index == 0, "similarity": copy.similarity,
                "width": copy.width, "height": copy.height, "bytes": copy.bytes}
               for number, group in enumerate(found.groups, start=1) for index, copy in enumerate(group)]
    with ExitStack() as stack:
        stream = open_sink(stack, output_path)
        if fmt == "table":
            table = output.plain_table(None, "group", "similarity", "size", "path", right=("group", "similarity"))
            for record in records:
                size = f"{record['width']}x{record['height']}" if record["width"] else ""
                table.add_row(str(record["group"]) if record["keep"] else "", f"{record['similarity']:.4f}", size,
                              output.escape(record["path"]) + ("  [dim](best copy)[/]" if record["keep"] else ""))
            output.console_for(stream).print(table)
        elif fmt == "jsonl":  # one group per line
            from ..results import JsonLinesWriter

            writer = JsonLinesWriter(stream)
            for number, group in enumerate(found.groups, start=1):
                writer.write({"group": number, "images": [r for r in records if r["group"] == number]})
            writer.close()
        else:
            _write_flat(fmt, stream, header, records, ("group", "path", "keep", "similarity", "width", "height",
                                                       "bytes"))
    if not ui.quiet:
        copies = sum(len(group) - 1 for group in found.groups)
        among = (f"{found.searched} images" if not found.videos else
                 f"{found.searched - found.videos} images and {found.videos} videos")
        output.info(f"{len(found.groups)} group(s) of near-duplicates, {copies} extra copies, among {among} "
                    f"(threshold {threshold})")
    if report is not None:
        from ..report import render_dupes
        from ..results import atomic_output

        with atomic_output(report) as handle:
            handle.write(render_dupes("clip dupes", {"model": found.model["name"], "threshold": threshold,
                                                     "searched": found.searched}, found.groups))
        output.info(f"report written to {report}")
    raise typer.Exit(EXIT_SOME_FAILED if found.errors else EXIT_OK)


def _write_flat(fmt: str, stream, header: dict, records: list[dict], columns: tuple[str, ...]) -> None:
    if fmt == "json":
        stream.write(json.dumps({**header, "results": records}, ensure_ascii=False, indent=2) + "\n")
        return
    from ..results import DictCsvWriter, JsonLinesWriter

    writer = JsonLinesWriter(stream) if fmt == "jsonl" else DictCsvWriter(stream, columns)
    for record in records:
        writer.write(record)
    writer.close()
