"""Transductive adaptation (`--adapt`): refine a run's zero-shot answers with the embeddings of all its images.

Written from the papers' equations (numpy only, no torch; no code copied):
- TransCLIP (Zanella et al., NeurIPS 2024): a Gaussian mixture over the image embeddings whose assignments
  are anchored to the zero-shot predictions by a KL term, solved by block-coordinate ascent.
- StatA (Zanella et al., CVPR 2025): when only a few of the labels occur in the batch, free class means and
  class proportions split real clusters among absent classes; anchoring the statistics of each class to
  text-derived ones, with an estimated class prior, keeps the mixture safe.
- Label-shift prior estimation (Saerens et al., 2002; as Frolic and StatA use it): pi_k = mean_i q_ik.

Notation: features x_i (L2-normalised, [N, d]), class embeddings t_k ([K, d]), the scorer's logits l_ik,
p_i = softmax(l_i) the zero-shot (or head) posterior.  The mixture has class means mu_k, one shared diagonal
covariance diag(s^2) and class prior pi.  Each iteration:

    q_ik  ∝  p_ik^lambda * pi_k * N(x_i; mu_k, diag(s^2))          (assignments, KL-anchored to zero-shot)
    s_j^2 =  (1/N) sum_ik q_ik (x_ij - mu_kj)^2                     (shared diagonal covariance)

Each stage stops early once settled (no top label moved, under `tolerance` of the mass did).
Stage 1 (`tied_iterations`, uniform prior): the means are tied to the text, mu_k = a t_k + c (a scalar a and
a vector c: the modality gap), fitted by weighted least squares.  With only two parameters per dimension
the mixture cannot invent clusters for classes that are absent; the result is the statistical anchor
mu*_k.  Stage 2 (`iterations`): free means with a Gaussian prior around the anchor worth `beta` images, and
the estimated class prior:

    mu_k  =  (sum_i q_ik x_i + beta mu*_k) / (sum_i q_ik + beta)      pi_k = (1/N) sum_i q_ik

A class that no image supports keeps its anchor and loses its prior mass, so it does not take images from
the classes that are there (the failure of a plain mixture: bench/RESULTS.md, issue 20).

The result is a correction of the logits, l'_ik = l_ik + log q_ik - log p_ik: under softmax the scores are
q itself; under sigmoid (SigLIP) each label's own score moves by the same evidence.  Below `min_images`
images there is nothing to learn from: a warning, once, and the scores are the scorer's own.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import ClipCliWarning, UsageError
from .vectors import as_array

METHOD = "anchored-gmm"
VARIANCE_FLOOR = 1e-6  # per dimension, for unit-norm features (about 1/d is typical): identical images stay finite
CHUNK_ROWS = 8192  # rows per block of the [N, K] work arrays (memory stays O(chunk x K) beyond the logits)


@dataclass(frozen=True)
class AdaptSettings:
    """The adaptation's hyper-parameters (chosen on the measuring sets of bench/bench_adapt.py)."""

    tied_iterations: int = 2
    iterations: int = 8
    beta: float = 3.0  # weight of the statistical anchor, in images
    anchor_weight: float = 1.0  # lambda: weight of the KL term to the zero-shot predictions
    min_images: int = 16  # below this, zero-shot is returned (with a warning)
    tolerance: float = 1e-3  # a stage ends early once no top label moves and under this share of the mass does

    def check(self) -> None:
        if min(self.tied_iterations, self.iterations, self.beta, self.anchor_weight, self.tolerance) < 0:
            raise UsageError("adapt settings must be >= 0")
        if self.min_images < 2:
            raise UsageError("adapt min_images must be at least 2")


@dataclass
class Adaptation:
    """What an adaptation did: for the run's header (`as_header()`)."""

    logits: np.ndarray  # [N, K] adapted logits (the input logits when it did not run)
    ran: bool
    images: int
    settings: AdaptSettings = field(default_factory=AdaptSettings)
    reason: str | None = None  # why it did not run
    changed: int = 0  # images whose top label changed
    prior: np.ndarray | None = None  # estimated class proportions [K]
    steps: int = 0  # iterations run (both stages; a stage stops early once settled)

    def as_header(self, labels: list[str] | None = None, shown: int = 10) -> dict:
        header = {"method": METHOD, "ran": self.ran, "images": self.images, **asdict(self.settings)}
        if not self.ran:
            header["reason"] = self.reason
            return header
        header["changed"], header["steps"] = self.changed, self.steps
        if self.prior is not None and labels is not None:
            order = np.argsort(-self.prior, kind="stable")[:shown]
            header["prior"] = {labels[i]: round(float(self.prior[i]), 4) for i in order if self.prior[i] >= 0.005}
        return header


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _step(x: np.ndarray, anchored: list[np.ndarray], mu, var, log_prior):
    """One pass over the rows, chunk by chunk: log q = normalised lambda log p + log N(x; mu, diag var) + log pi
    (constants dropped), and with it the next statistics.  Returns (log q blocks, sum_i q_ik x_i, sum_i q_ik)."""
    weight = (mu / var).astype(np.float32).T
    offset = (log_prior - 0.5 * (mu * mu / var).sum(axis=1)).astype(np.float32)[None, :]
    blocks, sums, counts = [], 0.0, 0.0
    for s, anchor in zip(_chunks(len(x)), anchored):
        z = x[s] @ weight
        z += offset
        z += anchor
        z -= z.max(axis=1, keepdims=True)
        q = np.exp(z)
        total = q.sum(axis=1, keepdims=True)
        q /= total
        z -= np.log(total)
        blocks.append(z)
        sums = sums + (q.T @ x[s]).astype(np.float64)
        counts = counts + q.sum(axis=0, dtype=np.float64)
    return blocks, sums, counts


def adapt_logits(features, label_embeddings, logits, settings: AdaptSettings = AdaptSettings(),
                 warn: bool = True) -> Adaptation:
    """Adapted logits for image features [N, d] (L2-normalised), the scorer's class embeddings [K, d] and its
    logits [N, K] (see the module doc).  Fewer than settings.min_images images: the logits unchanged, with
    one warning (unless warn is False)."""
    settings.check()
    x = as_array(features).astype(np.float32, copy=False)
    text = as_array(label_embeddings).astype(np.float64)
    logits = as_array(logits).astype(np.float32, copy=False)
    n = 0 if x.ndim != 2 else x.shape[0]
    if x.ndim != 2 or logits.shape != (n, text.shape[0]) or x.shape[1] != text.shape[1]:
        raise UsageError(f"adapt: features {x.shape}, class embeddings {text.shape} and logits {logits.shape} "
                         "do not fit together")
    if n < settings.min_images:
        reason = (f"{n} image{'s' if n != 1 else ''}; --adapt needs at least {settings.min_images} "
                  "(scores are the zero-shot ones)")
        if warn:
            warnings.warn(f"--adapt: {reason}", ClipCliWarning, stacklevel=2)
        return Adaptation(logits, False, n, settings, reason)
    log_p, log_q, counts, steps = _fit(x, logits, text, settings)
    adapted = np.empty_like(logits)
    changed = 0
    for s, zero, block in zip(_chunks(n), log_p, log_q):
        adapted[s] = logits[s] + block - zero
        changed += int((block.argmax(axis=1) != zero.argmax(axis=1)).sum())
    return Adaptation(adapted, True, n, settings, None, changed, counts / n, steps)


def _fit(x: np.ndarray, logits: np.ndarray, text: np.ndarray, settings: AdaptSettings):
    """The updates of the module doc.  Returns (log p blocks, log q blocks, sum_i q_ik, iterations run)."""
    n, k = len(x), text.shape[0]
    x64_sq = (x.astype(np.float64) ** 2).sum(axis=0)  # sum_i x_ij^2
    x_mean = x.astype(np.float64).mean(axis=0)
    log_prior = np.full(k, -np.log(k))
    log_p = [_log_softmax(logits[s]) for s in _chunks(n)]
    anchored = log_p if settings.anchor_weight == 1 else [np.float32(settings.anchor_weight) * b for b in log_p]
    log_q = log_p  # start: q = p (the zero-shot posterior)
    sums, counts = 0.0, 0.0
    for s, block in zip(_chunks(n), log_p):
        q = np.exp(block)
        sums, counts = sums + (q.T @ x[s]).astype(np.float64), counts + q.sum(axis=0, dtype=np.float64)
    top = [block.argmax(axis=1) for block in log_p]
    steps = 0
    for tied, limit in ((True, settings.tied_iterations), (False, settings.iterations)):
        if not tied:
            anchor = _tied_means(text, sums, counts, x_mean, n)
        for _ in range(limit):
            if tied:
                mu = _tied_means(text, sums, counts, x_mean, n)
            else:
                mu = (sums + settings.beta * anchor) / (counts + settings.beta)[:, None]
                log_prior = np.log(np.maximum(counts / n, 1e-300))
            before = counts
            log_q, sums, counts = _step(x, anchored, mu, _variance(x64_sq, mu, sums, counts, n), log_prior)
            top, last = [block.argmax(axis=1) for block in log_q], top
            steps += 1
            if (np.abs(counts - before).sum() <= settings.tolerance * n
                    and all(np.array_equal(a, b) for a, b in zip(top, last))):
                break  # settled: no top label moved, and at most `tolerance` of the mass
    return log_p, log_q, counts, steps


def _variance(x_sq, mu, sums, counts, n) -> np.ndarray:
    """s_j^2 = (1/N) sum_ik q_ik (x_ij - mu_kj)^2, from the statistics; floored."""
    return np.maximum((x_sq - 2 * (mu * sums).sum(axis=0) + counts @ (mu * mu)) / n, VARIANCE_FLOOR)


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + CHUNK_ROWS, n)) for start in range(0, n, CHUNK_ROWS)]


def _tied_means(text: np.ndarray, sums: np.ndarray, counts: np.ndarray, x_mean: np.ndarray, n: int) -> np.ndarray:
    """mu_k = a t_k + c minimising sum_ik q_ik ||x_i - a t_k - c||^2 (one scalar a, the offset c per dimension)."""
    t_mean = counts @ text / n
    cross = float((sums * text).sum() - n * (x_mean * t_mean).sum())
    spread = float(counts @ (text * text).sum(axis=1) - n * (t_mean * t_mean).sum())
    a = cross / spread if spread > 1e-12 else 0.0
    return a * text + (x_mean - a * t_mean)


def adapted_scores(scorer, features, score: str = "softmax", settings: AdaptSettings = AdaptSettings(),
                   warn: bool = True) -> tuple[np.ndarray, Adaptation]:
    """A scorer's scores [N, labels] for features [N, d], adapted over all of them: softmax of the adapted
    logits, or (sigmoid) each label's sigmoid with the logit bias.  Returns the scores and the Adaptation."""
    from .vectors import sigmoid, softmax

    scorer.check_score(score)
    x = as_array(features)
    result = adapt_logits(x, scorer.label_embeddings, scorer.logits(x), settings, warn)
    if score == "sigmoid":
        with np.errstate(over="ignore"):  # exp of a very negative adapted logit: the score is 0, as it should be
            return sigmoid(result.logits + scorer.logit_bias), result
    return softmax(result.logits), result
