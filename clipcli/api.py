"""Public Python entry points: a thin facade over the modules that do the work.

    from clipcli import classify
    for record in classify(["photos/"], ["wonton", "shanghai dumpling"], model="demo"):
        print(record["path"], record.get("predictions") or record["error"])

    # everything `clip classify` does: a head, "none of these", adaptation, a store (records equal to its JSON)
    records = classify(["photos/"], head="pets.head")
    records = classify(["photos/"], ["cat", "dog"], other=True, adapt=True, store="photos.store")

    # the run object behind both (and behind `clip sort`, the service and the tagger)
    from clipcli.api import ClassifyRun, LabelOptions
    run = ClassifyRun(LabelOptions(("cat", "dog")), store="photos.store")
    with run.open(["photos/a.jpg"]):
        header, records = run.header, list(run.records())

    # the pieces, for your own loop
    from clipcli.api import ModelOptions, classify_paths, open_encoder, zero_shot_classifier
    with open_encoder(ModelOptions("demo"), store="photos.store") as encoder:
        classifier = zero_shot_classifier(encoder.model, ["cat", "dog"], "imagenet")
        for record in classify_paths(encoder, classifier, ["photos/a.jpg"]):
            ...

Slow steps take an optional `progress` callback; nothing here prints.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .adapt import AdaptSettings, adapt_logits, adapted_scores  # noqa: F401 (API)
from .calibration import auroc, expected_calibration_error, fpr_at_tpr, open_set_metrics  # noqa: F401 (API)
from .classifier import ZeroShotClassifier, as_labels, cached_classifier, zero_shot_classifier  # noqa: F401 (API)
from .embeddings import Encoder, SyncReport, open_encoder  # noqa: F401 (API)
from .evaluate import EvalResult, evaluate, load_dataset  # noqa: F401 (API)
from .fewshot import ShotPlan, few_shot_curve, fit  # noqa: F401 (API)
from .heads import FewShotHead, load_head, save_head  # noqa: F401 (API)
from .labels import Label
from .openset import OpenSetScorer, open_set_scorer  # noqa: F401 (API)
from .options import (DecodeOptions, EngineOptions, LabelOptions, ModelOptions, OpenSetOptions,  # noqa: F401 (API)
                      ScoreOptions)
from .run import ClassifyRun, ScorerChoice, StageProgress  # noqa: F401 (API)
from .scoring import Scorer, batch_records, classify_files, classify_store, ranked  # noqa: F401 (API)

Progress = Callable[[int, int], None]


def classify_paths(encoder: Encoder, scorer: Scorer, paths: Sequence[str], options: ScoreOptions = ScoreOptions(),
                   progress: Progress | None = None, on_adapt: Callable[[dict], None] | None = None) -> Iterator[dict]:
    """One record per path (a video's own, then its shots'), in order, streamed batch by batch (written through
    the encoder's store, if any); with options.adapt, after the last batch (on_adapt hears what it did)."""
    return classify_files(scorer, encoder, paths, options, progress, on_adapt)


def classify(inputs: Sequence[str] | None = None, labels: Sequence[str | Label] | None = None,
             model: str | ModelOptions | None = None, pretrained: str | None = None, templates: str | None = None,
             device: str = "auto", backend: str = "auto", options: ScoreOptions = ScoreOptions(),
             decode: DecodeOptions = DecodeOptions(), *, head: str | Path | None = None,
             other: bool | OpenSetOptions = False, adapt: bool = False, store: str | Path | None = None,
             engine: EngineOptions = EngineOptions(), progress: StageProgress | None = None) -> list[dict]:
    """Classify files, folders or globs in one call, as `clip classify` does; returns the records (equal to its
    JSON's "results").  labels, or a few-shot head; other: the --other rule (True, or its options); adapt: the
    transductive pass; store: embeddings reused and written through (with no inputs: every stored image)."""
    from .images import find_images

    if not isinstance(model, ModelOptions):
        model = ModelOptions(model, pretrained, device, backend=backend)
    open_set = other if isinstance(other, OpenSetOptions) else OpenSetOptions(enabled=bool(other))
    run = ClassifyRun(LabelOptions(None if labels is None else tuple(labels), templates,
                                   None if head is None else Path(head)),
                      model, decode, engine, replace(options, adapt=options.adapt or adapt), open_set, store, progress)
    with run.open(find_images(inputs or []) if inputs or store is None else None):
        return list(run.records())
