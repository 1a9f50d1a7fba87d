"""`clip classify`: parse options, wire the library together, render the records."""

from __future__ import annotations

from contextlib import ExitStack
from typing import List, Optional

import typer
from typing_extensions import Annotated

from .. import config
from . import output
from .common import EXIT_OK, EXIT_SOME_FAILED, handles_errors, setup_reporting
from .options import (LABELS, OUTPUT, BackendOpt, BatchOpt, CacheDirOpt, DeviceOpt, EngineOpt, FilesFromOpt,
                      GpusPerWorkerOpt, HeadOpt, LabelsFileOpt, LabelsOpt, MaxMegapixelsOpt, ModelOpt, NoCacheOpt,
                      OutputOpt, PrecisionOpt, PretrainedOpt, QuietOpt, RayAddressOpt, RecursiveOpt, ReducedDecodeOpt,
                      StoreOpt, TemplatesOpt, VerboseOpt, WeightsDirOpt, WorkersOpt, check_choice, check_format,
                      check_head, check_outputs, engine_options, gather_inputs, load_model_from_options, open_sink,
                      read_head, read_labels, scorer_for)


def make_record_writer(fmt: str, stream, header: dict):
    from ..results import make_writer

    if fmt == "table":
        return output.TableWriter(stream)
    return make_writer(fmt, stream, header)


@handles_errors
def classify(
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="Image files, folders (recursed) and glob patterns. With --store and no inputs: every stored image.",
        show_default=False)] = None,
    labels: LabelsOpt = None,
    labels_file: LabelsFileOpt = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel=OUTPUT,
                                     help="table, json, jsonl or csv.")] = "table",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=0, rich_help_panel=OUTPUT,
                                       help="Predictions per image (0: all labels).")] = 5,
    output_path: OutputOpt = None,
    files_from: FilesFromOpt = None,
    recursive: RecursiveOpt = True,
    score: Annotated[str, typer.Option(
        "--score", rich_help_panel=LABELS,
        help="softmax (probabilities over the labels) or sigmoid (independent, SigLIP models).")] = "softmax",
    store: StoreOpt = None,
    head: HeadOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    backend: BackendOpt = None,
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    max_megapixels: MaxMegapixelsOpt = config.DEFAULT_MAX_MEGAPIXELS,
    reduced_decode: ReducedDecodeOpt = False,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
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
    head_model = read_head(head, labels, labels_file)
    label_list = read_labels(labels, labels_file) if head_model is None else None
    whole_store = store is not None and not inputs and files_from is None
    paths = [] if whole_store else gather_inputs(inputs, files_from, recursive)
    check_outputs(files={"--output": output_path}, folders={"--store": store})

    from ..api import RunOptions, classify_paths, classify_store
    from ..templates import load_template_set

    template_set = load_template_set(templates or config.default_templates())
    options = RunOptions(batch_size=batch_size, workers=workers, top_k=top_k, score=score,
                         max_megapixels=max_megapixels, reduced_decode=reduced_decode,
                         **engine_options(engine, ray_address, gpus_per_worker))
    show_progress = output.progress_enabled(quiet)
    with ExitStack() as stack:
        reader = writer = classifier = None
        if whole_store:
            from ..store import open_store

            reader = open_store(store)
            if head_model is not None and model is None and pretrained is None:
                check_head(head_model, head, reader.model.key, reader.model.display())
                classifier = head_model  # the head holds its class embeddings: no model needed
            elif model is None and pretrained is None and not no_cache:
                # Labels already cached: score the stored embeddings without loading the model at all.
                from ..api import as_labels
                from ..scoring import cached_classifier

                classifier = cached_classifier(reader.model.scoring, as_labels(label_list), template_set,
                                               config.cache_dir(cache_dir))
        if classifier is None:
            loaded = load_model_from_options(model, pretrained, device, precision, weights_dir, store, backend, cache_dir)
            if reader is not None:
                from ..embeddings import store_model
                from ..store import check_model

                check_model(reader.directory, reader.manifest, store_model(loaded))
            elif store is not None:
                from ..embeddings import open_store_writer

                writer = stack.enter_context(open_store_writer(store, loaded))
            classifier = scorer_for(loaded, head_model, head, label_list, template_set, cache_dir, no_cache,
                                    show_progress)
            described = loaded.describe()
        else:
            described = {"name": reader.model.name, "pretrained": reader.model.pretrained, "backend": None,
                         "precision": None}
        classifier.check_score(score)

        header = {"model": described,
                  "templates": template_set.name if head_model is None else head_model.meta.get("templates_name"),
                  "labels": classifier.labels, "score": score}
        if head_model is not None:
            header["head"] = {"path": str(head), "method": head_model.method, **head_model.params}
        if store is not None:
            header["store"] = str(store)
        failures = 0
        from ..embeddings import SyncReport

        report = SyncReport()
        writer_out = make_record_writer(fmt, open_sink(stack, output_path), header)
        try:
            with output.progress_bar("classifying", show_progress) as progress:
                records = (classify_store(classifier, reader, options, progress) if reader is not None else
                           classify_paths(loaded, classifier, paths, options, progress, writer, report))
                for record in records:
                    if "error" in record:
                        failures += 1
                        output.error(f"{record['path']}: {record['error']['message']}")
                    writer_out.write(record)
        finally:
            writer_out.close()
        if writer is not None and not quiet:
            output.info(store_summary(report, store))
    raise typer.Exit(EXIT_SOME_FAILED if failures else EXIT_OK)


def store_summary(report, store) -> str:
    return (f"store {store}: {report.stored} already stored, {report.encoded} encoded"
            + (f", {report.failed} unreadable" if report.failed else "")
            + (f", {report.pruned} pruned" if report.pruned else ""))
