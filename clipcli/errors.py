"""The exceptions clipcli raises for things a user can fix.

The library raises these; only the command line turns them into one-line
messages and exit codes (see README, "Exit codes").
"""

from __future__ import annotations


class ClipCliError(Exception):
    """Base class: a problem the user can fix, with a message meant for people."""

    exit_code = 2


class UsageError(ClipCliError):
    """Bad options or arguments: no labels, an unknown template set, a bad flag value."""

    exit_code = 2


class TemplateError(UsageError):
    """A prompt-template set that cannot be found or is malformed."""


class LabelError(UsageError):
    """A label list or labels file that cannot be used."""


class InputError(UsageError):
    """Inputs that name no images at all (a missing path, an empty folder)."""


class OutputPathError(UsageError):
    """An output path (-o, --report, --store, --into, a head file) that cannot be written."""


class StoreError(ClipCliError):
    """An image-embedding store that cannot be used: unreadable manifest, missing store."""

    exit_code = 4


class StoreBusyError(StoreError):
    """Another clip process is writing the same store."""


class StoreModelError(UsageError):
    """A store made with one model, used with another: embeddings of two models are never mixed."""


class ModelLoadError(ClipCliError):
    """A model that cannot be resolved or loaded (unknown name, missing weights, bad checkpoint)."""

    exit_code = 3


class DeviceError(ClipCliError):
    """A requested device (cuda, mps) that this machine does not have."""

    exit_code = 3


class ExportError(ClipCliError):
    """A model's towers cannot be exported to ONNX (or their export does not match torch)."""

    exit_code = 3


class EngineError(ClipCliError):
    """The Ray engine cannot run: cluster unreachable, or inputs lost."""

    exit_code = 3


class ImageReadError(ClipCliError):
    """One image that cannot be read; in a batch it becomes an error record, not a failure."""

    exit_code = 1

    def __init__(self, path: str, message: str, kind: str = "unreadable") -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message
        self.kind = kind


class VideoReadError(ImageReadError):
    """One video that cannot be read (or not within its deadline): an ImageReadError, so a batch reports it as one
    record and goes on.  Kinds: not_a_video, no_video_stream, unsupported_codec, truncated, too_large, incomplete,
    timeout, decode_error, and those of images (not_found, permission_denied, not_a_file, ...)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line of text (its type's name when it has none), for a one-line error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def yaml_error_message(path, exc: Exception) -> str:
    """`FILE:LINE: malformed YAML (problem)` for a yaml.YAMLError, without importing yaml here."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    return f"{where}: malformed YAML ({getattr(exc, 'problem', None) or 'invalid YAML'})"


class CacheWarning(UserWarning):
    """The embedding cache could not be used; the run goes on without it."""


class ClipCliWarning(UserWarning):
    """Something the user should know (duplicate labels, truncated prompts)."""


class WriteError(ClipCliError):
    """An output that cannot be written because the disk is full or failing (no space, quota, I/O error)."""

    exit_code = 5


class HeadFileError(UsageError):
    """A few-shot head file that is damaged or crafted: missing keys, shapes that do not fit, non-finite values."""
