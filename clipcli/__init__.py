"""clipcli: zero-shot image classification with CLIP models, as a command and a library.

Importing the package is cheap; torch and open_clip load when a function that needs them runs.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["classify", "classify_paths", "open_encoder", "zero_shot_classifier", "ModelOptions", "DecodeOptions",
           "EngineOptions", "ScoreOptions", "__version__"]


def __getattr__(name: str):
    if name in __all__ and name != "__version__":
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
