"""What every ONNX export is held to (numpy only): the opset, the prompts that probe a text tower, and the check of a
tower's outputs against the model's own.  Both exporters use it: open_clip's (`export`) and transformers' (`export_hf`)."""

from __future__ import annotations

import numpy as np

from ..errors import ExportError

OPSET = 17
TOLERANCE = 1e-4
PROBE_TEXTS = ["a photo of a wonton.", "x", "a blurry photo of the big red Shanghai dumpling, steamed, on a plate!",
               "小笼包", "it's a DOG's toy &amp; more"]


def check_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    """ExportError unless the exported tower's outputs are within TOLERANCE of the model's own."""
    worst = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not worst <= TOLERANCE:
        raise ExportError(f"the exported {name} tower differs from torch by {worst:.2g} (limit {TOLERANCE})")
