"""A classify run: option objects in, records out; the one place where a run is assembled.

    from clipcli.options import LabelOptions
    from clipcli.run import ClassifyRun

    run = ClassifyRun(LabelOptions(("cat", "dog")))   # checked here, before any slow work
    with run.open(["photos/a.jpg"]):                  # None: every image of the run's store
        print(run.header)                             # model, templates, labels, score (and head, store, other, adapt)
        for record in run.records():                  # a record per input (a video: its own, then its shots), in order
            ...

Made from the option objects, a run checks what they cannot check alone (the labels or the head, the template set,
an `--other-label` among the labels) before any slow work.  Opened, it loads the model and opens the store, or,
for stored embeddings whose labels are cached (or a head), loads no model at all; then it chooses the scorer: a
few-shot head or the labels' zero-shot classifier, with the `--other` rule around it when asked.  Every door (the
command line, the Python API, the service, the tagger) builds a run and renders its records; none assembles one.

Nothing here prints: slow steps report through `progress(stage, done, total)`, stages named as STAGES says.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from . import config
from .errors import ClipCliWarning
from .options import DecodeOptions, EngineOptions, LabelOptions, ModelOptions, OpenSetOptions, ScoreOptions

if TYPE_CHECKING:  # the modules that compute load when a run opens, so that a bad option fails fast and light
    from .embeddings import Encoder, SyncReport
    from .heads import FewShotHead
    from .labels import Label
    from .scoring import Scorer
    from .templates import TemplateSet

StageProgress = Callable[[str, int, int], None]
STAGES = ("encoding labels", "encoding negative labels", "classifying")


def _stage(progress: StageProgress | None, name: str) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(name, done, total))


class ScorerChoice:
    """What a run scores into, checked: the labels through a template set, or a few-shot head."""

    def __init__(self, labels: LabelOptions, open_set: OpenSetOptions = OpenSetOptions(),
                 score: ScoreOptions = ScoreOptions()) -> None:
        from .labels import as_labels, check_other_label, require_labels
        from .templates import TemplateSet, load_template_set

        if labels.head is None:
            require_labels(labels.labels or [])  # no labels: refused before anything else
        self.options, self.open_set, self.score = labels, open_set, score
        templates = labels.templates or config.default_templates()
        self.template_set: TemplateSet = templates if isinstance(templates, TemplateSet) else load_template_set(templates)
        self.head: FewShotHead | None = None
        self.labels: list[Label] | None = None
        if labels.head is not None:
            from .heads import load_head

            self.head = load_head(labels.head)
        else:
            self.labels = as_labels(labels.labels)
        if open_set.enabled:
            check_other_label(open_set.label, self.names)

    def warn_single_label(self) -> None:
        """One label under softmax always scores 1.0: said once per run (not with --other, which answers it or
        'other')."""
        if (self.labels is not None and len(self.labels) == 1 and self.score.score == "softmax"
                and not self.open_set.enabled):
            warnings.warn(f"one label ({self.labels[0].name!r}) under softmax always scores 1.0; add labels, use "
                          "--other (answers 'other' for images that are not it), or --score sigmoid (SigLIP models) "
                          "to score it on its own", ClipCliWarning, stacklevel=3)

    @property
    def names(self) -> list[str]:
        return self.head.labels if self.head is not None else [label.name for label in self.labels]

    @property
    def templates_name(self) -> str | None:
        return self.template_set.name if self.head is None else self.head.meta.get("templates_name")

    def header(self, described: dict, scorer: Scorer, store: str | Path | None = None) -> dict:
        """The header of records scored by `scorer` (chosen here): model (as `described`), templates, labels, score
        kind, and the head, the store and what the scorer adds (--other)."""
        header = {"model": described, "templates": self.templates_name, "labels": scorer.labels,
                  "score": self.score.score}
        if self.head is not None:
            header["head"] = {"path": str(self.options.head), "method": self.head.method, **self.head.params}
        if store is not None:
            header["store"] = str(store)
        return {**header, **scorer.header()}

    def for_model(self, loaded, model: ModelOptions | None = None, progress: StageProgress | None = None) -> Scorer:
        """The scorer with a loaded model: the head (checked against the model), or the labels' classifier (its
        class embeddings from the cache, or encoded); with the --other rule when asked."""
        from .classifier import zero_shot_classifier
        from .embeddings import store_model
        from .heads import check_head_model
        from .openset import open_set_scorer

        model = model or ModelOptions()
        if self.head is not None:
            stored = store_model(loaded)
            check_head_model(self.head, self.options.head, stored.key, loaded.spec.display_name)
            scorer = self.head
        else:
            scorer = zero_shot_classifier(loaded, self.labels, self.template_set, model.cache_dir, model.use_cache,
                                          _stage(progress, STAGES[0]))
        scorer = open_set_scorer(scorer, loaded, self.open_set, self.score.score, model.cache_dir, model.use_cache,
                                 _stage(progress, STAGES[1]))
        scorer.check_score(self.score.score)
        return scorer

    def for_store(self, store, model: ModelOptions = ModelOptions()) -> Scorer | None:
        """The scorer for a store's embeddings without a model: the head (checked against the store's model), or
        the classifier from the class-embedding cache, with --other's vocabulary from the cache too.  None when the
        model must be loaded (named by the options, or something not cached)."""
        from .classifier import cached_classifier
        from .heads import check_head_model
        from .openset import open_set_without_model

        if model.name is not None or model.pretrained is not None:
            return None
        if self.head is not None:
            check_head_model(self.head, self.options.head, store.model.key, store.model.display())
            scorer = self.head
        elif not model.use_cache:
            return None
        else:
            scorer = cached_classifier(store.model.scoring, self.labels, self.template_set,
                                       config.cache_dir(model.cache_dir))
        if scorer is not None and self.open_set.enabled:
            scorer = open_set_without_model(scorer, store, self.open_set, self.score.score, model)
        if scorer is not None:
            scorer.check_score(self.score.score)
        return scorer


class ClassifyRun:
    """One classify run: what images are scored into, and how; `open(paths)` runs it on some images."""

    def __init__(self, labels: LabelOptions, model: ModelOptions = ModelOptions(),
                 decode: DecodeOptions = DecodeOptions(), engine: EngineOptions = EngineOptions(),
                 score: ScoreOptions = ScoreOptions(), open_set: OpenSetOptions = OpenSetOptions(),
                 store: str | Path | None = None, progress: StageProgress | None = None) -> None:
        self.choice = ScorerChoice(labels, open_set, score)
        self.choice.warn_single_label()
        self.model_options, self.decode, self.engine, self.score = model, decode, engine, score
        self.store = store
        self.progress = progress
        self.paths: list[str] | None = None
        self.scorer: Scorer | None = None
        self.encoder: Encoder | None = None
        self.header: dict = {}
        self._records: Callable[[], Iterator[dict]] | None = None

    @property
    def labels(self) -> list[str]:
        """The names of the labels records rank (without --other's)."""
        return self.choice.names

    # --- opening: the model (or none), the store, the scorer -----------------------------------------------------
    @contextmanager
    def open(self, paths: Sequence[str] | None) -> Iterator[ClassifyRun]:
        """The run on these images (None: every image of the store): the model loaded (or not), the store open and
        locked for writing, the scorer chosen; closed (the store committed) on the way out, also on Ctrl-C."""
        from .errors import UsageError

        if paths is None and self.store is None:
            raise UsageError("no images given; name files or folders, or a --store to classify what it holds")
        self.paths = None if paths is None else list(paths)
        self.encoder, self.scorer, self.header = None, None, {}
        with ExitStack() as stack:
            stack.callback(setattr, self, "_records", None)  # closed: records() refuses, and so do its generators
            described = self._open_store_only() if self.paths is None else self._open_encoder(stack)
            self.header = self._header(described)
            yield self

    def _header(self, described: dict) -> dict:
        return self.choice.header(described, self.scorer, self.store)

    def _open_encoder(self, stack: ExitStack) -> dict:
        from .embeddings import open_encoder

        self.encoder = stack.enter_context(open_encoder(self.model_options, self.decode, self.engine,
                                                              self.store, images=len(self.paths)))
        self.scorer = self.choice.for_model(self.encoder.model, self.model_options, self.progress)
        self._records = self._file_records
        return self.encoder.describe()

    def _file_records(self) -> Iterator[dict]:
        """The inputs' records: each video's frames sampled and encoded, then scored as the video and its shots."""
        from .scoring import classify_files

        return classify_files(self.scorer, self.encoder, self.paths, self.score, self._classifying, self._on_adapt)

    def _open_store_only(self) -> dict:
        """Every stored image, scored from the store: without loading the model when the labels are cached or a
        head is given (and, with --other, the negative labels are cached)."""
        from .embeddings import load_model_for, store_model
        from .scoring import classify_store
        from .store import check_model, open_store

        reader = open_store(self.store)
        self.scorer = self.choice.for_store(reader, self.model_options)
        described = reader.describe()
        if self.scorer is None:
            loaded = load_model_for(self.model_options, self.store)
            check_model(reader.directory, reader.manifest, store_model(loaded))
            self.scorer, described = self.choice.for_model(loaded, self.model_options, self.progress), loaded.describe()
        self._records = lambda: classify_store(self.scorer, reader, self.score, self._classifying,
                                               on_adapt=self._on_adapt)
        return described

    # --- records ------------------------------------------------------------------------------------------------
    def records(self, shots: bool = True) -> Iterator[dict]:
        """One record per input, in input order (store order for a whole store), as each batch is scored; with
        --adapt, after the last image (the header's "adapt" is filled before the first record).  A video's record
        is followed by its shots' records (results.py), unless shots=False (sinks that act once per file)."""
        from .results import is_shot

        self._check_open()
        records = self._while_open(self._records())
        return records if shots else (record for record in records if not is_shot(record))

    def _check_open(self) -> None:
        if self._records is None:
            raise RuntimeError("a ClassifyRun gives records inside `with run.open(paths):` (its store and model are "
                               "closed outside it)")

    def _while_open(self, records: Iterator[dict]) -> Iterator[dict]:
        """The records, each only while the run is open: nothing is encoded, or written to a closed store, after."""
        while True:
            self._check_open()
            try:
                record = next(records)
            except StopIteration:
                return
            yield record

    @property
    def report(self) -> SyncReport | None:
        """What bringing the store up to date took (None without a store, or for a whole store)."""
        return None if self.encoder is None or self.encoder.store is None else self.encoder.report

    def _classifying(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(STAGES[2], done, total)

    def _on_adapt(self, adaptation: dict) -> None:
        self.header["adapt"] = adaptation
