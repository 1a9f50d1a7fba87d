"""Defaults and where things live, from environment variables (stdlib only)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"
DEFAULT_TEMPLATES = "imagenet"
DEFAULT_MAX_MEGAPIXELS = 178.0  # Pillow's own decompression-bomb error threshold
DEFAULT_SHARD_ROWS = 4096  # rows per committed store shard (`clip embed --shard-size`)

ENV_MODEL = "CLIPCLI_MODEL"
ENV_PRETRAINED = "CLIPCLI_PRETRAINED"
ENV_TEMPLATES = "CLIPCLI_TEMPLATES"
ENV_DEVICE = "CLIPCLI_DEVICE"
ENV_CACHE_DIR = "CLIPCLI_CACHE_DIR"
ENV_WEIGHTS_DIR = "CLIPCLI_WEIGHTS_DIR"


def default_model() -> str:
    return os.environ.get(ENV_MODEL) or DEFAULT_MODEL


def default_pretrained(model: str) -> str | None:
    """The env override, else the recommended tag, but only for the default architecture."""
    if os.environ.get(ENV_PRETRAINED):
        return os.environ[ENV_PRETRAINED]
    return DEFAULT_PRETRAINED if model == DEFAULT_MODEL else None


def default_templates() -> str:
    return os.environ.get(ENV_TEMPLATES) or DEFAULT_TEMPLATES


def default_device() -> str:
    return os.environ.get(ENV_DEVICE) or "auto"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where class embeddings are cached: --cache-dir, $CLIPCLI_CACHE_DIR, or the user cache dir."""
    if override:
        return Path(override)
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("clipcli"))


def weights_dir(override: str | None = None) -> str | None:
    """Where downloaded weights go: --weights-dir, $CLIPCLI_WEIGHTS_DIR, else Hugging Face's own cache."""
    return override or os.environ.get(ENV_WEIGHTS_DIR) or None
