"""Scorers and their records (numpy only): the `Scorer` contract, ranking, one record per image, streamed.

Every scorer honours `Scorer`: the zero-shot classifier (`classifier`), a few-shot head (`heads`) and the open-set
wrapper (`openset`).  Callers never ask what kind of scorer they hold: what a scorer adds to a run's header and to
a record (the open set's "other", put first) comes through the contract's own hooks.  With `options.adapt` the
records come after every feature of the run is known (a transductive pass, `adapt`), in input order, errors in
place; `on_adapt(header)` hears what the pass did before the first record.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from .batches import BatchItem
from .options import ScoreOptions
from .paths import display_path, split_frame
from .results import error_record, prediction_record
from .vectors import as_array


class Scorer(Protocol):
    """L2-normalised image features [N, dim] in, scores [N, labels] out."""

    labels: list[str]
    label_embeddings: np.ndarray  # [labels, dim]: the labels' text embeddings (what --other and --adapt compare with)
    logit_scale: float
    logit_bias: float | None  # None: no sigmoid scores (models trained with a softmax loss)

    def logits(self, features) -> np.ndarray:
        """[N, labels] logits, before softmax or sigmoid."""

    def check_score(self, score: str) -> None:
        """A one-line UsageError when this scorer cannot give `score` (softmax or sigmoid) scores."""

    def scores(self, features, score: str = "softmax") -> np.ndarray:
        """[N, labels] scores of the kind asked."""

    def header(self) -> dict:
        """What the scorer adds to a run's header ({} for none)."""

    def leading(self, features) -> list[dict | None]:
        """Per image, a prediction put before the ranked labels in its record (the open set's "other"), or None."""


class ScorerBase:
    """The hooks of `Scorer` for a scorer that adds nothing to headers and records."""

    def header(self) -> dict:
        return {}

    def leading(self, features) -> list[dict | None]:
        return [None] * len(features)


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


def score_records(scorer: Scorer, items: Sequence[BatchItem], features, options: ScoreOptions = ScoreOptions(),
                  scores=None) -> Iterator[dict]:
    """One record per item, in order: ranked predictions, or the item's error (scores: precomputed, one row
    per readable item)."""
    rows = iter(())
    if scores is None and features is not None:
        scores = scorer.scores(features, options.score)
    if scores is not None:
        values, indexes = ranked(as_array(scores), options.top_k)
        leading = [None] * len(values) if features is None else scorer.leading(features)
        rows = zip(values.tolist(), indexes.tolist(), leading)
    labels = scorer.labels
    for item in items:
        path = display_path(item.path)
        if item.error:
            yield error_record(path, *item.error)
        else:
            values, indexes, first = next(rows)
            record = prediction_record(path, [labels[i] for i in indexes], values, item.extra)
            if first is not None:
                record["predictions"].insert(0, first)
            yield record


def store_batches(store, progress: Callable[[int, int], None] | None = None,
                  rows: int = 8192) -> Iterator[tuple[list[BatchItem], np.ndarray | None]]:
    """Every image in the store as (items, features of the readable ones) batches, read row group by row group:
    memory does not grow with the store.  A store holding videos' frames gives each video's frames together, in
    time order, where the video first comes (rows added later, a denser sampling's, sit in other shards)."""
    if any(split_frame(key)[1] is not None for *_, paths, _, _ in store.iter_keys() for key in paths):
        yield from _in_video_order(store, [key for *_, paths, _, _ in store.iter_keys() for key in paths],
                                   progress, rows)
        return
    done, total = 0, store.rows
    for paths, vectors, errors in store.iter_embeddings(rows):
        bad = {row: (kind, message) for row, kind, message in errors}
        items = [BatchItem(path, bad.get(row)) for row, path in enumerate(paths)]
        keep = np.array([row not in bad for row in range(len(paths))], dtype=bool)
        yield items, (vectors[keep] if bad else vectors) if keep.any() else None
        done += len(items)
        if progress is not None:
            progress(done, total)


def _in_video_order(store, keys: list[str], progress, rows: int) -> Iterator[tuple[list[BatchItem], np.ndarray | None]]:
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(split_frame(key)[0], index)

    def place(key: str) -> tuple[int, float]:
        video, at = split_frame(key)
        return first[video], -1.0 if at is None else at

    order = sorted(keys, key=place)
    located = store.locate(order)
    for start in range(0, len(order), rows):
        chunk = order[start:start + rows]
        found = store.read({key: located[key] for key in chunk if key in located})
        items, vectors = [], []
        for key in chunk:
            row = found.get(key)
            items.append(BatchItem(key, ("not_found", "its stored row vanished") if row is None else row.error))
            if row is not None and row.embedding is not None:
                vectors.append(row.embedding)
        yield items, (np.stack(vectors) if vectors else None)
        if progress is not None:
            progress(start + len(chunk), len(order))


def classify_store(scorer: Scorer, store, options: ScoreOptions = ScoreOptions(),
                   progress: Callable[[int, int], None] | None = None, rows: int = 8192,
                   on_adapt: OnAdapt | None = None) -> Iterator[dict]:
    """Every image (and video) in the store, scored from its stored embeddings (nothing is decoded or encoded);
    memory does not grow with the store (except with options.adapt, which holds every embedding)."""
    return video_records(scorer, store_batches(store, progress, rows), options, on_adapt)


def classify_files(scorer: Scorer, encoder, paths: Sequence[str], options: ScoreOptions = ScoreOptions(),
                   progress: Callable[[int, int], None] | None = None,
                   on_adapt: OnAdapt | None = None) -> Iterator[dict]:
    """One record per path, in order, streamed batch by batch (written through the encoder's store, if any): a
    video's frames sampled (as the encoder's options say) and encoded, then scored as the video and its shots."""
    from .frames import expand

    videos = expand(paths, encoder.decode.video)
    return video_records(scorer, encoder.batches(videos.keys, progress, expanded=True), options, on_adapt,
                         videos.durations, videos.warnings)


def video_records(scorer: Scorer, batches, options: ScoreOptions = ScoreOptions(), on_adapt: OnAdapt | None = None,
                  durations: dict | None = None, warnings: dict | None = None) -> Iterator[dict]:
    """batch_records, each video's frames scored as the video and its shots (shots.group; durations and
    warnings of the videos where known), the video's record given its time per label (shots.summarise)."""
    from . import shots

    grouped = shots.group(batches, durations or {}, warnings)
    return shots.summarise(batch_records(scorer, grouped, options, on_adapt))


def batch_records(scorer: Scorer, batches: Iterable[tuple[Sequence[BatchItem], object]],
                  options: ScoreOptions = ScoreOptions(), on_adapt: OnAdapt | None = None) -> Iterator[dict]:
    """Records of (items, features) batches, in order, as each batch comes; with options.adapt, after the last."""
    if options.adapt:
        yield from adapted_records(scorer, batches, options, on_adapt)
        return
    for items, features in batches:
        yield from score_records(scorer, items, features, options)


def adapted_records(scorer: Scorer, batches: Iterable[tuple[Sequence[BatchItem], object]],
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
    readable = [item for item in items if not item.error]
    # a video is in the pass through its shots, once: its own record is their mean, weighted by their lengths
    whole = np.array(["shots" in (item.extra or {}) for item in readable], dtype=bool)
    if len(features) and (~whole).any():
        adapted, adaptation = adapted_scores(scorer, features[~whole], options.score)
        scores = np.zeros((len(features), adapted.shape[1]), dtype=np.float32)
        scores[~whole] = adapted
        for row in np.flatnonzero(whole).tolist():  # its shots follow it
            shots = readable[row + 1:row + 1 + readable[row].extra["shots"]]
            spans = [shot.extra["end"] - shot.extra["start"] for shot in shots]
            scores[row] = np.average(scores[row + 1:row + 1 + len(shots)], axis=0, weights=spans)
        header = adaptation.as_header(scorer.labels)
    else:
        scores, header = None, {"method": METHOD, "ran": False, "images": 0, "reason": "no readable image"}
    if on_adapt is not None:
        on_adapt(header)
    yield from score_records(scorer, items, features if len(features) else None, options, scores)
