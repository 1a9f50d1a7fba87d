"""Prompt-template sets: bundled YAML files in prompts/ or a user's own file.

A set is a YAML mapping with `name`, `description`, `source`, `language` (optional: the language code of
the templates, such as `zh`; the bundled sets without one are English) and `templates` (a list of sentences
with one `{}` or `{c}` placeholder for the label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import TemplateError, yaml_error_message
from .fsutil import parse_yaml, read_config_text, reason, yaml_text


@dataclass(frozen=True)
class TemplateSet:
    name: str
    description: str
    source: str
    templates: list[str]
    path: Path | None = None
    language: str | None = None  # as the file declares it; None when a user's file does not say

    def render(self, label: str) -> list[str]:
        """The label put into every template."""
        return [render_template(t, label) for t in self.templates]


_PLACEHOLDER = re.compile(r"\{c?\}")


def render_template(template: str, label: str) -> str:
    # one pass, so braces inside the label itself are never treated as placeholders
    return _PLACEHOLDER.sub(lambda _: label, template)


def bundled_dir() -> Path:
    """prompts/ as installed inside the package, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise TemplateError("the bundled prompt templates are missing; reinstall clipcli")


def bundled_names() -> list[str]:
    return sorted(p.stem for p in bundled_dir().glob("*.yaml"))


def list_template_sets() -> list[TemplateSet]:
    return [load_template_set(name) for name in bundled_names()]


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec or "\\" in spec


def load_template_set(spec: str) -> TemplateSet:
    """A bundled set by name (`imagenet`) or a YAML file by path."""
    if _looks_like_path(spec):
        path = Path(spec)
        if not path.is_file():
            raise TemplateError(f"template file not found: {spec}")
        return _parse_file(path)
    path = bundled_dir() / f"{spec}.yaml"
    if not path.is_file():
        import difflib

        close = difflib.get_close_matches(spec, bundled_names(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TemplateError(
            f"unknown template set {spec!r}; {hint}known sets: {', '.join(bundled_names())} "
            "(or give a path to your own .yaml file)")
    return _parse_file(path, default_language="en")


def _parse_file(path: Path, default_language: str | None = None) -> TemplateSet:
    """A template file: a regular file of at most 1 MiB, every template and field plain text."""
    import yaml

    try:
        data = parse_yaml(read_config_text(path))
    except yaml.YAMLError as exc:
        raise TemplateError(yaml_error_message(path, exc)) from None
    except OSError as exc:
        raise TemplateError(f"cannot read template file {path}: {reason(exc)}") from None
    except UnicodeDecodeError as exc:
        raise TemplateError(f"cannot read template file {path}: {exc}") from None
    if isinstance(data, list):  # a bare list of templates is accepted too
        data = {"templates": data}
    if not isinstance(data, dict) or not isinstance(data.get("templates"), list) or not data["templates"]:
        raise TemplateError(f"{path}: expected a mapping with a non-empty 'templates' list")
    templates = [yaml_text(t, path, f"template {n}", TemplateError) for n, t in enumerate(data["templates"], 1)]
    for template in templates:
        _check_template(path, template)
    name, description, source, language = (yaml_text(data.get(key) or "", path, key, TemplateError)
                                           for key in ("name", "description", "source", "language"))
    return TemplateSet(name or path.stem, description, source, templates, path, language or default_language)


def _check_template(path: Path, template: str) -> None:
    count = len(_PLACEHOLDER.findall(template))
    if count != 1:
        raise TemplateError(
            f"{path}: template {template!r} has {count} placeholders; each needs exactly one {{}} (or {{c}})")
