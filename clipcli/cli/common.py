"""What every command shares: turning library errors into one-line messages and exit codes."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from typing import Callable, TypeVar

import typer

from ..errors import CacheWarning, ClipCliError, ClipCliWarning, EngineError
from . import output

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, (ClipCliWarning, CacheWarning)):
        output.warning(str(message))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a test runner swaps it between commands)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_our_warnings() -> None:
    """Our warnings as one `warning: ...` line on stderr, from the start of a command (labels are read while its
    options are parsed, before setup_reporting runs)."""
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", ClipCliWarning)
    warnings.simplefilter("always", CacheWarning)


def setup_reporting(verbose: bool = False) -> None:
    """Our warnings as one line on stderr; third-party logging and warnings only with --verbose."""
    show_our_warnings()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    if verbose:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    else:
        root.addHandler(logging.NullHandler())  # keeps open_clip's log lines off the terminal
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # it has a handler of its own
        warnings.filterwarnings("ignore", module="(torch|open_clip|timm|huggingface_hub).*")


def _quiet_broken_pipe() -> None:
    # The reader went away (`clip ... | head -1`): stop quietly, and keep Python from
    # complaining while it flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _engine_failure() -> str | None:
    """Why the Ray engine stopped the run, when it did (only looked up once that engine has run)."""
    engine = sys.modules.get("clipcli.engines.ray")
    return engine.cluster_failure() if engine is not None else None


def handles_errors(command: F) -> F:
    """User errors -> one line on stderr and their exit code; Ctrl-C -> 130; closed pipe -> quiet; a full or
    failing disk under any output (standard output, a head, a store) -> one line and WriteError's code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        show_our_warnings()
        try:
            return command(*args, **kwargs)
        except ClipCliError as exc:
            output.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            failure = _engine_failure()
            if failure is not None:  # not Ctrl-C: the Ray cluster failed mid-run (engines.ray.ClusterWatch)
                output.error(failure)
                raise typer.Exit(EngineError.exit_code) from None
            output.info("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(EXIT_OK) from None
        except SystemExit as exc:
            if not isinstance(exc.__context__, BrokenPipeError):
                raise
            raise typer.Exit(EXIT_OK) from None  # rich's Console ends a closed pipe with exit 1 (on_broken_pipe)
        except OSError as exc:
            from ..fsutil import disk_error

            error = disk_error(exc, exc.filename or "standard output")
            if error is None:
                raise
            if exc.filename is None:
                _quiet_broken_pipe()  # what is left in stdout's buffer must not fail again at exit
            output.error(str(error))
            raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


def refuse_same_file(files: dict) -> None:
    """Two outputs of one command (option name -> path or None) that are the same file: the second would
    overwrite the first in silence."""
    from ..errors import OutputPathError

    seen: dict = {}
    for name, path in files.items():
        if path is None:
            continue
        key = os.path.realpath(os.fspath(path))
        for other, (other_key, other_path) in seen.items():
            same = key == other_key
            if not same and os.path.exists(key) and os.path.exists(other_key):
                same = os.path.samefile(key, other_key)  # a hard link, or another name of one file
            if same:
                raise OutputPathError(f"{other} {other_path} and {name} {path} are the same file; give each its own")
        seen[name] = (key, path)


def warn_unknown_overlap(dataset: str, dataset_paths, unknown, unknown_paths) -> None:
    """`eval --unknown DIR` with DIR equal to or inside the dataset: its images are also scored as known classes,
    and the open-set figures mean nothing."""
    if unknown is None:
        return
    known = {os.path.realpath(p) for p in dataset_paths}
    shared = sum(os.path.realpath(p) in known for p in unknown_paths)
    root, folder = os.path.realpath(dataset), os.path.realpath(os.fspath(unknown))
    inside = os.path.isdir(root) and (folder == root or folder.startswith(root.rstrip(os.sep) + os.sep))
    if shared or inside:
        where = "is the dataset" if folder == root else ("is inside the dataset" if inside else "overlaps the dataset")
        output.warning(f"--unknown {unknown} {where} {dataset}: {shared} of its {len(unknown_paths)} images are also "
                       "scored as known classes; keep images of no class in a folder outside the dataset")
