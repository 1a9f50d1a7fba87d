"""From a scorer's scores to records (numpy only): ranking, one record per image, streamed.

A scorer is anything with `labels`, `check_score(score)` and `scores(features, score)` -> [N, labels]:
the zero-shot classifier (`classifier`) or a few-shot head (`fewshot`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .batches import BatchItem
from .options import ScoreOptions
from .paths import display_path
from .results import error_record, prediction_record
from .vectors import as_array


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


def score_records(scorer, items: Sequence[BatchItem], features, options: ScoreOptions = ScoreOptions()) -> Iterator[dict]:
    """One record per item, in order: ranked predictions, or the item's error."""
    rows = iter(())
    others = getattr(scorer, "other_scores", None)  # an open-set scorer (openset): `other` first when it is
    if features is not None:
        values, indexes = ranked(as_array(scorer.scores(features, options.score)), options.top_k)
        confidence = others(features).tolist() if others else [None] * len(values)
        rows = zip(values.tolist(), indexes.tolist(), confidence)
    labels = scorer.labels
    for item in items:
        path = display_path(item.path)
        if item.error:
            yield error_record(path, *item.error)
        else:
            values, indexes, other = next(rows)
            record = prediction_record(path, [labels[i] for i in indexes], values)
            if other is not None and scorer.is_other(other):
                record["predictions"].insert(0, {"label": scorer.label, "score": float(other)})
            yield record


def classify_store(scorer, store, options: ScoreOptions = ScoreOptions(), progress: Callable[[int, int], None] | None = None,
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


def batch_records(scorer, batches: Iterable[tuple[Sequence[BatchItem], object]],
                  options: ScoreOptions = ScoreOptions()) -> Iterator[dict]:
    """Records of (items, features) batches, in order, as each batch comes."""
    scorer.check_score(options.score)
    for items, features in batches:
        yield from score_records(scorer, items, features, options)
