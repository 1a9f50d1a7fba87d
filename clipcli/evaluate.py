"""Accuracy on labelled images: datasets, and metrics defined as LAION's CLIP_benchmark defines them.

- acc1, acc5: top-1 / top-5 accuracy (acc5 only with at least 5 classes).
- mean_per_class_recall: recall averaged over the classes that have images (balanced accuracy).
- per class: precision, recall, support; the confusion matrix (rows: true class, columns: predicted).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .errors import InputError, UsageError, yaml_error_message
from .images import walk_images
from .paths import display_path, is_video_name
from .results import error_record
from .templates import TemplateSet
from .vectors import as_array

if TYPE_CHECKING:
    from .embeddings import Encoder
    from .heads import FewShotHead
    from .openset import OpenSetScorer
    from .options import ModelOptions
    from .run import ScorerChoice

Progress = Callable[[int, int], None]


@dataclass
class Dataset:
    paths: list[str]
    targets: list[int]  # index into class_names, per path
    class_names: list[str]  # label text used for prompts, one per class, all different


def folder_to_label(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip()


def _read_mapping(path: str | None) -> dict[str, str]:
    """Folder (or manifest) name -> label text, from .yaml/.json (a mapping) or .csv/.txt (name,label)."""
    if path is None:
        return {}
    from .fsutil import parse_yaml, read_config_text, reason, yaml_text

    source = Path(path)
    try:
        text = read_config_text(source)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class mapping {path}: {reason(exc)}") from None
    if source.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = parse_yaml(text)
        except yaml.YAMLError as exc:
            raise InputError(yaml_error_message(source, exc)) from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of folder name to label")
        return {str(k): yaml_text(v, path, f"the label of {k!r}", InputError) for k, v in data.items()}
    return {row[0].strip(): row[1].strip() for row in csv.reader(text.splitlines()) if len(row) >= 2}


def load_dataset(path: str, mapping_file: str | None = None) -> Dataset:
    """A folder with one subfolder per class, or a CSV / JSONL manifest of path,label."""
    mapping = _read_mapping(mapping_file)
    if os.path.isdir(path):
        return _image_folder(path, mapping)
    if os.path.isfile(path) and path.lower().endswith((".csv", ".jsonl")):
        return _manifest(path, mapping)
    raise InputError(f"{path}: a dataset is a folder of class subfolders, or a .csv / .jsonl manifest")


def _image_folder(root: str, mapping: dict[str, str]) -> Dataset:
    try:
        folders = sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and _is_folder(e))
    except OSError as exc:
        raise InputError(f"cannot list {root}: {exc.strerror or exc}") from None
    if not folders:
        raise InputError(f"{root}: no class subfolders (expected {root}/<class name>/<images>)")
    paths, targets = [], []
    for index, folder in enumerate(folders):
        for image in walk_images(os.path.join(root, folder), videos=False):  # a labelled set is of images
            paths.append(image)
            targets.append(index)
    if not paths:
        raise InputError(f"{root}: the class subfolders hold no images")
    return Dataset(paths, targets, _unique_names(root, [mapping.get(f, folder_to_label(f)) for f in folders]))


def _is_folder(entry: os.DirEntry) -> bool:
    """A class subfolder (a looping or broken symlink is none)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _manifest(path: str, mapping: dict[str, str]) -> Dataset:
    base = Path(path).parent
    rows: list[tuple[str, str]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        if path.lower().endswith(".jsonl"):
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        item = json.loads(line)
                        rows.append((str(item["path"]), str(item["label"])))
                    except (ValueError, KeyError, TypeError):
                        raise InputError(f"{path}:{number}: expected {{\"path\": ..., \"label\": ...}}") from None
        else:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise InputError(f"{path}: the CSV needs a header with 'path' and 'label' columns")
            rows = [(row["path"], row["label"]) for row in reader]
    if not rows:
        raise InputError(f"{path}: the manifest lists no images")
    videos = [p for p, _ in rows if is_video_name(p)]
    if videos:  # a label is one picture's: a video's shots may each show something else
        raise InputError(f"{path}: lists {len(videos)} video(s) ({videos[0]}, ...); a labelled set is of images: "
                         "leave the videos out, or classify them with `clip classify`")
    raw_names = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(raw_names)}
    paths = [p if os.path.isabs(p) else str(base / p) for p, _ in rows]
    return Dataset(paths, [index[label] for _, label in rows], _unique_names(path, [mapping.get(n, n) for n in raw_names]))


def _unique_names(source: str, names: list[str]) -> list[str]:
    """Two classes with one label text could not be told apart (and would be merged as labels)."""
    seen: set[str] = set()
    clashes = sorted({name for name in names if name in seen or seen.add(name)})
    if clashes:
        raise InputError(f"{source}: several classes have the label {', '.join(map(repr, clashes))}; "
                         "rename the folders or give each its own text with --mapping")
    return names


def percent(value: float | None) -> str:
    """A metric for people: 99.5%, or a dash for a metric that does not apply (acc5 with < 5 classes)."""
    return "–" if value is None else f"{value:.1%}"


@dataclass
class Metrics:
    acc1: float
    acc5: float | None
    mean_per_class_recall: float
    per_class: list[dict]
    confusion: list[list[int]]
    count: int

    def as_dict(self) -> dict:
        return {"acc1": self.acc1, "acc5": self.acc5, "mean_per_class_recall": self.mean_per_class_recall,
                "count": self.count, "per_class": self.per_class, "confusion_matrix": self.confusion}


def compute_metrics(targets: Sequence[int], ranked: Sequence[Sequence[int]], class_names: Sequence[str]) -> Metrics:
    """targets: true class per image; ranked: class indexes per image, best first (at least the top 5)."""
    n = len(class_names)
    count = len(targets)
    confusion = [[0] * n for _ in range(n)]
    top1 = top5 = 0
    for truth, order in zip(targets, ranked):
        confusion[truth][order[0]] += 1
        top1 += order[0] == truth
        top5 += truth in order[:5]
    per_class = []
    recalls = []
    for c, name in enumerate(class_names):
        support = sum(confusion[c])
        predicted = sum(row[c] for row in confusion)
        hits = confusion[c][c]
        recall = hits / support if support else None
        if recall is not None:
            recalls.append(recall)
        per_class.append({"label": name, "precision": hits / predicted if predicted else 0.0,
                          "recall": recall, "support": support})
    return Metrics(
        acc1=top1 / count if count else 0.0,
        acc5=(top5 / count if count else 0.0) if n >= 5 else None,
        mean_per_class_recall=sum(recalls) / len(recalls) if recalls else 0.0,
        per_class=per_class,
        confusion=confusion,
        count=count,
    )


@dataclass
class EvalResult:
    templates: TemplateSet
    metrics: Metrics
    mistakes: list[dict]  # the most confident wrong predictions, most confident first
    calibration: dict | None = None  # ece and the reliability bins of the top-1 confidence (calibration)
    open_set: dict | None = None  # with --other or unknown images: calibration.open_set_metrics
    adapt: dict | None = None  # what --adapt did (clipcli.adapt), when asked


def encode_dataset(encoder: "Encoder", paths: Sequence[str],
                   progress: Progress | None = None) -> tuple[list[int], np.ndarray | None, list[dict]]:
    """(indexes of the readable paths, their features stacked, error records of the others)."""
    from .batches import flat_items

    kept, features, errors = [], [], []
    for index, (item, vector) in enumerate(flat_items(encoder.batches(paths, progress))):
        if item.error:
            errors.append(error_record(display_path(item.path), *item.error))
        else:
            kept.append(index)
            features.append(vector)
    return kept, (np.stack(features) if features else None), errors


def head_scorer(head: "FewShotHead", dataset: Dataset) -> tuple[TemplateSet, list[str], list[int]]:
    """A head as an evaluation's scorer: (its template set, its classes, dataset class -> head class)."""
    position = {label: i for i, label in enumerate(head.labels)}
    unknown = [name for name in dataset.class_names if name not in position]
    if unknown:
        raise UsageError(f"the dataset has classes the head does not know: {', '.join(map(repr, unknown[:5]))}; "
                         "fit the head on these classes, or map folder names to its labels with --mapping")
    templates = TemplateSet(f"head:{head.method}", "few-shot head", "", head.meta.get("templates", []))
    return templates, head.labels, [position[name] for name in dataset.class_names]


def evaluate(encoder: "Encoder", dataset: Dataset, choices: Sequence["ScorerChoice"],
             model: "ModelOptions | None" = None, progress: Progress | None = None, mistakes: int = 12,
             unknown: Sequence[str] = (), adapt: bool = False) -> tuple[list[EvalResult], list[dict]]:
    """Accuracy of each scorer choice (a template set over the dataset's class names, or a few-shot head) on the
    dataset; images are encoded once for all.  Every result has its calibration; with the open set on in the
    choices (--other, or `unknown` images that belong to no class), its open-set metrics too.  adapt: the scores
    after a transductive pass over all the dataset's images (`adapt`; the unknown images are not part of it), per
    choice.

    Returns the results and the error records of images that could not be read (left out of the metrics)."""
    from .scoring import ranked

    scorers = [(choice, choice.for_model(encoder.model, model),
                head_scorer(choice.head, dataset) if choice.head is not None else
                (choice.template_set, dataset.class_names, list(range(len(dataset.class_names)))))
               for choice in choices]
    kept, stacked, errors = encode_dataset(encoder, dataset.paths, progress)
    if stacked is None:
        return [], errors
    unknown_features = None
    if unknown:
        _, unknown_features, unknown_errors = encode_dataset(encoder, unknown)
        errors += unknown_errors
    results = []
    for number, (choice, scorer, (templates, classes, to_scorer)) in enumerate(scorers):
        targets = [to_scorer[dataset.targets[i]] for i in kept]
        adaptation = None
        if adapt:
            from .adapt import adapted_scores

            probabilities, adaptation = adapted_scores(scorer, stacked, "softmax", warn=number == 0)
            probabilities = as_array(probabilities)
        else:
            probabilities = as_array(scorer.scores(stacked, "softmax"))
        top = ranked(probabilities, min(5, len(classes)))[1].tolist()
        wrong = [(float(probabilities[row, order[0]]), row, order[0]) for row, order in enumerate(top)
                 if order[0] != targets[row]]
        top_wrong = [{"path": display_path(dataset.paths[kept[row]]), "true": classes[targets[row]],
                      "predicted": classes[predicted], "confidence": confidence}
                     for confidence, row, predicted in sorted(wrong, reverse=True)[:mistakes]]
        result = EvalResult(templates, compute_metrics(targets, top, classes), top_wrong)
        result.calibration = calibration_of(probabilities, targets)
        if choice.open_set.enabled:
            result.open_set = open_set_of(scorer, stacked, unknown_features, targets, top)
        if adaptation is not None:
            result.adapt = adaptation.as_header(classes)
        results.append(result)
    return results, errors


def calibration_of(probabilities: np.ndarray, targets: Sequence[int]) -> dict:
    """ECE (15 bins) and the reliability bins of the top-1 softmax confidence."""
    from .calibration import BINS, expected_calibration_error, reliability

    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(targets)
    return {"ece": expected_calibration_error(confidence, correct, BINS), "bins": BINS,
            "reliability": reliability(confidence, correct, BINS)}


def open_set_of(scorer: "OpenSetScorer", known, unknown, targets, top) -> dict:
    """The open-set metrics of a scorer with the --other rule, on the known (and unknown) images."""
    from .calibration import open_set_metrics

    correct = [order[0] == truth for order, truth in zip(top, targets)]
    metrics = open_set_metrics(scorer.other_scores(known), scorer.other_scores(unknown) if unknown is not None else [],
                               correct, scorer.threshold)
    return {"label": scorer.label, "negatives": len(scorer.negatives), **metrics}
