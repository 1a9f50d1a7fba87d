"""Options of the commands, parsed once into the library's option objects (nothing heavy is imported here).

Options that several commands share come in groups.  `@uses(MODEL, DECODE, ...)` adds a group's options to
a command's signature (Typer reads it from there) and hands the command one built object per group
instead: `model: ModelOptions`, `decode: DecodeOptions`, `engine: EngineOptions`, `sources: Sources`,
`labels: LabelOptions`, `ui: Ui`.  The option objects check their own values; a `run.ClassifyRun` checks
the rest (labels, head, templates) before any slow work, so a command only parses, builds a run and renders.  Every command that encodes images takes the same options, with the
same names, help and environment variables; a new option is one line in its group and one field in
its options class.
"""

from __future__ import annotations

import functools
import inspect
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from typing_extensions import Annotated

from .. import config
from ..errors import LabelError, UsageError
from ..options import (EVERY_DEFAULT, DecodeOptions, EngineOptions, LabelOptions, ModelOptions, OpenSetOptions, Sampling,
                       check_choice)
from ..results import FORMATS

# Help panels, in the order every command shows them.
INPUTS = "Inputs"
LABELS = "Labels and templates"
MODEL = "Model"
OUTPUT = "Output"
PERF = "Performance"
STORE = "Embedding store"
VIDEOS = "Videos"


@dataclass(frozen=True)
class OptionGroup:
    """Options that build one object: (name, annotation, default) per option, and the builder."""

    keyword: str  # the command's parameter that receives the built object
    options: tuple[tuple[str, Any, Any], ...]
    build: Callable[..., Any]

    def parameters(self) -> list[inspect.Parameter]:
        return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                for name, annotation, default in self.options]


def uses(*groups: OptionGroup) -> Callable:
    """Give a command the options of these groups, built into one object each (see the module doc)."""
    def decorate(command: Callable) -> Callable:
        own = inspect.signature(command, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name not in {g.keyword for g in groups}]
        added = [p for g in groups for p in g.parameters()]

        @functools.wraps(command)
        def wrapper(**kwargs):
            for group in groups:
                values = {name: kwargs.pop(name) for name, _, _ in group.options}
                kwargs[group.keyword] = group.build(**values)
            return command(**kwargs)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sorted(kept + added, key=_panel_rank)]
        wrapper.__signature__ = own.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # Typer must read the signature above, not the command's own
        return wrapper
    return decorate


PANELS = (INPUTS, LABELS, MODEL, STORE, PERF, OUTPUT)


def _panel_rank(parameter: inspect.Parameter) -> int:
    """Arguments first, then options panel by panel, in the same order in every command."""
    infos = [m for m in getattr(parameter.annotation, "__metadata__", ()) if hasattr(m, "rich_help_panel")]
    if not infos or isinstance(infos[0], typer.models.ArgumentInfo):
        return -1
    panel = infos[0].rich_help_panel
    return PANELS.index(panel) if panel in PANELS else len(PANELS)


def option(*names: str, panel: str, help: str, kind: Any = Optional[str], **extra) -> Any:
    return Annotated[kind, typer.Option(*names, rich_help_panel=panel, help=help, show_default=extra.pop(
        "show_default", False), **extra)]


# --- options declared by commands themselves (their meaning differs a little per command) ---------------------
TemplatesOpt = option("--templates", "-t", panel=LABELS, metavar="NAME", help="Template set name (`clip templates`) or a YAML file. "
                      f"Default: ${config.ENV_TEMPLATES} or {config.DEFAULT_TEMPLATES}.")
LabelsOpt = option("--labels", "-l", panel=LABELS, metavar="LIST", help='Comma-separated labels; quote a label with commas: '
                   '\'cat,"dog, small"\'.')
LabelsFileOpt = option("--labels-file", "-L", panel=LABELS, kind=Optional[Path], metavar="FILE",
                       help=".txt (one per line, # comments) or .yaml (a list, or a mapping of label to synonyms).")
OutputOpt = option("--output", "-o", panel=OUTPUT, kind=Optional[Path], metavar="FILE",
                   help="Write results to FILE (atomically) instead of stdout.")
StoreOpt = option("--store", "-s", panel=STORE, kind=Optional[Path], metavar="DIR", help="Image-embedding store folder: stored "
                  "embeddings are reused, new and changed images are encoded and added (`clip embed`).")
HeadOpt = option("--head", panel=LABELS, kind=Optional[Path], metavar="FILE", help="A few-shot head from `clip fit`: it brings its "
                 "labels and scores with what it learned (no --labels).")
InputsArg = Annotated[Optional[List[str]], typer.Argument(
    help="Image files, folders (recursed) and glob patterns.", show_default=False)]


# --- groups ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ui:
    quiet: bool
    progress: bool  # show progress bars


def _ui(quiet: bool, verbose: bool) -> Ui:
    from . import output
    from .common import setup_reporting

    setup_reporting(verbose)
    return Ui(quiet, output.progress_enabled(quiet))


UI = OptionGroup("ui", (
    ("quiet", option("--quiet", "-q", panel=OUTPUT, kind=bool, help="No progress bar."), False),
    ("verbose", option("--verbose", panel=OUTPUT, kind=bool, help="Show library log messages on stderr."), False),
), _ui)


def _model(model, pretrained, device, precision, backend, weights_dir, cache_dir, no_cache) -> ModelOptions:
    from ..backends import default_backend

    return ModelOptions(model, pretrained, device or config.default_device(), precision, backend or default_backend(),
                        weights_dir, str(cache_dir) if cache_dir else None, not no_cache)


MODEL_OPTIONS = (
    ("model", option("--model", "-m", panel=MODEL, metavar="MODEL", help="Architecture (ViT-B-32), ARCH:TAG, hf-hub:org/repo, "
                     f"local-dir:DIR, or 'demo'. Default: the store's model, ${config.ENV_MODEL}, or "
                     f"{config.DEFAULT_MODEL}."), None),
    ("pretrained", option("--pretrained", "-p", panel=MODEL, metavar="TAG", help="Pretrained tag (see `clip models`) or a "
                          f"checkpoint file. Default: ${config.ENV_PRETRAINED}, or {config.DEFAULT_PRETRAINED} for the "
                          "default model."), None),
    ("device", option("--device", panel=MODEL, help="auto, cpu, cuda, cuda:N or mps (auto: cuda, then mps, then "
                      f"cpu). Default: ${config.ENV_DEVICE} or auto."), None),
    ("precision", option("--precision", panel=MODEL, kind=str, show_default=True, help="auto (fp16 on CUDA, else "
                         "fp32), fp32, fp16, bf16, or int8 (ONNX Runtime on the CPU, image tower quantised: faster, "
                         "probabilities move slightly; see README)."), "auto"),
    ("backend", option("--backend", panel=MODEL, help="auto (ONNX Runtime on the CPU once the model is exported, else "
                       "torch), torch or onnx. Default: $CLIPCLI_BACKEND or auto."), None),
    ("weights_dir", option("--weights-dir", panel=MODEL, metavar="DIR", help="Where model weights are looked up and downloaded. "
                           f"Default: ${config.ENV_WEIGHTS_DIR} or the Hugging Face cache."), None),
    ("cache_dir", option("--cache-dir", panel=MODEL, kind=Optional[Path], metavar="DIR", help="Where class embeddings and ONNX "
                         f"exports are cached. Default: ${config.ENV_CACHE_DIR} or the user cache dir."), None),
    ("no_cache", option("--no-cache", panel=LABELS, kind=bool, help="Do not read or write cached class "
                        "embeddings."), False),
)
MODEL_GROUP = OptionGroup("model", MODEL_OPTIONS, _model)


def _decode(batch_size, workers, max_megapixels, reduced_decode, every, frames, max_frames) -> DecodeOptions:
    if every is not None and frames is not None:  # (Sampling cannot tell a given --every 2 from its default)
        raise UsageError("--every and --frames cannot be used together; give one of them")
    video = Sampling(EVERY_DEFAULT if every is None else every, frames, max_frames)
    return DecodeOptions(batch_size, workers, max_megapixels, reduced_decode, video)


DECODE = OptionGroup("decode", (
    ("batch_size", option("--batch-size", "-b", panel=PERF, kind=int, min=1, show_default=True,
                          help="Images per model call."), 32),
    ("workers", option("--workers", "-j", panel=PERF, kind=Optional[int], min=0, help="Decoding workers: threads on "
                       "ONNX Runtime, processes on torch (0: decode in the main thread); with --engine ray, encoder "
                       "actors. Default: one thread per core, or cores - 1 processes (at most 8)."), None),
    ("max_megapixels", option("--max-megapixels", panel=INPUTS, kind=float, show_default=True,
                              help="Refuse larger images (decompression bombs)."), config.DEFAULT_MAX_MEGAPIXELS),
    ("reduced_decode", option("--reduced-decode/--full-decode", panel=PERF, kind=bool, show_default=True,
                              help="Decode JPEGs at reduced size, never below the model's input size (faster; off "
                              "by default until measured on a real pretrained model, see bench/RESULTS.md)."), False),
    ("every", option("--every", panel=VIDEOS, kind=Optional[float], metavar="SECONDS", help="Videos: sample a frame "
                     f"every SECONDS. Default: {EVERY_DEFAULT:g}, or --frames."), None),
    ("frames", option("--frames", panel=VIDEOS, kind=Optional[int], metavar="N", help="Videos: sample N frames, "
                      "evenly spaced, instead of --every."), None),
    ("max_frames", option("--max-frames", panel=VIDEOS, kind=int, metavar="N", show_default=True, help="Videos: at "
                          "most N frames a video (a longer video is sampled more sparsely)."), Sampling.max_frames),
), _decode)


def _engine(engine, ray_address, gpus_per_worker) -> EngineOptions:
    from ..engines import default_engine

    options = EngineOptions(engine or default_engine(), ray_address, gpus_per_worker)
    if options.name == "ray":
        from ..engines.ray import require_ray

        require_ray()
    return options


ENGINE = OptionGroup("engine", (
    ("engine", option("--engine", panel=PERF, help="local, or ray (decode and encode on a Ray cluster; pip install "
                      "'ray\\[data]', or '.\\[ray]' in a checkout). Default: $CLIPCLI_ENGINE or local."), None),
    ("ray_address", option("--ray-address", panel=PERF, metavar="ADDRESS", help="With --engine ray: a cluster address, or 'auto' to "
                           "join the running one. Default: start a local Ray with this machine's cores."), None),
    ("gpus_per_worker", option("--gpus-per-worker", panel=PERF, kind=float, min=0.0, show_default=True,
                               help="With --engine ray: GPUs per encoder actor."), 0.0),
), _engine)


@dataclass(frozen=True)
class Sources:
    files_from: str | None
    recursive: bool

    def paths(self, inputs: list[str] | None) -> list[str]:
        """Every image the inputs name (files, folders, globs, object storage, --files-from)."""
        from ..images import find_images

        return find_images(inputs or [], self.recursive, self.files_from)


SOURCES = OptionGroup("sources", (
    ("files_from", option("--files-from", panel=INPUTS, metavar="FILE", help="Read image paths from FILE, one per line (- for "
                          "stdin)."), None),
    ("recursive", option("--recursive/--no-recursive", panel=INPUTS, kind=bool, show_default=True,
                         help="Recurse into folders."), True),
), Sources)


def _labels(labels, labels_file, templates, head) -> LabelOptions:
    given = labels is not None or labels_file is not None
    if head is not None and given:  # refused by LabelOptions, before the labels are read
        return LabelOptions((), templates, head)
    return LabelOptions(read_labels(labels, labels_file) if given else None, templates, head)


LABEL_GROUP = OptionGroup("labels", (
    ("labels", LabelsOpt, None), ("labels_file", LabelsFileOpt, None), ("templates", TemplatesOpt, None),
    ("head", HeadOpt, None),
), _labels)


OPEN_SET = OptionGroup("open_set", (
    ("other", option("--other", panel=LABELS, kind=bool, help="Answer 'other' for an image that fits none of the "
                     "labels (negative labels mined from a shipped vocabulary; see README)."), False),
    ("other_label", option("--other-label", panel=LABELS, kind=str, metavar="NAME", show_default=True,
                           help="With --other: the name of that answer (and of its folder in clip sort)."), "other"),
    ("other_threshold", option("--other-threshold", panel=LABELS, kind=Optional[float], metavar="X",
                               help="With --other: answer 'other' when its confidence is at least X (0-1; lower: "
                               "more images go to 'other'). Default: 0.2."), None),
), lambda other, other_label, other_threshold: OpenSetOptions(other, other_label, other_threshold))


def _adapt(adapt: bool) -> bool:
    return adapt


ADAPT = OptionGroup("adapt", (
    ("adapt", option("--adapt", panel=LABELS, kind=bool, help="Refine the answers with all the images of the run "
                     "together (transductive; records come once every image is encoded; see README)."), False),
), _adapt)


# --- helpers ----------------------------------------------------------------------------------------------------
def read_labels(labels: str | None, labels_file: Path | None):
    from ..labels import load_labels_file, parse_labels, require_labels

    if labels is not None and labels_file is not None:
        raise LabelError("give either --labels or --labels-file, not both")
    if labels_file is not None:
        return require_labels(load_labels_file(labels_file))
    return require_labels(parse_labels(labels or ""))


def check_outputs(files: dict[str, Path | None] = {}, folders: dict[str, Path | None] = {}) -> None:
    """Refuse unwritable output paths before any slow work (option name -> path)."""
    from ..fsutil import check_output_dir, check_output_file
    from .common import refuse_same_file

    refuse_same_file(files)
    for name, path in files.items():
        if path is not None:
            check_output_file(path, name)
    for name, path in folders.items():
        if path is not None:
            check_output_dir(path, name)


def check_format(fmt: str, formats: tuple[str, ...] = FORMATS) -> str:
    return check_choice("--format", fmt, formats)


def open_sink(stack: ExitStack, output_path: Path | None):
    from ..fsutil import atomic_output

    if output_path is None:
        return sys.stdout
    return stack.enter_context(atomic_output(output_path))


def option_of(group: OptionGroup, name: str) -> Any:
    """One option of a group, for a command that takes it alone."""
    return next(annotation for option_name, annotation, _ in group.options if option_name == name)


CacheDirOpt = option_of(MODEL_GROUP, "cache_dir")
WeightsDirOpt = option_of(MODEL_GROUP, "weights_dir")
