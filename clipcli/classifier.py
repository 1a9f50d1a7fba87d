"""Class embeddings for the zero-shot classifier of the CLIP paper, from prompt ensembles (numpy).

Class embedding of a label: every text of the label (its name, plus synonyms)
is put into every template; the prompt embeddings are L2-normalised, averaged
and renormalised.  The prompts are encoded by the model object (torch or ONNX
backend: `encode_texts`); scoring lives in `scoring`.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from .cache import PACK_MIN_LABELS, EmbeddingCache
from .errors import ClipCliWarning
from .labels import Label
from .models import is_text_truncated
from .scoring import ZeroShotClassifier, l2_normalize
from .templates import TemplateSet, render_template


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
    packed = cache.get_pack(keys) if cache and len(labels) >= PACK_MIN_LABELS else None
    if packed is not None:
        return packed
    found = {i: cache.get(key) for i, key in enumerate(keys)} if cache else {}
    missing = [i for i in range(len(labels)) if found.get(i) is None]
    if missing:
        _warn_truncated(loaded, [labels[i] for i in missing], templates)
        prompts = [label_prompts(labels[i], templates) for i in missing]
        flat = [p for group in prompts for p in group]
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
    info = {**loaded.identity, "alias": loaded.spec.alias}
    return EmbeddingCache.for_model(root, loaded.identity_key(), info, templates.templates)
