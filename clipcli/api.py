"""Public Python entry points: a thin facade over the modules that do the work.

    from clipcli import classify
    for record in classify(["photos/"], ["wonton", "shanghai dumpling"], model="demo"):
        print(record["path"], record.get("predictions") or record["error"])

    from clipcli.api import ModelOptions, classify_paths, open_encoder, zero_shot_classifier
    with open_encoder(ModelOptions("demo"), store="photos.store") as encoder:
        classifier = zero_shot_classifier(encoder.model, ["cat", "dog"], "imagenet")
        for record in classify_paths(encoder, classifier, ["photos/a.jpg"]):
            ...

    # "none of these": records of images that fit no label start with {"label": "other", "score": s}
    scorer = open_set_scorer(classifier, encoder.model, OpenSetOptions(enabled=True))

Slow steps take an optional `progress(done, total)` callback; nothing here prints.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from .classifier import ZeroShotClassifier, as_labels, cached_classifier, zero_shot_classifier  # noqa: F401 (API)
from .embeddings import Encoder, SyncReport, open_encoder  # noqa: F401 (API)
from .evaluate import EvalResult, evaluate, load_dataset  # noqa: F401 (API)
from .fewshot import ShotPlan, few_shot_curve, fit, load_head, save_head  # noqa: F401 (API)
from .labels import Label
from .options import DecodeOptions, EngineOptions, ModelOptions, ScoreOptions  # noqa: F401 (API)
from .scoring import batch_records, classify_store, ranked  # noqa: F401 (API)
from .adapt import AdaptSettings, adapt_logits, adapted_scores  # noqa: F401 (API)
from .openset import OpenSetScorer, open_set_scorer  # noqa: F401 (API)
from .options import OpenSetOptions  # noqa: F401 (API)
from .calibration import auroc, expected_calibration_error, fpr_at_tpr, open_set_metrics  # noqa: F401 (API)

Progress = Callable[[int, int], None]


def classify_paths(encoder: Encoder, scorer, paths: Sequence[str], options: ScoreOptions = ScoreOptions(),
                   progress: Progress | None = None, on_adapt: Callable[[dict], None] | None = None) -> Iterator[dict]:
    """One record per path, in order, streamed batch by batch (written through the encoder's store, if any);
    with options.adapt, after the last batch (on_adapt hears what the adaptation did)."""
    return batch_records(scorer, encoder.batches(paths, progress), options, on_adapt)


def classify(inputs: Sequence[str], labels: Sequence[str | Label], model: str | None = None,
             pretrained: str | None = None, templates: str | None = None, device: str = "auto",
             backend: str = "auto", options: ScoreOptions = ScoreOptions(),
             decode: DecodeOptions = DecodeOptions()) -> list[dict]:
    """Classify files, folders or globs in one call; returns the records (backend: auto, torch or onnx)."""
    from . import config
    from .images import discover

    with open_encoder(ModelOptions(model, pretrained, device, backend=backend), decode) as encoder:
        classifier = zero_shot_classifier(encoder.model, labels, templates or config.default_templates())
        return list(classify_paths(encoder, classifier, discover(inputs), options))


def scorer_without_model(store, labels, templates, head=None, head_path=None,
                         model: ModelOptions = ModelOptions()):
    """A scorer for a store's embeddings that needs no model: the head (checked against the store's model), or
    the labels' classifier from the class-embedding cache.  None when the model must be loaded (named by the
    options, or labels not cached)."""
    from . import config
    from .fewshot import check_head_model

    if model.name is not None or model.pretrained is not None:
        return None
    if head is not None:
        check_head_model(head, head_path, store.model.key, store.model.display())
        return head
    if not model.use_cache:
        return None
    return cached_classifier(store.model.scoring, as_labels(labels), templates, config.cache_dir(model.cache_dir))
