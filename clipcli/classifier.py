"""The zero-shot classifier of the CLIP paper: class embeddings from prompt ensembles, then scoring.

Class embedding of a label: every text of the label (its name, plus synonyms)
is put into every template; the prompt embeddings are L2-normalised, averaged
and renormalised.  Scores: softmax(logit_scale * image @ classes.T), or, for
models trained with a sigmoid loss, sigmoid(logit_scale * image @ classes.T + bias).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .cache import EmbeddingCache
from .errors import ClipCliWarning, UsageError
from .labels import Label
from .models import LoadedModel, is_text_truncated
from .templates import TemplateSet, render_template
from .textenc import encode_texts

SCORES = ("softmax", "sigmoid")
PACK_MIN_LABELS = 64  # from this many labels, a warm run reads one pack file instead of a file per label


@dataclass
class ZeroShotClassifier:
    labels: list[str]
    class_embeddings: torch.Tensor  # [labels, dim], L2-normalised, float32
    logit_scale: float
    logit_bias: float | None = None

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """image_features: L2-normalised [N, dim]."""
        weights = self.class_embeddings.to(image_features.device)
        return self.logit_scale * image_features.float() @ weights.T

    def check_score(self, score: str) -> None:
        if score not in SCORES:
            raise UsageError(f"unknown --score {score!r}; use softmax or sigmoid")
        if score == "sigmoid" and self.logit_bias is None:
            raise UsageError("--score sigmoid needs a model trained with a sigmoid loss (SigLIP family); "
                             "this model has no logit bias, use --score softmax")

    def scores(self, image_features: torch.Tensor, score: str = "softmax") -> torch.Tensor:
        self.check_score(score)
        logits = self.logits(image_features)
        if score == "sigmoid":
            return torch.sigmoid(logits + self.logit_bias)
        return logits.softmax(dim=-1)


def label_prompts(label: Label, templates: TemplateSet) -> list[str]:
    return [prompt for text in label.texts for prompt in templates.render(text)]


def _warn_truncated(loaded: LoadedModel, labels: list[Label], templates: TemplateSet) -> None:
    longest = max(templates.templates, key=len)
    cut = [label.name for label in labels
           if any(is_text_truncated(loaded.tokenizer, render_template(longest, text)) for text in label.texts)]
    if cut:
        shown = ", ".join(repr(name[:40] + ("..." if len(name) > 40 else "")) for name in cut[:5])
        more = f" and {len(cut) - 5} more" if len(cut) > 5 else ""
        warnings.warn(f"prompts for {len(cut)} label(s) are longer than the model's "
                      f"{loaded.tokenizer.context_length}-token context and were truncated: {shown}{more}",
                      ClipCliWarning, stacklevel=3)


def build_class_embeddings(loaded: LoadedModel, labels: list[Label], templates: TemplateSet,
                           cache: EmbeddingCache | None = None,
                           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """[labels, dim] class embeddings; labels found in the cache are not encoded again."""
    _warn_truncated(loaded, labels, templates)
    keys = [label.texts for label in labels]
    packed = cache.get_pack(keys) if cache and len(labels) >= PACK_MIN_LABELS else None
    if packed is not None:
        return packed
    found = {i: cache.get(key) for i, key in enumerate(keys)} if cache else {}
    missing = [i for i in range(len(labels)) if found.get(i) is None]
    if missing:
        prompts = [label_prompts(labels[i], templates) for i in missing]
        flat = [p for group in prompts for p in group]
        encoded = encode_texts(loaded.model, loaded.tokenizer, flat, device=loaded.device, progress=progress)
        start = 0
        for i, group in zip(missing, prompts):
            vector = F.normalize(encoded[start:start + len(group)].mean(dim=0), dim=-1)
            start += len(group)
            found[i] = vector
            if cache:
                cache.put(keys[i], vector)
    embeddings = torch.stack([found[i] for i in range(len(labels))])
    if cache and len(labels) >= PACK_MIN_LABELS:
        cache.put_pack(keys, embeddings)
    return embeddings


def build_classifier(loaded: LoadedModel, labels: list[Label], templates: TemplateSet,
                     cache: EmbeddingCache | None = None,
                     progress: Callable[[int, int], None] | None = None) -> ZeroShotClassifier:
    embeddings = build_class_embeddings(loaded, labels, templates, cache, progress)
    return ZeroShotClassifier([label.name for label in labels], embeddings, loaded.logit_scale, loaded.logit_bias)


def cached_classifier(scoring: dict, labels: list[Label], templates: TemplateSet, root) -> ZeroShotClassifier | None:
    """A classifier built from the class-embedding cache alone, with no model loaded: for scoring stored image
    embeddings (the store records the scale, bias and cache key of its model).  None unless every label is cached."""
    if not scoring.get("text_cache_key"):
        return None
    cache = EmbeddingCache.for_model(root, scoring["text_cache_key"], {}, templates.templates)
    keys = [label.texts for label in labels]
    embeddings = cache.get_pack(keys) if len(labels) >= PACK_MIN_LABELS else None
    if embeddings is None:
        found = [cache.get(key) for key in keys]
        if any(vector is None for vector in found):
            return None
        embeddings = torch.stack(found)
    return ZeroShotClassifier([label.name for label in labels], embeddings, float(scoring["logit_scale"]),
                              scoring.get("logit_bias"))


def open_cache(loaded: LoadedModel, templates: TemplateSet, root) -> EmbeddingCache:
    info = {**loaded.identity, "alias": loaded.spec.alias}
    return EmbeddingCache.for_model(root, loaded.identity_key(), info, templates.templates)
