"""Public Python entry points.

    from clipcli import classify
    for record in classify(["photos/"], ["wonton", "shanghai dumpling"], model="demo"):
        print(record["path"], record["predictions"][0])

Slow steps take an optional `progress(done, total)` callback; nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from . import config
from .classifier import ZeroShotClassifier, build_classifier, open_cache
from .images import display_path
from .labels import Label, clean_labels, require_labels
from .models import LoadedModel, load_model
from .pipeline import DecodeOptions, encode_images, iter_batches
from .results import error_record, prediction_record
from .templates import TemplateSet, load_template_set

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 32
    workers: int | None = None  # None: pipeline.default_workers()
    top_k: int = 5  # 0: every label
    score: str = "softmax"
    max_megapixels: float | None = config.DEFAULT_MAX_MEGAPIXELS
    reduced_decode: bool = True  # JPEG draft decoding at the model's input size


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
                   options: RunOptions = RunOptions(), progress: Progress | None = None) -> Iterator[dict]:
    """One record per path, in order, streamed batch by batch."""
    decode = DecodeOptions(options.max_megapixels, loaded.image_size if options.reduced_decode else None)
    done = 0
    for batch in iter_batches(paths, loaded.preprocess, options.batch_size, options.workers, decode,
                              pin_memory=loaded.device.type == "cuda"):
        scores = None
        if batch.pixels is not None:
            features = encode_images(loaded.model, batch.pixels, loaded.device, loaded.cast_dtype)
            scores = classifier.scores(features, options.score).cpu().tolist()
        rows = iter(scores or [])
        for item in batch.items:
            path = display_path(item.path)
            if item.error:
                yield error_record(path, *item.error)
            else:
                yield prediction_record(path, classifier.labels, next(rows), options.top_k)
        done += len(batch.items)
        if progress is not None:
            progress(done, len(paths))


def classify(inputs: Sequence[str], labels: Sequence[str | Label], model: str | None = None,
             pretrained: str | None = None, templates: str | None = None, device: str = "auto",
             options: RunOptions = RunOptions()) -> list[dict]:
    """Classify files, folders or globs in one call; returns the records."""
    from .images import discover

    model = model or config.default_model()
    loaded = load_model(model, pretrained or config.default_pretrained(model), device=device)
    classifier = prepare_classifier(loaded, labels, templates or config.default_templates())
    return list(classify_paths(loaded, classifier, discover(inputs), options))
