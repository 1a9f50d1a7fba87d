"""From a scorer's scores to records (numpy only): ranking, one record per image, streamed.

A scorer is anything with `labels`, `check_score(score)` and `scores(features, score)` -> [N, labels]:
the zero-shot classifier (`classifier`) or a few-shot head (`fewshot`).  With `options.adapt` the records
come after every feature of the run is known (a transductive pass, `adapt`), in input order, errors in place;
`on_adapt(header)` hears what the pass did before the first record.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .batches import BatchItem
from .options import ScoreOptions
from .paths import display_path
from .results import error_record, prediction_record
from .vectors import as_array


def label_embeddings(scorer) -> np.ndarray:
    """The text embeddings of a scorer's labels [labels, dim]: a zero-shot classifier's class embeddings, a
    few-shot head's text (what --other and --adapt compare images with)."""
    from .errors import UsageError

    for name in ("class_embeddings", "text"):
        if getattr(scorer, name, None) is not None:
            return as_array(getattr(scorer, name))
    raise UsageError("this scorer has no text embeddings of its labels (needed by --other and --adapt)")


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


OnAdapt = Callable[[dict], None]


def score_records(scorer, items: Sequence[BatchItem], features, options: ScoreOptions = ScoreOptions(),
                  scores=None) -> Iterator[dict]:
    """One record per item, in order: ranked predictions, or the item's error (scores: precomputed, one row
    per readable item)."""
    rows = iter(())
    others = getattr(scorer, "other_scores", None)  # an open-set scorer (openset): `other` first when it is
    if scores is None and features is not None:
        scores = scorer.scores(features, options.score)
    if scores is not None:
        values, indexes = ranked(as_array(scores), options.top_k)
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
                   rows: int = 8192, on_adapt: OnAdapt | None = None) -> Iterator[dict]:
    """Every image in the store, scored from its stored embedding (nothing is decoded or encoded), read row group
    by row group: memory does not grow with the store (except with options.adapt, which holds every embedding)."""
    scorer.check_score(options.score)
    done, total = 0, store.rows

    def groups():
        nonlocal done
        for paths, vectors, errors in store.iter_embeddings(rows):
            bad = {row: (kind, message) for row, kind, message in errors}
            items = [BatchItem(path, bad.get(row)) for row, path in enumerate(paths)]
            keep = np.array([row not in bad for row in range(len(paths))], dtype=bool)
            yield items, (vectors[keep] if bad else vectors) if keep.any() else None
            done += len(items)
            if progress is not None:
                progress(done, total)

    yield from batch_records(scorer, groups(), options, on_adapt)


def batch_records(scorer, batches: Iterable[tuple[Sequence[BatchItem], object]],
                  options: ScoreOptions = ScoreOptions(), on_adapt: OnAdapt | None = None) -> Iterator[dict]:
    """Records of (items, features) batches, in order, as each batch comes; with options.adapt, after the last."""
    scorer.check_score(options.score)
    if options.adapt:
        yield from adapted_records(scorer, batches, options, on_adapt)
        return
    for items, features in batches:
        yield from score_records(scorer, items, features, options)


def adapted_records(scorer, batches: Iterable[tuple[Sequence[BatchItem], object]],
                    options: ScoreOptions = ScoreOptions(), on_adapt: OnAdapt | None = None) -> Iterator[dict]:
    """Every batch collected, one transductive pass over all readable images (`adapt.adapted_scores`), then the
    records in input order with errors in place."""
    from .adapt import METHOD, adapted_scores

    items, parts = [], []
    for batch_items, features in batches:
        items += batch_items
        if features is not None:
            parts.append(as_array(features))
    features = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    if len(features):
        scores, adaptation = adapted_scores(scorer, features, options.score)
        header = adaptation.as_header(scorer.labels)
    else:
        scores, header = None, {"method": METHOD, "ran": False, "images": 0, "reason": "no readable image"}
    if on_adapt is not None:
        on_adapt(header)
    yield from score_records(scorer, items, features if len(features) else None, options, scores)
