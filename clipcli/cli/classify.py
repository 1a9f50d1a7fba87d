"""`clip classify`: parse options, wire the library together, render the records."""

from __future__ import annotations

from contextlib import ExitStack
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .. import config
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors, setup_reporting
from .options import (BatchOpt, CacheDirOpt, DeviceOpt, LabelsFileOpt, LabelsOpt, ModelOpt, NoCacheOpt, OutputOpt,
                      PrecisionOpt, PretrainedOpt, QuietOpt, TemplatesOpt, VerboseOpt, WeightsDirOpt, WorkersOpt,
                      check_choice, check_format, gather_inputs, load_model_from_options, open_sink, read_labels)


def make_record_writer(fmt: str, stream, header: dict):
    from ..results import make_writer

    if fmt == "table":
        return output.TableWriter(stream)
    return make_writer(fmt, stream, header)


@handles_errors
def classify(
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="Image files, folders (recursed) and glob patterns.", show_default=False)] = None,
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json, jsonl or csv.")] = "table",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=0, help="Predictions per image (0: all labels).")] = 5,
    output_path: OutputOpt = None,
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
        "--reduced-decode/--full-decode", help="Decode JPEGs at reduced size, never below the model's input size "
        "(faster; off by default until measured on a real pretrained model, see bench/RESULTS.md).")
    ] = False,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    weights_dir: WeightsDirOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Classify images into the labels you give (zero-shot, with a CLIP model)."""
    setup_reporting(verbose)
    check_format(fmt)
    check_choice("--score", score, ("softmax", "sigmoid"))
    label_list = read_labels(labels, labels_file)
    paths = gather_inputs(inputs, files_from, recursive)

    from ..api import RunOptions, classify_paths, prepare_classifier
    from ..templates import load_template_set

    template_set = load_template_set(templates or config.default_templates())
    loaded = load_model_from_options(model, pretrained, device, precision, weights_dir)
    show_progress = output.progress_enabled(quiet)
    with output.progress_bar("encoding labels", show_progress) as progress:
        classifier = prepare_classifier(loaded, label_list, template_set, cache_dir, not no_cache, progress)
    options = RunOptions(batch_size=batch_size, workers=workers, top_k=top_k, score=score,
                         max_megapixels=max_megapixels, reduced_decode=reduced_decode)
    classifier.check_score(score)

    header = {"model": loaded.describe(),
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
