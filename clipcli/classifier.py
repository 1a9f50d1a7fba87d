"""The zero-shot classifier of the CLIP paper: class embeddings from prompt ensembles, and scores (numpy).

Class embedding of a label: every text of the label (its name, plus synonyms) is put into every template;
the prompt embeddings are L2-normalised, averaged and renormalised.  The prompts are encoded by the model
object (torch or ONNX backend: `encode_texts`), or taken from the class-embedding cache.

Scores: softmax(logit_scale * image @ classes.T), or, for models trained with a sigmoid loss,
sigmoid(logit_scale * image @ classes.T + bias).  Every scorer (this classifier, the few-shot heads)
takes L2-normalised features [N, dim] and gives scores [N, labels]; nothing here needs torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import config
from .cache import PACK_MIN_LABELS, EmbeddingCache
from .errors import ClipCliWarning, UsageError
from .labels import Label, as_labels  # noqa: F401 (as_labels: API)
from .scoring import ScorerBase
from .templates import TemplateSet, load_template_set, render_template
from .tokenizer import is_text_truncated
from .vectors import as_array, l2_normalize, sigmoid, softmax

SCORES = ("softmax", "sigmoid")
Progress = Callable[[int, int], None]


@dataclass
class ZeroShotClassifier(ScorerBase):
    """The labels' class embeddings and the model's logit scale (and bias): a `scoring.Scorer`."""

    labels: list[str]
    label_embeddings: np.ndarray  # [labels, dim] class embeddings, L2-normalised, float32
    logit_scale: float
    logit_bias: float | None = None

    def __post_init__(self) -> None:
        self.label_embeddings = as_array(self.label_embeddings)

    def logits(self, image_features) -> np.ndarray:
        """image_features: L2-normalised [N, dim]."""
        return self.logit_scale * (as_array(image_features) @ self.label_embeddings.T)

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


def label_prompts(label: Label, templates: TemplateSet) -> list[str]:
    return [prompt for text in label.texts for prompt in templates.render(text)]


def _warn_truncated(loaded, labels: list[Label], templates: TemplateSet) -> None:
    longest = max(templates.templates, key=len)
    cut = [label.name for label in labels
           if any(is_text_truncated(loaded.tokenizer, render_template(longest, text)) for text in label.texts)]
    if cut:
        shown = ", ".join(repr(name[:40] + ("..." if len(name) > 40 else "")) for name in cut[:5])
        more = f" and {len(cut) - 5} more" if len(cut) > 5 else ""
        warnings.warn(f"prompts for {len(cut)} label(s) are longer than the model's "
                      f"{loaded.tokenizer.context_length}-token context and were truncated: {shown}{more}",
                      ClipCliWarning, stacklevel=3)


def build_class_embeddings(loaded, labels: list[Label], templates: TemplateSet, cache: EmbeddingCache | None = None,
                           progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[labels, dim] float32 class embeddings; labels found in the cache are not encoded again."""
    keys = [label.texts for label in labels]
    from .languages import warn_unsupported_script

    warn_unsupported_script(loaded, [*(text for label in labels for text in label.texts), *templates.templates])
    packed = cache.get_pack(keys) if cache and len(labels) >= PACK_MIN_LABELS else None
    if packed is not None:
        return packed
    found = {i: cache.get(key) for i, key in enumerate(keys)} if cache else {}
    missing = [i for i in range(len(labels)) if found.get(i) is None]
    if missing:
        prompts = [label_prompts(labels[i], templates) for i in missing]
        flat = [p for group in prompts for p in group]
        loaded.expect_texts(len(flat))  # the ONNX backend starts its text session while the tokenizer loads
        _warn_truncated(loaded, [labels[i] for i in missing], templates)
        encoded = loaded.encode_texts(flat, progress)
        start = 0
        for i, group in zip(missing, prompts):
            vector = l2_normalize(encoded[start:start + len(group)].mean(axis=0)).astype(np.float32)
            start += len(group)
            found[i] = vector
            if cache:
                cache.put(keys[i], vector)
    embeddings = np.stack([found[i] for i in range(len(labels))])
    if cache and len(labels) >= PACK_MIN_LABELS:
        cache.put_pack(keys, embeddings)
    return embeddings


def build_classifier(loaded, labels: list[Label], templates: TemplateSet, cache: EmbeddingCache | None = None,
                     progress: Callable[[int, int], None] | None = None) -> ZeroShotClassifier:
    embeddings = build_class_embeddings(loaded, labels, templates, cache, progress)
    return ZeroShotClassifier([label.name for label in labels], embeddings, loaded.logit_scale, loaded.logit_bias)


def open_cache(loaded, templates: TemplateSet, root) -> EmbeddingCache:
    info = {**loaded.identity, "alias": loaded.spec.alias, "name": loaded.spec.name}  # shown by `clip cache info`
    return EmbeddingCache.for_model(root, loaded.identity_key(), info, templates.templates)

def zero_shot_classifier(loaded, labels: Sequence[str | Label], templates: str | TemplateSet,
                         cache_dir: str | None = None, use_cache: bool = True,
                         progress: Progress | None = None) -> ZeroShotClassifier:
    """Class embeddings for the labels, encoded once for the run (and cached on disk)."""
    template_set = load_template_set(templates) if isinstance(templates, str) else templates
    cache = open_cache(loaded, template_set, config.cache_dir(cache_dir)) if use_cache else None
    return build_classifier(loaded, as_labels(labels), template_set, cache, progress)


def cached_classifier(scoring: dict, labels, templates, root) -> ZeroShotClassifier | None:
    """A classifier from the class-embedding cache alone, with no model loaded: for scoring stored image
    embeddings (a store records the scale, bias and text-cache key of its model).  None unless every label
    is cached."""
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
