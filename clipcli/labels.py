"""Label lists: from a comma-separated string (CSV quoting) or a labels file.

A label has a name (what is printed) and the texts that go into the templates:
the name itself plus any synonyms or descriptions given in a YAML mapping.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import ClipCliWarning, LabelError, yaml_error_message
from .fsutil import parse_yaml, read_config_text, reason, yaml_text


@dataclass(frozen=True)
class Label:
    name: str
    texts: tuple[str, ...]

    @classmethod
    def plain(cls, name: str) -> "Label":
        return cls(name, (name,))


def parse_labels(text: str) -> list[Label]:
    """`a,b,"c, with comma"` -> three labels.  Blank and duplicate labels are dropped with a warning."""
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True, strict=True))
    except csv.Error as exc:
        raise LabelError(f"cannot parse --labels ({exc}); quote labels that contain commas: 'a,\"b, c\"'") from None
    names = [cell for row in rows for cell in row]
    return clean_labels([Label.plain(name.strip()) for name in names])


def load_labels_file(path: str | Path) -> list[Label]:
    """A .txt file (one label per line, # comments) or a .yaml file (a list, or label -> synonyms); a regular
    file of at most 1 MiB."""
    path = Path(path)
    try:
        content = read_config_text(path, encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError(f"labels file not found: {path}") from None
    except OSError as exc:
        raise LabelError(f"cannot read labels file {path}: {reason(exc)}") from None
    except UnicodeDecodeError as exc:
        raise LabelError(f"cannot read labels file {path}: {exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return clean_labels(_labels_from_yaml(path, content))
    lines = (line.strip() for line in content.splitlines())
    return clean_labels([Label.plain(line) for line in lines if line and not line.startswith("#")])


def _labels_from_yaml(path: Path, content: str) -> list[Label]:
    import yaml

    try:
        data = parse_yaml(content)
    except yaml.YAMLError as exc:
        raise LabelError(yaml_error_message(path, exc)) from None
    if isinstance(data, list):
        return [Label.plain(_text(path, item, f"label {n}")) for n, item in enumerate(data, 1) if item is not None]
    if isinstance(data, dict):
        labels = []
        for name, extra in data.items():
            name = _text(path, name, "a label name")
            if extra is None:
                extra = []
            elif isinstance(extra, str):
                extra = [extra]
            elif not isinstance(extra, list):
                raise LabelError(f"{path}: the value of {name!r} must be a list of synonyms or descriptions")
            synonyms = (_text(path, e, f"a synonym of {name!r}") for e in extra)
            labels.append(Label(name, tuple(_unique([name, *(s for s in synonyms if s)]))))
        return labels
    raise LabelError(f"{path}: expected a list of labels or a mapping label -> synonyms")


def _text(path: Path, value, what: str) -> str:
    return yaml_text(value, path, what, LabelError).strip()


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def clean_labels(labels: list[Label]) -> list[Label]:
    """Drop blank labels and later duplicates (same name), warning about each kind once."""
    kept: dict[str, Label] = {}
    blanks = 0
    duplicates = []
    for label in labels:
        if not label.name:
            blanks += 1
        elif label.name in kept:
            duplicates.append(label.name)
        else:
            kept[label.name] = label
    if blanks:
        warnings.warn(f"ignored {blanks} blank label(s)", ClipCliWarning, stacklevel=2)
    if duplicates:
        shown = ", ".join(repr(d) for d in _unique(duplicates))
        warnings.warn(f"ignored duplicate label(s): {shown}", ClipCliWarning, stacklevel=2)
    return list(kept.values())


def require_labels(labels: list[Label]) -> list[Label]:
    if not labels:
        raise LabelError('no labels given; use --labels "cat,dog" or --labels-file labels.txt')
    return labels


def as_labels(labels: Iterable[str | Label]) -> list[Label]:
    """Labels from texts (or Labels), cleaned (blank and duplicate ones dropped, with a warning); one line when none
    is left."""
    return require_labels(clean_labels([x if isinstance(x, Label) else Label.plain(str(x).strip()) for x in labels]))


def check_other_label(label: str, labels: Sequence[str]) -> None:
    """--other-label must not be one of the labels (its name and threshold are checked by `OpenSetOptions`)."""
    if any(label.casefold() == existing.casefold() for existing in labels):
        raise LabelError(f"--other-label {label!r} is one of the labels; pick another name with --other-label")
