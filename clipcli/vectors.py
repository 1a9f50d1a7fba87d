"""Vector maths shared by encoders, the store and scorers (numpy only; a leaf: imports nothing of clipcli)."""

from __future__ import annotations

import numpy as np


def as_array(features) -> np.ndarray:
    """float32 numpy from numpy, lists, or a torch tensor (on any device; converted without importing torch)."""
    if isinstance(features, np.ndarray):
        return features.astype(np.float32, copy=False)
    if type(features).__module__.startswith("torch"):
        return features.detach().float().cpu().numpy()
    return np.asarray(features, dtype=np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as torch.nn.functional.normalize (norms below 1e-12 count as 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12).astype(x.dtype)


def l2_normalize(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows (or one vector) scaled to unit length; all-zero rows stay zero.  `out=vectors` works in place."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors) if out is None else out, where=norms > 0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))
