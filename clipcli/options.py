"""What a run is asked to do, as a few small frozen objects (stdlib only).

The command line builds each of them in one place (`cli/options.py`) and hands it down whole; a library
function takes the objects it needs, never a list of loose values.  Adding an option is a change to one
of these classes, one parser line, and the code that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import config


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


@dataclass(frozen=True)
class DecodeOptions:
    """How images are read: batch size, decoding workers, limits."""

    batch_size: int = 32
    workers: int | None = None  # None: one thread per core (ONNX Runtime) or cores - 1 processes (torch)
    max_megapixels: float | None = config.DEFAULT_MAX_MEGAPIXELS
    reduced_decode: bool = False  # JPEG draft decoding down to the model's input size (see bench/RESULTS.md)


@dataclass(frozen=True)
class EngineOptions:
    """Where decoding and encoding run: this process (local) or a Ray cluster."""

    name: str = "local"
    address: str | None = None  # Ray: None starts a local Ray with this machine's cores; "auto" joins one
    gpus_per_worker: float = 0.0  # Ray: GPUs per encoder actor (DecodeOptions.workers counts the actors)


@dataclass(frozen=True)
class ScoreOptions:
    """How image embeddings become records."""

    score: str = "softmax"  # or sigmoid (SigLIP-family models)
    top_k: int = 5  # 0: every label
    adapt: bool = False  # transductive pass over all images of the run before any record (clipcli.adapt)


@dataclass(frozen=True)
class OpenSetOptions:
    """`--other`: answer `label` for an image that fits none of the labels (see openset)."""

    enabled: bool = False
    label: str = "other"
    threshold: float | None = None  # None: the default of the score kind (openset.DEFAULT_THRESHOLDS)

# `clip dupes`: the embedding cosine from which two images are copies (see search.py; measured in
# bench/bench_search.py).  Here, in a module without numpy, so the help can state it.
DUPE_THRESHOLD = 0.85
