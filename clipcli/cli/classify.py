"""`clip classify`: parse options, wire the library together, render the records."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .. import config
from ..errors import InputError, LabelError, UsageError
from ..results import FORMATS
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors, setup_reporting

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Architecture (ViT-B-32), ARCH:TAG, hf-hub:org/repo, local-dir:DIR, or 'demo'. "
    f"Default: ${config.ENV_MODEL} or {config.DEFAULT_MODEL}.", show_default=False)]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", "-p", help="Pretrained tag (see `clip models`) or a checkpoint file. "
    f"Default: ${config.ENV_PRETRAINED}, or {config.DEFAULT_PRETRAINED} for the default model.",
    show_default=False)]
TemplatesOpt = Annotated[Optional[str], typer.Option(
    "--templates", "-t", help=f"Template set name (`clip templates`) or a YAML file. Default: "
    f"${config.ENV_TEMPLATES} or {config.DEFAULT_TEMPLATES}.", show_default=False)]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help=f"auto, cpu, cuda, cuda:N or mps (auto: cuda, then mps, then cpu). Default: ${config.ENV_DEVICE} "
    "or auto.", show_default=False)]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", "-j", min=0, help="Decoding processes (0: decode in the main process). Default: cores - 1.",
    show_default=False)]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help=f"Embedding cache folder. Default: ${config.ENV_CACHE_DIR} or the user cache dir.",
    show_default=False)]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write cached class embeddings.")]
WeightsDirOpt = Annotated[Optional[str], typer.Option(
    "--weights-dir", help=f"Where model weights are downloaded. Default: ${config.ENV_WEIGHTS_DIR} or the "
    "Hugging Face cache.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show library log messages on stderr.")]


def read_labels(labels: str | None, labels_file: Path | None):
    from ..labels import load_labels_file, parse_labels, require_labels

    if labels is not None and labels_file is not None:
        raise LabelError("give either --labels or --labels-file, not both")
    if labels_file is not None:
        return require_labels(load_labels_file(labels_file))
    return require_labels(parse_labels(labels or ""))


def gather_inputs(inputs: list[str] | None, files_from: str | None, recursive: bool) -> list[str]:
    from ..images import discover, read_path_list

    named = list(inputs or [])
    if files_from is not None:
        named += read_path_list(files_from)
    if not named:
        raise InputError("no images given; name files or folders, or use --files-from FILE (- for stdin)")
    paths = discover(named, recursive=recursive)
    if not paths:
        raise InputError(f"no images found in {', '.join(named[:3])}{' ...' if len(named) > 3 else ''}")
    return paths


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def open_sink(stack: ExitStack, output_path: Path | None):
    from ..results import atomic_output

    if output_path is None:
        return sys.stdout
    return stack.enter_context(atomic_output(output_path))


def make_record_writer(fmt: str, stream, header: dict):
    from ..results import make_writer

    if fmt == "table":
        return output.TableWriter(stream)
    return make_writer(fmt, stream, header)


@handles_errors
def classify(
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="Image files, folders (recursed) and glob patterns.", show_default=False)] = None,
    labels: Annotated[Optional[str], typer.Option(
        "--labels", "-l", help='Comma-separated labels; quote a label with commas: \'cat,"dog, small"\'.',
        show_default=False)] = None,
    labels_file: Annotated[Optional[Path], typer.Option(
        "--labels-file", "-L", help=".txt (one per line, # comments) or .yaml (a list, or label: [synonyms]).",
        show_default=False)] = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json, jsonl or csv.")] = "table",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=0, help="Predictions per image (0: all labels).")] = 5,
    output_path: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write results to FILE (atomically) instead of stdout.", show_default=False)] = None,
    files_from: Annotated[Optional[str], typer.Option(
        "--files-from", help="Read image paths from FILE, one per line (- for stdin).", show_default=False)] = None,
    recursive: Annotated[bool, typer.Option(help="Recurse into folders.")] = True,
    score: Annotated[str, typer.Option(
        "--score", help="softmax (probabilities over the labels) or sigmoid (independent, SigLIP models).")
    ] = "softmax",
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    max_megapixels: Annotated[float, typer.Option(
        "--max-megapixels", help="Refuse larger images (decompression bombs).")] = config.DEFAULT_MAX_MEGAPIXELS,
    reduced_decode: Annotated[bool, typer.Option(
        "--reduced-decode/--full-decode", help="Decode JPEGs at reduced size, never below the model's input size.")
    ] = True,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    weights_dir: WeightsDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Classify images into the labels you give (zero-shot, with a CLIP model)."""
    setup_reporting(verbose)
    check_format(fmt)
    label_list = read_labels(labels, labels_file)
    paths = gather_inputs(inputs, files_from, recursive)

    from ..api import RunOptions, classify_paths, prepare_classifier
    from ..models import load_model
    from ..templates import load_template_set

    template_set = load_template_set(templates or config.default_templates())
    model_name = model or config.default_model()
    loaded = load_model(model_name, pretrained or config.default_pretrained(model_name),
                        device=device or config.default_device(), precision=precision, weights_dir=weights_dir)
    show_progress = output.progress_enabled(quiet)
    with output.progress_bar("encoding labels", show_progress) as progress:
        classifier = prepare_classifier(loaded, label_list, template_set, cache_dir, not no_cache, progress)
    options = RunOptions(batch_size=batch_size, workers=workers, top_k=top_k, score=score,
                         max_megapixels=max_megapixels, reduced_decode=reduced_decode)
    classifier.check_score(score)

    header = {"model": {"name": loaded.spec.display_name, "pretrained": loaded.spec.pretrained},
              "templates": template_set.name, "labels": classifier.labels, "score": score}
    failures = 0
    with ExitStack() as stack:
        writer = make_record_writer(fmt, open_sink(stack, output_path), header)
        try:
            with output.progress_bar("classifying", show_progress) as progress:
                for record in classify_paths(loaded, classifier, paths, options, progress):
                    if "error" in record:
                        failures += 1
                        output.error(f"{record['path']}: {record['error']['message']}")
                    writer.write(record)
        finally:
            writer.close()
    raise typer.Exit(EXIT_SOME_FAILED if failures else EXIT_OK)
