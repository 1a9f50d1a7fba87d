"""Options and option parsing shared by the commands (nothing heavy is imported here)."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from .. import config
from ..errors import InputError, LabelError, UsageError
from ..results import FORMATS

# Help panels: the options of every command that encodes images, grouped the same way.
INPUTS = "Inputs"
LABELS = "Labels and templates"
MODEL = "Model"
OUTPUT = "Output"
PERF = "Performance"
STORE = "Embedding store"

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", rich_help_panel=MODEL, help="Architecture (ViT-B-32), ARCH:TAG, hf-hub:org/repo, local-dir:DIR, or 'demo'. "
    f"Default: ${config.ENV_MODEL} or {config.DEFAULT_MODEL}.", show_default=False)]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", "-p", rich_help_panel=MODEL, help="Pretrained tag (see `clip models`) or a checkpoint file. "
    f"Default: ${config.ENV_PRETRAINED}, or {config.DEFAULT_PRETRAINED} for the default model.",
    show_default=False)]
TemplatesOpt = Annotated[Optional[str], typer.Option(
    "--templates", "-t", rich_help_panel=LABELS, help=f"Template set name (`clip templates`) or a YAML file. Default: "
    f"${config.ENV_TEMPLATES} or {config.DEFAULT_TEMPLATES}.", show_default=False)]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", rich_help_panel=MODEL, help=f"auto, cpu, cuda, cuda:N or mps (auto: cuda, then mps, then cpu). Default: ${config.ENV_DEVICE} "
    "or auto.", show_default=False)]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", rich_help_panel=MODEL, help="auto (fp16 on CUDA, else fp32), fp32, fp16, bf16, or int8 (ONNX Runtime on the CPU, "
    "image tower quantised: faster, probabilities move slightly; see README).")]
BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", rich_help_panel=MODEL, help="auto (ONNX Runtime on the CPU once the model is exported, else torch), "
    "torch or onnx. Default: $CLIPCLI_BACKEND or auto.", show_default=False)]
EngineOpt = Annotated[Optional[str], typer.Option(
    "--engine", rich_help_panel=PERF, help="local, or ray (decode and encode on a Ray cluster; pip install "
    "'clipcli[ray]'). Default: $CLIPCLI_ENGINE or local.", show_default=False)]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", rich_help_panel=PERF, help="With --engine ray: a cluster address, or 'auto' to join the running "
    "one. Default: start a local Ray with this machine's cores.", show_default=False)]
GpusPerWorkerOpt = Annotated[float, typer.Option(
    "--gpus-per-worker", rich_help_panel=PERF, min=0.0, help="With --engine ray: GPUs per encoder actor "
    "(--workers sets the number of actors).")]
BatchOpt = Annotated[int, typer.Option(
    "--batch-size", "-b", rich_help_panel=PERF, min=1, help="Images per model call.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", "-j", rich_help_panel=PERF, min=0, help="Decoding workers: threads on ONNX Runtime, processes on torch (0: decode in the main "
    "thread). Default: one thread per core, or cores - 1 processes (at most 8).",
    show_default=False)]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", rich_help_panel=LABELS, help=f"Embedding cache folder. Default: ${config.ENV_CACHE_DIR} or the user cache dir.",
    show_default=False)]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", rich_help_panel=LABELS, help="Do not read or write cached class embeddings.")]
WeightsDirOpt = Annotated[Optional[str], typer.Option(
    "--weights-dir", rich_help_panel=MODEL, help=f"Where model weights are downloaded. Default: ${config.ENV_WEIGHTS_DIR} or the "
    "Hugging Face cache.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=OUTPUT, help="No progress bar.")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", rich_help_panel=OUTPUT, help="Show library log messages on stderr.")]
LabelsOpt = Annotated[Optional[str], typer.Option(
    "--labels", "-l", rich_help_panel=LABELS, help='Comma-separated labels; quote a label with commas: \'cat,"dog, small"\'.',
    show_default=False)]
LabelsFileOpt = Annotated[Optional[Path], typer.Option(
    "--labels-file", "-L", rich_help_panel=LABELS, help=".txt (one per line, # comments) or .yaml (a list, or a mapping of label to synonyms).",
    show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", rich_help_panel=OUTPUT, help="Write results to FILE (atomically) instead of stdout.", show_default=False)]

FilesFromOpt = Annotated[Optional[str], typer.Option(
    "--files-from", rich_help_panel=INPUTS, help="Read image paths from FILE, one per line (- for stdin).",
    show_default=False)]
RecursiveOpt = Annotated[bool, typer.Option(rich_help_panel=INPUTS, help="Recurse into folders.")]
MaxMegapixelsOpt = Annotated[float, typer.Option(
    "--max-megapixels", rich_help_panel=INPUTS, help="Refuse larger images (decompression bombs).")]
ReducedDecodeOpt = Annotated[bool, typer.Option(
    "--reduced-decode/--full-decode", rich_help_panel=PERF, help="Decode JPEGs at reduced size, never below the "
    "model's input size (faster; off by default until measured on a real pretrained model, see bench/RESULTS.md).")]
StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", "-s", rich_help_panel=STORE, help="Image-embedding store folder: stored embeddings are reused, "
    "new and changed images are encoded and added (`clip embed`).", show_default=False)]
HeadOpt = Annotated[Optional[Path], typer.Option(
    "--head", rich_help_panel=LABELS, help="A few-shot head from `clip fit`: it brings its labels and scores "
    "with what it learned (no --labels).", show_default=False)]


def read_head(head: Path | None, labels: str | None, labels_file: Path | None):
    """The head file, or None; a head and --labels together are refused (the head knows its labels)."""
    if head is None:
        return None
    if labels is not None or labels_file is not None:
        raise LabelError("--head brings its own labels; leave out --labels / --labels-file")
    from ..fewshot import load_head

    return load_head(head)


def check_head(head, path: Path, model_key: str, model_name: str) -> None:
    from ..fewshot import check_head_model

    check_head_model(head, path, model_key, model_name)


def check_head_against(head, path: Path, loaded) -> None:
    """A head runs only with the model it was fitted with."""
    from ..embeddings import store_model

    check_head(head, path, store_model(loaded).key, loaded.spec.display_name)


def load_model_from_options(model: str | None, pretrained: str | None, device: str | None, precision: str,
                            weights_dir: str | None, store: Path | None = None, backend: str | None = None,
                            cache_dir: Path | None = None):
    """The model the options name; with a store and no --model, the store's own model."""
    from ..backends import default_backend, load_backend_model

    if model is None and store is not None:
        from ..store import read_manifest

        manifest = read_manifest(Path(store)) if Path(store).is_dir() else None
        if manifest is not None:
            model, pretrained = manifest["model"]["name"], pretrained or manifest["model"].get("pretrained")
    name = model or config.default_model()
    return load_backend_model(name, pretrained or config.default_pretrained(name), device=device or config.default_device(),
                              precision=precision, weights_dir=weights_dir, backend=backend or default_backend(),
                              cache_root=cache_dir)


def check_outputs(files: dict[str, Path | None] = {}, folders: dict[str, Path | None] = {}) -> None:
    """Refuse unwritable output paths before any slow work (option name -> path)."""
    from ..fsutil import check_output_dir, check_output_file

    for option, path in files.items():
        if path is not None:
            check_output_file(path, option)
    for option, path in folders.items():
        if path is not None:
            check_output_dir(path, option)


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


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UsageError(f"unknown {option} {value!r}; use one of {', '.join(choices)}")
    return value


def check_format(fmt: str) -> str:
    return check_choice("--format", fmt, FORMATS)


def open_sink(stack: ExitStack, output_path: Path | None):
    from ..results import atomic_output

    if output_path is None:
        return sys.stdout
    return stack.enter_context(atomic_output(output_path))


def engine_options(engine: str | None, ray_address: str | None, gpus_per_worker: float) -> dict:
    """RunOptions fields for the engine options (checked)."""
    from ..engines import ENGINES, default_engine

    engine = engine or default_engine()
    check_choice("--engine", engine, ENGINES)
    if engine == "ray":
        from ..engines.ray import require_ray

        require_ray()
    elif ray_address or gpus_per_worker:
        raise UsageError("--ray-address and --gpus-per-worker go with --engine ray")
    return {"engine": engine, "ray_address": ray_address, "gpus_per_worker": gpus_per_worker}


def scorer_for(loaded, head_model, head: Path | None, label_list, template_set, cache_dir, no_cache: bool,
               show_progress: bool):
    """The run's scorer: the few-shot head (checked against the model), or the zero-shot classifier of the labels."""
    from . import output

    if head_model is not None:
        check_head_against(head_model, head, loaded)
        return head_model
    from ..api import prepare_classifier

    with output.progress_bar("encoding labels", show_progress) as progress:
        return prepare_classifier(loaded, label_list, template_set, cache_dir, not no_cache, progress)
