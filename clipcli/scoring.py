"""Scoring image embeddings (numpy only): the zero-shot classifier of the CLIP paper, ranking, records.

Scores: softmax(logit_scale * image @ classes.T), or, for models trained with a sigmoid loss,
sigmoid(logit_scale * image @ classes.T + bias).  Every scorer (this classifier, the few-shot heads)
takes L2-normalised features [N, dim] (numpy, or torch tensors) and gives scores [N, labels]; nothing
here needs torch, so scoring stored embeddings starts in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from .batches import BatchItem, RunOptions
from .errors import UsageError
from .images import display_path
from .results import error_record

SCORES = ("softmax", "sigmoid")


def as_array(features) -> np.ndarray:
    """float32 numpy from numpy or a torch tensor (on any device)."""
    if isinstance(features, np.ndarray):
        return features.astype(np.float32, copy=False)
    return features.detach().float().cpu().numpy()


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


@dataclass
class ZeroShotClassifier:
    labels: list[str]
    class_embeddings: np.ndarray  # [labels, dim], L2-normalised, float32
    logit_scale: float
    logit_bias: float | None = None

    def __post_init__(self) -> None:
        self.class_embeddings = as_array(self.class_embeddings)

    def logits(self, image_features) -> np.ndarray:
        """image_features: L2-normalised [N, dim]."""
        return self.logit_scale * (as_array(image_features) @ self.class_embeddings.T)

    def check_score(self, score: str) -> None:
        if score not in SCORES:
            raise UsageError(f"unknown --score {score!r}; use softmax or sigmoid")
        if score == "sigmoid" and self.logit_bias is None:
            raise UsageError("--score sigmoid needs a model trained with a sigmoid loss (SigLIP family); "
                             "this model has no logit bias, use --score softmax")

    def scores(self, image_features, score: str = "softmax") -> np.ndarray:
        self.check_score(score)
        logits = self.logits(image_features)
        if score == "sigmoid":
            return sigmoid(logits + self.logit_bias)
        return softmax(logits)


def ranked(scores: np.ndarray, top_k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(values, label indexes) per row, best first; top_k = 0 ranks every label (ties keep label order)."""
    n = scores.shape[1]
    k = n if top_k <= 0 else min(top_k, n)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1,
                                                    kind="stable"), axis=1)
    else:
        order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), order


def score_records(scorer, items: Sequence[BatchItem], features, options: RunOptions = RunOptions()) -> Iterator[dict]:
    """One record per item, in order: ranked predictions, or the item's error."""
    rows = iter(())
    if features is not None:
        values, indexes = ranked(as_array(scorer.scores(features, options.score)), options.top_k)
        rows = zip(values.tolist(), indexes.tolist())
    labels = scorer.labels
    for item in items:
        path = display_path(item.path)
        if item.error:
            yield error_record(path, *item.error)
        else:
            values, indexes = next(rows)
            yield {"path": path, "predictions": [{"label": labels[i], "score": v} for v, i in zip(values, indexes)]}


def classify_store(scorer, store, options: RunOptions = RunOptions(), progress: Callable[[int, int], None] | None = None,
                   rows: int = 8192) -> Iterator[dict]:
    """Every image in the store, scored from its stored embedding (nothing is decoded or encoded), read row group
    by row group: memory does not grow with the store."""
    scorer.check_score(options.score)
    done, total = 0, store.rows
    for paths, vectors, errors in store.iter_embeddings(rows):
        bad = {row: (kind, message) for row, kind, message in errors}
        items = [BatchItem(path, bad.get(row)) for row, path in enumerate(paths)]
        keep = np.array([row not in bad for row in range(len(paths))], dtype=bool)
        yield from score_records(scorer, items, (vectors[keep] if bad else vectors) if keep.any() else None, options)
        done += len(items)
        if progress is not None:
            progress(done, total)


def cached_classifier(scoring: dict, labels, templates, root) -> ZeroShotClassifier | None:
    """A classifier from the class-embedding cache alone, with no model loaded: for scoring stored image
    embeddings (a store records the scale, bias and text-cache key of its model).  None unless every label
    is cached."""
    from .cache import PACK_MIN_LABELS, EmbeddingCache

    if not scoring.get("text_cache_key"):
        return None
    cache = EmbeddingCache.for_model(root, scoring["text_cache_key"], {}, templates.templates)
    keys = [label.texts for label in labels]
    embeddings = cache.get_pack(keys) if len(labels) >= PACK_MIN_LABELS else None
    if embeddings is None:
        found = [cache.get(key) for key in keys]
        if any(vector is None for vector in found):
            return None
        embeddings = np.stack(found)
    return ZeroShotClassifier([label.name for label in labels], embeddings, float(scoring["logit_scale"]),
                              scoring.get("logit_bias"))
