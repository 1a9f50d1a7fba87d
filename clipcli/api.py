"""Public Python entry points.

    from clipcli import classify
    for record in classify(["photos/"], ["wonton", "shanghai dumpling"], model="demo"):
        print(record["path"], record["predictions"][0])

Slow steps take an optional `progress(done, total)` callback; nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from . import config
from .classifier import ZeroShotClassifier, build_classifier, open_cache
from .images import display_path
from .labels import Label, clean_labels, require_labels
from .evaluate import Dataset, Metrics, compute_metrics
from .models import LoadedModel, load_model
from .embeddings import SyncReport, embedding_batches, encode_batches, whole_store_batches
from .pipeline import BatchItem, RunOptions
from .results import error_record
from .store import ImageStore, StoreWriter
from .templates import TemplateSet, load_template_set

Progress = Callable[[int, int], None]


def as_labels(labels: Iterable[str | Label]) -> list[Label]:
    return require_labels(clean_labels([x if isinstance(x, Label) else Label.plain(str(x).strip()) for x in labels]))


def prepare_classifier(loaded: LoadedModel, labels: Sequence[str | Label], templates: str | TemplateSet,
                       cache_dir: str | None = None, use_cache: bool = True,
                       progress: Progress | None = None) -> ZeroShotClassifier:
    """Class embeddings for the labels, encoded once for the run (and cached on disk)."""
    template_set = load_template_set(templates) if isinstance(templates, str) else templates
    cache = open_cache(loaded, template_set, config.cache_dir(cache_dir)) if use_cache else None
    return build_classifier(loaded, as_labels(labels), template_set, cache, progress)


def score_records(classifier: ZeroShotClassifier, items: Sequence[BatchItem], features: torch.Tensor | None,
                  options: RunOptions = RunOptions()) -> Iterator[dict]:
    """One record per item, in order: ranked predictions, or the item's error."""
    ranked = iter(())
    if features is not None:
        scores = classifier.scores(features, options.score)
        k = len(classifier.labels) if options.top_k <= 0 else min(options.top_k, len(classifier.labels))
        if k < len(classifier.labels):
            values, indexes = scores.topk(k, dim=1)
        else:
            values, indexes = scores.sort(dim=1, descending=True, stable=True)
        ranked = zip(values.tolist(), indexes.tolist())
    labels = classifier.labels
    for item in items:
        path = display_path(item.path)
        if item.error:
            yield error_record(path, *item.error)
        else:
            values, indexes = next(ranked)
            yield {"path": path, "predictions": [{"label": labels[i], "score": v} for v, i in zip(values, indexes)]}


def classify_paths(loaded: LoadedModel, classifier: ZeroShotClassifier, paths: Sequence[str],
                   options: RunOptions = RunOptions(), progress: Progress | None = None,
                   store: StoreWriter | None = None, report: SyncReport | None = None) -> Iterator[dict]:
    """One record per path, in order, streamed batch by batch (through the store when one is given)."""
    classifier.check_score(options.score)
    for items, features in embedding_batches(loaded, paths, options, store, progress, report):
        yield from score_records(classifier, items, features, options)


def classify_store(classifier: ZeroShotClassifier, store: ImageStore, options: RunOptions = RunOptions(),
                   progress: Progress | None = None) -> Iterator[dict]:
    """Every image in the store, scored from its stored embedding (no image is decoded or encoded)."""
    classifier.check_score(options.score)
    done, total = 0, store.rows
    for items, features in whole_store_batches(store):
        yield from score_records(classifier, items, features, options)
        done += len(items)
        if progress is not None:
            progress(done, total)


@dataclass
class EvalResult:
    templates: TemplateSet
    metrics: Metrics
    mistakes: list[dict]  # the most confident wrong predictions, most confident first


def evaluate(loaded: LoadedModel, dataset: Dataset, template_sets: Sequence[TemplateSet],
             options: RunOptions = RunOptions(), cache_dir: str | None = None, use_cache: bool = True,
             progress: Progress | None = None, mistakes: int = 12,
             store: StoreWriter | None = None) -> tuple[list[EvalResult], list[dict]]:
    """Accuracy of each template set on the dataset; images are encoded once for all sets.

    Returns the results and the error records of images that could not be read (left out of the metrics)."""
    classifiers = [prepare_classifier(loaded, dataset.class_names, t, cache_dir, use_cache) for t in template_sets]
    kept, features, errors = [], [], []
    for items, batch_features in embedding_batches(loaded, dataset.paths, options, store, progress):
        rows = iter(batch_features if batch_features is not None else [])
        for index, item in enumerate(items, start=len(kept) + len(errors)):
            if item.error:
                errors.append(error_record(display_path(item.path), *item.error))
            else:
                kept.append(index)
                features.append(next(rows))
    if not features:
        return [], errors
    stacked = torch.stack(features)
    targets = [dataset.targets[i] for i in kept]
    results = []
    for template_set, classifier in zip(template_sets, classifiers):
        probabilities = classifier.scores(stacked, "softmax")
        ranked = probabilities.topk(min(5, len(dataset.class_names)), dim=1).indices.tolist()
        metrics = compute_metrics(targets, ranked, dataset.class_names)
        wrong = [(probabilities[row, order[0]].item(), row, order[0]) for row, order in enumerate(ranked)
                 if order[0] != targets[row]]
        top_wrong = [{"path": display_path(dataset.paths[kept[row]]), "true": dataset.class_names[targets[row]],
                      "predicted": dataset.class_names[predicted], "confidence": confidence}
                     for confidence, row, predicted in sorted(wrong, reverse=True)[:mistakes]]
        results.append(EvalResult(template_set, metrics, top_wrong))
    return results, errors


def classify(inputs: Sequence[str], labels: Sequence[str | Label], model: str | None = None,
             pretrained: str | None = None, templates: str | None = None, device: str = "auto",
             options: RunOptions = RunOptions()) -> list[dict]:
    """Classify files, folders or globs in one call; returns the records."""
    from .images import discover

    model = model or config.default_model()
    loaded = load_model(model, pretrained or config.default_pretrained(model), device=device)
    classifier = prepare_classifier(loaded, labels, templates or config.default_templates())
    return list(classify_paths(loaded, classifier, discover(inputs), options))
