"""What a run is asked to do, as a few small frozen objects (stdlib only).

The command line builds each of them in one place (`cli/options.py`) and hands it down whole; a library
function takes the objects it needs, never a list of loose values.  Adding an option is a change to one
of these classes, one parser line, and the code that uses it.

Each object checks its own values when it is made (one place per option, before any slow work): a bad value
is a one-line `UsageError` naming the option as the command line spells it.  Checks that need more than one
object (an `--other-label` that is one of the labels) are the run's (`run.ClassifyRun`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import config
from .errors import LabelError, UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")  # int8: ONNX Runtime only (see backends)
ENGINES = ("local", "ray")
SCORES = ("softmax", "sigmoid")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class ModelOptions:
    """Which model, where and how it runs, and where its files are kept."""

    name: str | None = None  # None: the store's model with --store, else $CLIPCLI_MODEL or the default
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"  # auto, torch or onnx (see backends)
    weights_dir: str | None = None  # None: $CLIPCLI_WEIGHTS_DIR, else Hugging Face's own cache
    cache_dir: str | None = None  # class embeddings and ONNX exports; None: $CLIPCLI_CACHE_DIR or the user cache
    use_cache: bool = True  # read and write cached class embeddings

    def __post_init__(self) -> None:
        check_choice("--precision", self.precision, PRECISIONS)


EVERY_DEFAULT = 2.0  # seconds between a video's sampled frames


@dataclass(frozen=True)
class Sampling:
    """Which times of a video to look at: every `every` seconds, or `frames` evenly spaced frames, at most
    `max_frames` (a longer video is sampled more sparsely, evenly).  Sampling(frames=N) clears `every`."""

    every: float | None = EVERY_DEFAULT
    frames: int | None = None
    max_frames: int = 300

    def __post_init__(self) -> None:
        if self.frames is not None:
            if self.every is not None and self.every != EVERY_DEFAULT:
                raise UsageError("--every and --frames cannot be used together; give one of them")
            if not _is_int(self.frames) or self.frames < 1:
                raise UsageError(f"--frames must be a whole number of frames, at least 1 (got {self.frames!r})")
            object.__setattr__(self, "every", None)
        elif self.every is None:
            raise UsageError("give --every SECONDS or --frames N")
        elif isinstance(self.every, bool) or not isinstance(self.every, (int, float)) \
                or not math.isfinite(self.every) or self.every < 0.001:
            raise UsageError(f"--every must be a number of seconds, at least 0.001 (got {self.every!r})")
        if not _is_int(self.max_frames) or self.max_frames < 1:
            raise UsageError(f"--max-frames must be a whole number, at least 1 (got {self.max_frames!r})")

    def times(self, duration: float) -> list[float]:
        """The sample times in seconds: sorted, distinct, rounded to milliseconds, all in [0, duration).
        every: 0, every, 2*every, ...; frames: the middles of N equal parts; either way, more than max_frames
        times become max_frames evenly spaced ones (0, d/M, 2d/M, ...)."""
        if not duration > 0 or not math.isfinite(duration):
            return []
        if self.frames is not None:
            count = min(self.frames, self.max_frames)
            return _rounded([(i + 0.5) * duration / count for i in range(count)], duration)
        if duration / self.every <= self.max_frames + 1:  # else surely more than the cap (never a huge list)
            times = _rounded([i * self.every for i in range(math.ceil(duration / self.every) + 1)], duration)
            if len(times) <= self.max_frames:
                return times
        return _rounded([i * duration / self.max_frames for i in range(self.max_frames)], duration)

    def key(self) -> str:
        """Short stable text naming the sampling, for stores and records: "every=2", "frames=8,max=100"."""
        text = f"frames={self.frames}" if self.frames is not None else f"every={self.every:g}"
        return text if self.max_frames == 300 else f"{text},max={self.max_frames}"


def _rounded(times: list[float], duration: float) -> list[float]:
    """Times rounded to milliseconds, sorted, each once, all in [0, duration)."""
    return sorted({t for t in (round(t, 3) for t in times) if 0 <= t < duration})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DecodeOptions:
    """How images and videos are read: batch size, decoding workers, limits, video sampling."""

    batch_size: int = 32
    workers: int | None = None  # None: one thread per core (ONNX Runtime) or cores - 1 processes (torch)
    max_megapixels: float | None = config.DEFAULT_MAX_MEGAPIXELS
    reduced_decode: bool = False  # JPEG draft decoding down to the model's input size (see bench/RESULTS.md)
    video: Sampling = Sampling()  # which frames of a video are looked at


@dataclass(frozen=True)
class EngineOptions:
    """Where decoding and encoding run: this process (local) or a Ray cluster."""

    name: str = "local"
    address: str | None = None  # Ray: None starts a local Ray with this machine's cores; "auto" joins one
    gpus_per_worker: float = 0.0  # Ray: GPUs per encoder actor (DecodeOptions.workers counts the actors)

    def __post_init__(self) -> None:
        check_choice("--engine", self.name, ENGINES)
        if self.name != "ray" and (self.address or self.gpus_per_worker):
            raise UsageError("--ray-address and --gpus-per-worker go with --engine ray")


@dataclass(frozen=True)
class ScoreOptions:
    """How image embeddings become records."""

    score: str = "softmax"  # or sigmoid (SigLIP-family models)
    top_k: int = 5  # 0: every label
    adapt: bool = False  # transductive pass over all images of the run before any record (clipcli.adapt)

    def __post_init__(self) -> None:
        check_choice("--score", self.score, SCORES)
        if self.top_k < 0:
            raise UsageError("--top-k takes a whole number >= 0 (0: every label)")


@dataclass(frozen=True)
class OpenSetOptions:
    """`--other`: answer `label` for an image that fits none of the labels (see openset)."""

    enabled: bool = False
    label: str = "other"
    threshold: float | None = None  # None: the default of the score kind (openset.DEFAULT_THRESHOLDS)

    def __post_init__(self) -> None:
        if not self.enabled and (self.label != "other" or self.threshold is not None):
            raise UsageError("--other-label and --other-threshold go with --other")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise UsageError("--other-threshold takes a number from 0 to 1")
        if not self.label.strip():
            raise UsageError("--other-label needs a name")
        object.__setattr__(self, "label", self.label.strip())


@dataclass(frozen=True)
class LabelOptions:
    """What images are scored into: labels put through a template set, or a few-shot head (which brings its own
    labels and templates)."""

    labels: tuple | None = None  # str or labels.Label each; None with a head
    templates: object = None  # a bundled set's name, a YAML file or a TemplateSet; None: $CLIPCLI_TEMPLATES or imagenet
    head: Path | None = None  # a head file from `clip fit`

    def __post_init__(self) -> None:
        if self.head is not None and self.labels is not None:
            raise LabelError("--head brings its own labels; leave out --labels / --labels-file")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))

# `clip dupes`: the embedding cosine from which two images are copies (see search.py; measured in
# bench/bench_search.py).  Here, in a module without numpy, so the help can state it.
DUPE_THRESHOLD = 0.85
