"""Calibration and open-set metrics with their standard definitions (numpy only).

- `expected_calibration_error`: Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017): the top-1
  confidences are put into M equal-width bins over [0, 1] (bin m holds confidences in ((m-1)/M, m/M], the first
  also 0); ECE = sum over bins of |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|.  M = 15.
- `reliability`: the same bins as rows (count, accuracy, mean confidence), for the reliability diagram.
- `auroc`: area under the ROC curve of a score that should be higher for positives (ties count one half),
  the Mann-Whitney U statistic over n_pos * n_neg.
- `fpr_at_tpr`: the open-set FPR95: with the known images as positives and the threshold set so that at least
  95% of them are kept, the share of unknown images that are kept too (the lowest such share).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BINS = 15


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin m (0-based) holds (m/bins, (m+1)/bins]; 0 goes into the first bin."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def reliability(confidence: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> list[dict]:
    """One row per bin: lower and upper edge, count, accuracy and mean confidence (None for an empty bin)."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    index = _bin_index(conf, bins)
    rows = []
    for m in range(bins):
        chosen = index == m
        count = int(chosen.sum())
        rows.append({"lower": m / bins, "upper": (m + 1) / bins, "count": count,
                     "accuracy": float(hit[chosen].mean()) if count else None,
                     "confidence": float(conf[chosen].mean()) if count else None})
    return rows


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> float:
    total = len(confidence)
    if not total:
        return 0.0
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"])
                     for row in reliability(confidence, correct, bins) if row["count"]))


def auroc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float | None:
    """P(score of a positive > score of a negative) + 1/2 P(equal); None without both kinds."""
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    if not len(pos) or not len(neg):
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def fpr_at_tpr(positive_scores: Sequence[float], negative_scores: Sequence[float], tpr: float = 0.95) -> float | None:
    """Share of negatives at or above the highest threshold that keeps at least `tpr` of the positives
    (positives: higher scores)."""
    pos = np.sort(np.asarray(positive_scores, dtype=np.float64))[::-1]
    neg = np.asarray(negative_scores, dtype=np.float64)
    if not len(pos) or not len(neg):
        return None
    needed = int(np.ceil(tpr * len(pos) - 1e-9))
    threshold = pos[max(needed, 1) - 1]
    return float(np.mean(neg >= threshold))


def open_set_metrics(known_other: Sequence[float], unknown_other: Sequence[float], known_correct: Sequence[bool],
                     threshold: float) -> dict:
    """Metrics of the other-confidence s (higher: more likely none of the labels) on known and unknown images.

    auroc: unknown vs known by s; fpr95: share of unknown images kept when 95% of the known are kept;
    known_accuracy: share of known images answered with their own label (not other) at `threshold`;
    unknown_rejected: share of unknown images answered other at `threshold`."""
    known = np.asarray(known_other, dtype=np.float64)
    unknown = np.asarray(unknown_other, dtype=np.float64)
    correct = np.asarray(known_correct, dtype=bool)
    return {"auroc": auroc(unknown, known), "fpr95": fpr_at_tpr(-known, -unknown, 0.95),
            "known_accuracy": float(np.mean(correct & (known < threshold))) if len(known) else None,
            "known_kept": float(np.mean(known < threshold)) if len(known) else None,
            "unknown_rejected": float(np.mean(unknown >= threshold)) if len(unknown) else None,
            "threshold": threshold, "known": int(len(known)), "unknown": int(len(unknown))}
