"""`--other`: "none of these labels", from negative labels mined far from the user's labels (numpy only).

The rule (NegLabel, Jiang et al., ICLR 2024, with an argmax read-out): a vocabulary of object names shipped with
the package (`data/negatives.txt`, the 1,000 ImageNet class names) is encoded by the run's model; the words
farthest from the user's labels (by text cosine: `keep` of them, the half least like any label) become negative
labels.  For an image x with L2-normalised embedding, best label cosine c_l = max_j x.t_j and best negative
cosine c_n = max_k x.n_k, its other-confidence is the model's own two-way softmax between the two:

    s = 1 / (1 + exp(logit_scale * (c_l - c_n)))        (s > 1/2 when a negative fits better than every label)

and the image is `other` when s >= threshold.  The rule reads cosines, so it is the same for softmax and for
sigmoid (SigLIP) scores; the scores of the user's labels in the record stay those of the run's score kind.
Chosen by measurement over the raw-cosine threshold, the softmax maximum and NegLabel's summed score
(bench/bench_openset.py, bench/RESULTS.md): a raw cosine has no threshold that carries from one model to another,
while the margin to the best negative does.

A scorer wrapper gives any scorer (zero-shot classifier, few-shot head) the same rule: `OpenSetScorer` is a
`scoring.Scorer` whose labels, embeddings and scores are its base's; through the contract's hooks it puts
`{"label": "other", "score": s}` first in the record of an image judged to be none of the labels (`leading`) and
describes the rule in the run's header (`header`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

import numpy as np

from .errors import UsageError
from .labels import check_other_label
from .options import OpenSetOptions
from .scoring import Scorer
from .vectors import as_array

VOCABULARY = "negatives.txt"
NEGATIVE_TEMPLATES = "simple"  # one prompt per word: the vocabulary is encoded once per model and cached
KEEP = 0.5  # share of the vocabulary kept as negatives: the words least like any of the user's labels
DEFAULT_THRESHOLDS = {"softmax": 0.2, "sigmoid": 0.2}  # measured for softmax (bench/RESULTS.md); sigmoid: the same rule


def vocabulary() -> list[str]:
    """The shipped negative-label vocabulary (see the credit at the top of the file)."""
    text = resources.files("clipcli").joinpath("data", VOCABULARY).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def default_threshold(score: str) -> float:
    return DEFAULT_THRESHOLDS.get(score, DEFAULT_THRESHOLDS["softmax"])


def mine_negatives(words: Sequence[str], word_embeddings, label_embeddings, keep: float = KEEP,
                   exclude: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
    """The `keep` share of the words farthest from every label (lowest maximum cosine to a label), and their
    embeddings; words equal to a label (or in `exclude`) are never negatives."""
    words = list(words)
    vectors = as_array(word_embeddings)
    labels = as_array(label_embeddings)
    if not 0.0 < keep <= 1.0:
        raise UsageError("the share of negative labels kept must be in (0, 1]")
    banned = {w.casefold() for w in exclude}
    allowed = np.array([w.casefold() not in banned for w in words], dtype=bool)
    nearest = (vectors @ labels.T).max(axis=1)
    nearest[~allowed] = np.inf
    count = max(1, min(int(allowed.sum()), int(round(keep * len(words)))))
    chosen = np.sort(np.argsort(nearest, kind="stable")[:count])
    return [words[i] for i in chosen], vectors[chosen]


def other_confidence(features, label_embeddings, negative_embeddings, logit_scale: float) -> np.ndarray:
    """s per image (see the module doc): [N] float64 in [0, 1]."""
    x = as_array(features)
    best_label = (x @ as_array(label_embeddings).T).max(axis=1).astype(np.float64)
    best_negative = (x @ as_array(negative_embeddings).T).max(axis=1).astype(np.float64)
    margin = float(logit_scale) * (best_label - best_negative)
    return 0.5 * (1.0 - np.tanh(0.5 * margin))  # the logistic function, without overflow


@dataclass
class OpenSetScorer:
    """A scorer with an `other` answer: the labels and scores of `base`, and `other` first where it wins."""

    base: Scorer
    negatives: list[str]
    negative_embeddings: np.ndarray
    label: str = "other"
    threshold: float = 0.5

    @property
    def labels(self) -> list[str]:
        return self.base.labels

    @property
    def label_embeddings(self) -> np.ndarray:
        return self.base.label_embeddings

    @property
    def logit_scale(self) -> float:
        return float(self.base.logit_scale)

    @property
    def logit_bias(self) -> float | None:
        return self.base.logit_bias

    def logits(self, features) -> np.ndarray:
        return self.base.logits(features)

    def check_score(self, score: str) -> None:
        self.base.check_score(score)

    def scores(self, features, score: str = "softmax") -> np.ndarray:
        return self.base.scores(features, score)

    def other_scores(self, features) -> np.ndarray:
        """s per image (see the module doc)."""
        return other_confidence(features, self.label_embeddings, self.negative_embeddings, self.logit_scale)

    def leading(self, features) -> list[dict | None]:
        return [{"label": self.label, "score": s} if s >= self.threshold else None
                for s in self.other_scores(features).tolist()]

    def describe(self) -> dict:
        return {"label": self.label, "threshold": self.threshold, "method": "negative labels",
                "negatives": len(self.negatives)}

    def header(self) -> dict:
        return {**self.base.header(), "other": self.describe()}


def wrap(scorer, vocabulary_classifier, options: OpenSetOptions, score: str = "softmax") -> OpenSetScorer:
    """`scorer` with the open-set rule; `vocabulary_classifier` holds the encoded vocabulary (`labels`,
    `label_embeddings`), as `vocabulary_scorer` builds it."""
    check_other_label(options.label, scorer.labels)
    words, vectors = mine_negatives(vocabulary_classifier.labels, vocabulary_classifier.label_embeddings,
                                    scorer.label_embeddings, KEEP, exclude=scorer.labels)
    threshold = default_threshold(score) if options.threshold is None else options.threshold
    return OpenSetScorer(scorer, words, vectors, options.label, threshold)


def vocabulary_scorer(loaded, cache_dir: str | None = None, use_cache: bool = True,
                      progress: Callable[[int, int], None] | None = None):
    """The vocabulary encoded by a loaded model (one prompt per word), through the class-embedding cache."""
    from .classifier import zero_shot_classifier

    return zero_shot_classifier(loaded, vocabulary(), NEGATIVE_TEMPLATES, cache_dir, use_cache, progress)


def cached_vocabulary(scoring: dict, root):
    """The encoded vocabulary from the class-embedding cache alone (no model), for stored embeddings; None
    when it was never encoded with this model."""
    from .classifier import cached_classifier
    from .labels import as_labels
    from .templates import load_template_set

    return cached_classifier(scoring, as_labels(vocabulary()), load_template_set(NEGATIVE_TEMPLATES), root)


def open_set_scorer(scorer, loaded, options: OpenSetOptions, score: str = "softmax", cache_dir: str | None = None,
                    use_cache: bool = True, progress: Callable[[int, int], None] | None = None):
    """`scorer` as it is when --other is off, else wrapped with the rule (the vocabulary encoded by `loaded`)."""
    if not options.enabled:
        return scorer
    return wrap(scorer, vocabulary_scorer(loaded, cache_dir, use_cache, progress), options, score)


def open_set_without_model(scorer, store, options: OpenSetOptions, score: str, model_options):
    """`scorer` wrapped with the rule from the cached vocabulary of the store's model; None when the vocabulary
    is not cached (the model must then be loaded to encode it)."""
    from . import config

    if not model_options.use_cache:
        return None
    encoded = cached_vocabulary(store.model.scoring, config.cache_dir(model_options.cache_dir))
    return None if encoded is None else wrap(scorer, encoded, options, score)
