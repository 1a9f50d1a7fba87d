"""clipcli: zero-shot image classification with CLIP models, as a command and a library.

Importing the package is cheap; torch and open_clip load when a function that needs them runs.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["classify", "load_model", "prepare_classifier", "classify_paths", "RunOptions", "__version__"]


def __getattr__(name: str):
    if name in ("classify", "prepare_classifier", "classify_paths", "RunOptions"):
        from . import api

        return getattr(api, name)
    if name == "load_model":
        from .models import load_model

        return load_model
    raise AttributeError(name)
