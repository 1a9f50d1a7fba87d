"""Public Python entry points.

    from clipcli import classify
    for record in classify(["photos/"], ["wonton", "shanghai dumpling"], model="demo"):
        print(record["path"], record["predictions"][0])

Slow steps take an optional `progress(done, total)` callback; nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import config
from .batches import RunOptions
from .classifier import build_classifier, open_cache
from .embeddings import SyncReport, embedding_batches
from .errors import UsageError
from .evaluate import Dataset, Metrics, compute_metrics
from .images import display_path
from .labels import Label, clean_labels, require_labels
from .models import LoadedModel
from .results import error_record
from .scoring import ZeroShotClassifier, as_array, classify_store, ranked, score_records  # noqa: F401 (API)
from .store import StoreWriter
from .templates import TemplateSet, load_template_set

if TYPE_CHECKING:
    from .fewshot import FewShotHead

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


def classify_paths(loaded: LoadedModel, classifier: ZeroShotClassifier, paths: Sequence[str],
                   options: RunOptions = RunOptions(), progress: Progress | None = None,
                   store: StoreWriter | None = None, report: SyncReport | None = None) -> Iterator[dict]:
    """One record per path, in order, streamed batch by batch (through the store when one is given)."""
    classifier.check_score(options.score)
    for items, features in embedding_batches(loaded, paths, options, store, progress, report):
        yield from score_records(classifier, items, features, options)


@dataclass
class EvalResult:
    templates: TemplateSet
    metrics: Metrics
    mistakes: list[dict]  # the most confident wrong predictions, most confident first


def encode_dataset(loaded: LoadedModel, paths: Sequence[str], options: RunOptions = RunOptions(),
                   store: StoreWriter | None = None,
                   progress: Progress | None = None) -> tuple[list[int], np.ndarray | None, list[dict]]:
    """(indexes of the readable paths, their features stacked, error records of the others)."""
    kept, features, errors = [], [], []
    for items, batch_features in embedding_batches(loaded, paths, options, store, progress):
        rows = iter(batch_features if batch_features is not None else [])
        for index, item in enumerate(items, start=len(kept) + len(errors)):
            if item.error:
                errors.append(error_record(display_path(item.path), *item.error))
            else:
                kept.append(index)
                features.append(next(rows))
    return kept, (np.stack(features) if features else None), errors


def evaluate(loaded: LoadedModel, dataset: Dataset, template_sets: Sequence[TemplateSet],
             options: RunOptions = RunOptions(), cache_dir: str | None = None, use_cache: bool = True,
             progress: Progress | None = None, mistakes: int = 12, store: StoreWriter | None = None,
             head: "FewShotHead | None" = None) -> tuple[list[EvalResult], list[dict]]:
    """Accuracy of each template set (or of a few-shot head) on the dataset; images are encoded once for all.

    Returns the results and the error records of images that could not be read (left out of the metrics)."""
    if head is not None:
        scorers = [(TemplateSet(f"head:{head.method}", "few-shot head", "", head.meta.get("templates", [])), head)]
        classes = head.labels
        position = {label: i for i, label in enumerate(classes)}
        unknown = [name for name in dataset.class_names if name not in position]
        if unknown:
            raise UsageError(f"the dataset has classes the head does not know: {', '.join(map(repr, unknown[:5]))}; "
                             "fit the head on these classes, or map folder names to its labels with --mapping")
        to_head = [position[name] for name in dataset.class_names]
    else:
        scorers = [(t, prepare_classifier(loaded, dataset.class_names, t, cache_dir, use_cache)) for t in template_sets]
        classes, to_head = dataset.class_names, list(range(len(dataset.class_names)))
    kept, stacked, errors = encode_dataset(loaded, dataset.paths, options, store, progress)
    if stacked is None:
        return [], errors
    targets = [to_head[dataset.targets[i]] for i in kept]
    results = []
    for template_set, scorer in scorers:
        probabilities = as_array(scorer.scores(stacked, "softmax"))
        top = ranked(probabilities, min(5, len(classes)))[1].tolist()
        metrics = compute_metrics(targets, top, classes)
        wrong = [(float(probabilities[row, order[0]]), row, order[0]) for row, order in enumerate(top)
                 if order[0] != targets[row]]
        top_wrong = [{"path": display_path(dataset.paths[kept[row]]), "true": classes[targets[row]],
                      "predicted": classes[predicted], "confidence": confidence}
                     for confidence, row, predicted in sorted(wrong, reverse=True)[:mistakes]]
        results.append(EvalResult(template_set, metrics, top_wrong))
    return results, errors


def head_metadata(loaded: LoadedModel, templates: TemplateSet, shots: int | None, train: str) -> dict:
    from . import __version__
    from .embeddings import store_model

    model = store_model(loaded)
    return {"model": model.display(), "model_key": model.key, "templates_name": templates.name,
            "templates": list(templates.templates), "shots_per_class": shots, "train": train,
            "clipcli_version": __version__}


def fit(loaded: LoadedModel, dataset: Dataset, templates: TemplateSet, method: str = "gda",
        shots: int | None = None, seed: int = 0, options: RunOptions = RunOptions(), cache_dir: str | None = None,
        use_cache: bool = True, store: StoreWriter | None = None, progress: Progress | None = None,
        train_name: str = "") -> tuple["FewShotHead", list[dict]]:
    """Fit a few-shot head on `shots` images per class of the dataset (all when None); only those are encoded."""
    from .fewshot import fit_head, sample_shots

    classifier = prepare_classifier(loaded, dataset.class_names, templates, cache_dir, use_cache)
    chosen = sample_shots(dataset.targets, shots, seed)
    kept, features, errors = encode_dataset(loaded, [dataset.paths[i] for i in chosen], options, store, progress)
    if features is None:
        raise UsageError("no training image could be read")
    targets = [dataset.targets[chosen[i]] for i in kept]
    meta = head_metadata(loaded, templates, shots, train_name)
    head = fit_head(features, targets, classifier.labels, classifier.class_embeddings, classifier.logit_scale,
                    method, seed, meta)
    return head, errors


def few_shot_curve(loaded: LoadedModel, train: Dataset, test: Dataset, templates: TemplateSet,
                   methods: Sequence[str], shots: Sequence[int], repeats: int = 3, seed: int = 0,
                   options: RunOptions = RunOptions(), cache_dir: str | None = None, use_cache: bool = True,
                   store: StoreWriter | None = None, progress: Progress | None = None) -> tuple[list[dict], list[dict]]:
    """Test accuracy per method and shot count (0: zero-shot), mean and spread over `repeats` samples of the shots.
    Every image is encoded once; each repeat samples other shots with seed + repeat."""
    import statistics
    import time

    from .fewshot import accuracy as few_shot_accuracy
    from .fewshot import fit_head, sample_shots

    if train.class_names != test.class_names:
        raise UsageError("the training and test sets must have the same classes (the same folder names)")
    classifier = prepare_classifier(loaded, train.class_names, templates, cache_dir, use_cache)
    kept, features, errors = encode_dataset(loaded, train.paths + test.paths, options, store, progress)
    if features is None:
        raise UsageError("no image could be read")
    split = sum(1 for i in kept if i < len(train.paths))
    train_x, test_x = features[:split], features[split:]
    train_y = [train.targets[i] for i in kept[:split]]
    test_y = [test.targets[i - len(train.paths)] for i in kept[split:]]
    rows = []
    for k in shots:
        for method in (["zero-shot"] if k == 0 else methods):
            runs, seconds = [], []
            for repeat in range(1 if k == 0 else repeats):
                chosen = sample_shots(train_y, k, seed + repeat) if k else []
                start = time.perf_counter()
                head = fit_head(train_x[chosen], [train_y[i] for i in chosen], classifier.labels,
                                classifier.class_embeddings, classifier.logit_scale, method if k else "zero-shot",
                                seed + repeat)
                seconds.append(time.perf_counter() - start)
                runs.append(few_shot_accuracy(head, test_x, test_y))
            rows.append({"method": method if k else "zero-shot", "shots": k, "mean": statistics.fmean(runs),
                         "std": statistics.pstdev(runs), "runs": runs, "fit_seconds": statistics.fmean(seconds)})
    return rows, errors


def classify(inputs: Sequence[str], labels: Sequence[str | Label], model: str | None = None,
             pretrained: str | None = None, templates: str | None = None, device: str = "auto",
             options: RunOptions = RunOptions(), backend: str = "auto") -> list[dict]:
    """Classify files, folders or globs in one call; returns the records (backend: auto, torch or onnx)."""
    from .backends import load_backend_model
    from .images import discover

    model = model or config.default_model()
    loaded = load_backend_model(model, pretrained or config.default_pretrained(model), device=device, backend=backend)
    classifier = prepare_classifier(loaded, labels, templates or config.default_templates())
    return list(classify_paths(loaded, classifier, discover(inputs), options))
