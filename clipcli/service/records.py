"""From a request's image embeddings to the records `clip classify -f json` writes (numpy; no web framework).

`classify_records` is the one place the service turns (embeddings, labels, templates, score kind, other, top-k)
into records: the request becomes a run's `ScorerChoice` (the object `clip classify` scores with), which builds
the scorer and the header, and `scoring.score_records` makes the records, so a record here equals the CLI's for
the same image.  Scorers are kept per (labels, templates, score kind, other) in a small LRU cache: label embeddings are
encoded once, and memory stays bounded however many label lists clients send.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from ..batches import BatchItem
from ..errors import TemplateError, UsageError
from ..labels import Label
from ..options import OpenSetOptions, ScoreOptions
from ..templates import TemplateSet

_PLACEHOLDER = re.compile(r"\{c?\}")
MAX_LABELS = 1000  # labels in one request (the page and the API; a longer list is one 400 error)


@dataclass(frozen=True)
class ClassifyParams:
    """What one classify request asks for."""

    labels: tuple[Label, ...]
    templates: TemplateSet
    score: str = "softmax"
    top_k: int = 5
    other: OpenSetOptions = OpenSetOptions()

    def key(self) -> tuple:
        return (tuple((label.name, label.texts) for label in self.labels), tuple(self.templates.templates),
                self.templates.name, self.score, self.other)


def template_set(name: str | None = None, hypothesis: str | None = None, default: str | None = None) -> TemplateSet:
    """A bundled template set by name, or one template given in the request (Hugging Face's
    `hypothesis_template`, with one `{}`).  Never a path: a request does not name server-side files."""
    from .. import config
    from ..templates import bundled_names, load_template_set

    if hypothesis is not None:
        if name is not None:
            raise UsageError("give either parameters.hypothesis_template or parameters.templates, not both")
        if not isinstance(hypothesis, str) or len(_PLACEHOLDER.findall(hypothesis)) != 1:
            raise TemplateError(f"hypothesis_template {hypothesis!r} needs exactly one {{}} for the label")
        return TemplateSet("hypothesis_template", "one template given with the request", "request", [hypothesis])
    name = name or default or config.default_templates()
    if not isinstance(name, str) or name not in bundled_names():
        raise TemplateError(f"unknown template set {name!r}; known sets: {', '.join(bundled_names())}")
    return load_template_set(name)


def labels_of(value) -> tuple[Label, ...]:
    """candidateLabels: a list of strings, or one comma-separated string (CSV quoting, as --labels)."""
    from ..errors import LabelError
    from ..labels import clean_labels, parse_labels, require_labels

    if isinstance(value, str):
        labels = parse_labels(value)
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        labels = clean_labels([Label.plain(item.strip()) for item in value])
    elif value is None:
        labels = []
    else:
        raise LabelError("candidateLabels must be a list of strings or one comma-separated string")
    labels = require_labels(labels) if labels else []
    if not labels:
        raise LabelError('no labels given; send candidateLabels, e.g. ["cat", "dog"]')
    if len(labels) > MAX_LABELS:
        raise LabelError(f"{len(labels)} labels; at most {MAX_LABELS} in one request")
    return tuple(labels)


class ScorerCache:
    """Scorers by ClassifyParams.key(), least recently used dropped beyond `size`; one built at a time."""

    def __init__(self, loaded, cache_dir: str | None = None, use_cache: bool = True, size: int = 64) -> None:
        self.loaded, self.cache_dir, self.use_cache, self.size = loaded, cache_dir, use_cache, size
        self._scorers: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, params: ClassifyParams):
        with self._lock:
            key = params.key()
            if key in self._scorers:
                self._scorers.move_to_end(key)
                self.hits += 1
                return self._scorers[key]
            self.misses += 1
            scorer = build_scorer(self.loaded, params, self.cache_dir, self.use_cache)
            self._scorers[key] = scorer
            while len(self._scorers) > self.size:
                self._scorers.popitem(last=False)
            return scorer


def choice_of(params: ClassifyParams):
    """The request as a run's scorer choice (`run.ScorerChoice`: the labels checked, --other's label among them
    refused), the same object `clip classify` scores with."""
    from ..options import LabelOptions
    from ..run import ScorerChoice

    return ScorerChoice(LabelOptions(params.labels, params.templates), params.other,
                        ScoreOptions(params.score, params.top_k))


def build_scorer(loaded, params: ClassifyParams, cache_dir: str | None = None, use_cache: bool = True):
    """The run's scorer as `clip classify` builds it: the labels' zero-shot classifier, with --other's rule."""
    from ..options import ModelOptions

    return choice_of(params).for_model(loaded, ModelOptions(cache_dir=cache_dir, use_cache=use_cache))


def classify_records(scorers: ScorerCache, described: dict, params: ClassifyParams, items: Sequence[BatchItem],
                     features) -> dict:
    """The request's scorer (cached) and its records, one per item in order (errors in place), in the document
    `clip classify -f json` writes for the same images: the run's header, then "results"."""
    from ..scoring import score_records

    scorer = scorers.get(params)
    header = choice_of(params).header(described, scorer)
    return {**header, "results": list(score_records(scorer, items, features, ScoreOptions(params.score, params.top_k)))}
