"""Few-shot heads: what `clip fit` makes, a scorer of its own (numpy only).

A head scores L2-normalised image features into its labels, like the zero-shot classifier: its logits are the
zero-shot logits of its labels' text embeddings, plus what it learned from a few labelled images per class
(`fewshot` fits them).  A head file (safetensors) holds the tensors and, as JSON metadata, every fact about the
head; `load_head` checks a file whole, so a damaged or crafted one is one error, never a crash or NaN scores.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import HeadFileError, UsageError
from .scoring import ScorerBase
from .vectors import as_array, unit_rows

METHODS = ("gda", "logistic", "tip-adapter", "zero-shot")


@dataclass
class FewShotHead(ScorerBase):
    """A fitted head: scores images into its labels (a `scoring.Scorer`, like the zero-shot classifier)."""

    labels: list[str]
    method: str
    label_embeddings: np.ndarray  # [C, d] the labels' zero-shot text embeddings, L2-normalised, float32
    logit_scale: float
    params: dict = field(default_factory=dict)  # chosen hyper-parameters
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # weight, bias, keys, values (float32)
    meta: dict = field(default_factory=dict)  # model identity, shots, seed, cv accuracy, ...
    logit_bias = None

    def logits(self, features) -> np.ndarray:
        x = as_array(features)
        t = {k: as_array(v) for k, v in self.tensors.items()}
        zero_shot = self.logit_scale * x @ as_array(self.label_embeddings).T
        if self.method == "zero-shot":
            return zero_shot
        if self.method == "logistic":
            return x @ t["weight"].T + t["bias"]
        if self.method == "gda":
            return zero_shot + self.params["alpha"] * (x @ t["weight"].T + t["bias"])
        if self.method == "tip-adapter":
            affinity = np.exp(-self.params["beta"] * (1 - x @ t["keys"].T))
            return zero_shot + self.params["alpha"] * affinity @ t["values"]
        raise UsageError(f"unknown few-shot method {self.method!r}")

    def check_score(self, score: str) -> None:
        if score != "softmax":
            raise UsageError("a few-shot head gives softmax scores; use --score softmax with --head")

    def scores(self, features, score: str = "softmax") -> np.ndarray:
        """Softmax probabilities [N, labels], float32, for features [N, dim] (numpy or torch)."""
        self.check_score(score)
        logits = self.logits(features)
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)

    def predict(self, features) -> np.ndarray:
        return self.logits(features).argmax(axis=-1)


HEAD_TENSORS = {"zero-shot": (), "gda": ("weight", "bias"), "logistic": ("weight", "bias"),
                "tip-adapter": ("keys", "values")}
HEAD_PARAMS = {"zero-shot": (), "gda": ("alpha",), "logistic": (), "tip-adapter": ("alpha", "beta")}
TENSOR_SHAPES = {"text": "cd", "weight": "cd", "bias": "c", "keys": "nd", "values": "nc"}  # c labels, d features
HEAD_TEXT_FIELDS = ("model", "model_key", "templates_name")


def save_head(head: FewShotHead, path: str | Path) -> None:
    """safetensors: the tensors, and every fact about the head as JSON in the metadata; written atomically."""
    from safetensors.numpy import save

    from .fsutil import atomic_write_bytes

    tensors = {"text": np.ascontiguousarray(as_array(head.label_embeddings)),
               **{k: np.ascontiguousarray(as_array(v)) for k, v in head.tensors.items()}}  # float32, as before
    document = {"format": "clipcli-head", "version": 1, "labels": head.labels, "method": head.method,
                "logit_scale": head.logit_scale, "params": head.params, **head.meta}
    atomic_write_bytes(path, save(tensors, metadata={"clipcli": json.dumps(document, ensure_ascii=False)}))


def load_head(path: str | Path) -> FewShotHead:
    """A head file from save_head, checked whole (see _head_problem): a damaged or crafted file is one
    HeadFileError here, never a crash or NaN scores later."""
    from safetensors.numpy import load

    from .errors import first_line
    from .fsutil import open_regular, reason

    try:
        with open_regular(path) as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UsageError(f"--head {path}: file not found") from None
    except OSError as exc:
        raise UsageError(f"--head {path}: cannot read ({reason(exc)})") from None
    try:
        tensors = load(data)  # checks the safetensors layout before the header is read below
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        document = json.loads((header.get("__metadata__") or {}).get("clipcli", "{}"))
    except Exception as exc:  # not safetensors, or damaged
        raise UsageError(f"--head {path}: not a head file ({first_line(exc, 120)})") from None
    if not isinstance(document, dict) or document.get("format") != "clipcli-head":
        raise UsageError(f"--head {path}: not a clipcli head (make one with `clip fit`)")
    problem = _head_problem(document, tensors)
    if problem:
        raise HeadFileError(f"head {path} is damaged: {problem}")
    meta = {k: v for k, v in document.items() if k not in ("format", "version", "labels", "method", "logit_scale",
                                                            "params")}
    return FewShotHead(document["labels"], document["method"], tensors["text"], float(document["logit_scale"]),
                       document["params"], {key: tensors[key] for key in HEAD_TENSORS[document["method"]]}, meta)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _head_problem(document: dict, tensors: dict) -> str | None:
    """What makes a head document and its tensors unusable, or None: the method's keys, finite numbers, text
    metadata, and tensor shapes that fit each other and the labels."""
    labels, method, params = document.get("labels"), document.get("method"), document.get("params")
    if method not in HEAD_TENSORS:
        return f"unknown method {method!r}"
    if (not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels)
            or len(set(labels)) != len(labels)):
        return "labels must be a non-empty list of distinct texts"
    if not _finite(document.get("logit_scale")):
        return "logit_scale must be a finite number"
    if (not isinstance(params, dict) or not all(_finite(v) for v in params.values())
            or not set(HEAD_PARAMS[method]) <= params.keys()):
        return f"params must be finite numbers; a {method} head needs {' and '.join(HEAD_PARAMS[method]) or 'none'}"
    for key in HEAD_TEXT_FIELDS:
        if document.get(key) is not None and not isinstance(document[key], str):
            return f"{key} must be text"
    sizes = {"c": len(labels)}
    for key in ("text", *HEAD_TENSORS[method]):
        tensor = tensors.get(key)
        if tensor is None:
            return f"tensor {key!r} is missing"
        shape = TENSOR_SHAPES[key]
        if tensor.ndim != len(shape) or any(sizes.setdefault(name, n) != n for name, n in zip(shape, tensor.shape)):
            return (f"tensor {key!r} has shape {list(tensor.shape)}, which does not fit {len(labels)} labels "
                    "and the other tensors")
        if not np.issubdtype(tensor.dtype, np.floating) or not bool(np.isfinite(tensor).all()):
            return f"tensor {key!r} must hold finite floating-point numbers"
    return None


def check_head_model(head: FewShotHead, path, model_key: str, model_name: str) -> None:
    if head.meta.get("model_key") != model_key:
        raise UsageError(f"head {path} was fitted on model {head.meta.get('model', '?')}; this run uses "
                         f"{model_name}. Use the head's model (--model {head.meta.get('model', '?')})")


def accuracy(head: FewShotHead, features, targets: Sequence[int]) -> float:
    if not len(targets):
        return math.nan
    predicted = head.predict(unit_rows(as_array(features)))
    return float((predicted == np.asarray([int(t) for t in targets])).mean())
