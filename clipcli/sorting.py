"""`clip sort`: file images into label folders, safely (stdlib only).

Two halves:
- the plan (pure but for read-only looks at the destination): records -> one Operation per image,
  with its destination file name, never an existing name; this is what `--dry-run` prints;
- the execution: the only code that touches the user's files.  Before each file operation a
  manifest line is written and flushed, so a sort can be reversed (`undo`) and a crash can be finished
  by running the same command again.

Safety rules: nothing is ever overwritten (a taken name gets a numbered suffix); a copy is written to a
hidden temporary file, fsynced, checked, then renamed into place, so a destination file is whole or
absent; a move is a rename on one filesystem, and a verified copy followed by unlinking the source
across filesystems.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import UsageError
from .fsutil import fsync_dir

MODES = ("copy", "move", "link", "symlink")
UNSURE_DIR = "_unsure"
TEMP_PREFIX = ".clip-sort-"
MAX_NAME_BYTES = 120
RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
UNSAFE = set('/\\:*?"<>|')


def safe_folder_name(label: str) -> str:
    """A label as one folder name that works on Linux, macOS and Windows filesystems."""
    text = unicodedata.normalize("NFC", label)
    text = "".join("_" if ch in UNSAFE or unicodedata.category(ch)[0] == "C" else ch for ch in text)
    text = text.strip().rstrip(". ")
    if not text or set(text) <= {"."}:
        text = "_"
    if text.split(".")[0].lower() in RESERVED:
        text = "_" + text
    while len(text.encode("utf-8")) > MAX_NAME_BYTES:
        text = text[:-1]
    return text.rstrip(". ") or "_"


def folder_names(labels: Sequence[str], unsure_dir: str = UNSURE_DIR) -> dict[str, str]:
    """label -> folder name; refuses two labels (or a label and the unsure folder) that would share a folder,
    also on case-insensitive filesystems."""
    names: dict[str, str] = {}
    seen: dict[str, str] = {safe_folder_name(unsure_dir).casefold(): f"the unsure folder {unsure_dir!r}"}
    for label in labels:
        name = safe_folder_name(label)
        key = name.casefold()
        if key in seen:
            raise UsageError(f"labels {seen[key]} and {label!r} would share the folder {name!r}; "
                             "rename one of them")
        seen[key] = repr(label)
        names[label] = name
    return names


@dataclass
class Operation:
    """One image's part of the plan (and, executed, its manifest line)."""

    source: str
    destination: str | None  # None: nothing to do (identical file already there, or an unreadable image)
    label: str | None
    score: float | None
    operation: str  # copy | move | link | symlink | skip | error
    folder: str | None = None
    unsure: bool = False
    note: str = ""  # why skipped, or the error
    size: int | None = None
    sha256: str | None = None

    def as_record(self) -> dict:
        """For output: paths as text (undecodable bytes as \\x escapes), no journal-only fields."""
        from .paths import display_path

        record = {k: v for k, v in asdict(self).items() if k not in ("size", "sha256")}
        for key in ("source", "destination"):
            if record[key] is not None:
                record[key] = display_path(record[key])
        return record


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_bytes(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(a) == os.path.getsize(b) and file_digest(a) == file_digest(b)
    except OSError:
        return False


def numbered(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{n}.{ext}" if dot and stem else f"{name}-{n}"


@dataclass
class SortRules:
    into: Path
    mode: str = "copy"
    min_score: float = 0.0
    min_margin: float = 0.0
    unsure_dir: str = UNSURE_DIR

    def check(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown --mode {self.mode!r}; use one of {', '.join(MODES)}")
        if not 0.0 <= self.min_score <= 1.0 or not 0.0 <= self.min_margin <= 1.0:
            raise UsageError("--min-score and --min-margin take a number from 0 to 1")


def refuse_remote(paths: Sequence[str]) -> list[str]:
    """The paths, when all are local files: sorting moves, copies and links files on this machine only."""
    from .remote import is_remote

    remote = next((p for p in paths if is_remote(p)), None)
    if remote is not None:
        raise UsageError(f"clip sort works on local files; {remote} is on object storage (copy it here first, or "
                         "use clip classify to get its labels)")
    return list(paths)


def plan_sort(paths: Sequence[str], records: Iterable[dict], labels: Sequence[str], rules: SortRules,
              exists: Callable[[Path], bool] = os.path.lexists,
              identical: Callable[[str, Path], bool] = same_bytes) -> list[Operation]:
    """Each path with its record (ranked predictions, best first) -> an operation, with absolute paths.
    Only looks at the destination."""
    rules.check()
    names = folder_names(labels, rules.unsure_dir)
    unsure_name = safe_folder_name(rules.unsure_dir)
    into = Path(os.path.abspath(rules.into))
    taken: set[Path] = set()
    plan = []
    for path, record in zip(paths, records, strict=True):
        source = os.path.abspath(path)
        if "error" in record:
            plan.append(Operation(source, None, None, None, "error", note=record["error"]["message"]))
            continue
        ranked = record["predictions"]
        label, score = ranked[0]["label"], ranked[0]["score"]
        margin = score - ranked[1]["score"] if len(ranked) > 1 else 1.0
        unsure = score < rules.min_score or margin < rules.min_margin
        folder = unsure_name if unsure else names[label]
        base = os.path.basename(source) or "image"
        candidate, n = into / folder / base, 1
        operation, note = rules.mode, ""
        while candidate in taken or exists(candidate):
            if candidate not in taken and identical(source, candidate):
                operation, note = "skip", f"identical file already at {candidate}"
                break
            n += 1
            candidate = into / folder / numbered(base, n)
        taken.add(candidate)
        plan.append(Operation(source, None if operation == "skip" else str(candidate), label, score, operation,
                              folder, unsure, note))
    return plan


class Manifest:
    """The sort's journal: one JSON line per operation, written and flushed before the operation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        cut = False
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                cut = existing.read(1) != b"\n"  # a run killed mid-line: end that line so ours start clean
        self.handle = open(path, "a", encoding="utf-8")
        if cut:
            self.handle.write("\n")

    def write(self, entry: dict) -> None:
        self.handle.write(json.dumps(entry) + "\n")  # ASCII escapes keep any file name, even non-UTF-8, exact
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def default_manifest(into: Path) -> Path:
    return into / f"clip-sort-{datetime.now().strftime('%Y%m%d-%H%M%S')}.jsonl"


def _copy_into_place(source: str, destination: Path) -> None:
    """Copy through a hidden temporary file in the destination folder: fsync, check the size, rename."""
    temp = destination.parent / f"{TEMP_PREFIX}{os.getpid()}-{destination.name}.tmp"
    try:
        with open(source, "rb") as src, open(temp, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        shutil.copystat(source, temp)
        if os.path.getsize(temp) != os.path.getsize(source):
            raise OSError(f"copy of {source} has the wrong size")
        _rename_new(temp, destination)
    finally:
        Path(temp).unlink(missing_ok=True)


def _rename_new(temp: Path | str, destination: Path) -> None:
    """Put a finished file at `destination` without ever replacing a file that appeared there meanwhile."""
    os.link(temp, destination)  # fails with FileExistsError instead of overwriting
    os.unlink(temp)


def same_filesystem(source: str, folder: Path) -> bool:
    return os.stat(source).st_dev == os.stat(folder).st_dev


def _move(source: str, destination: Path, digest: str) -> None:
    if same_filesystem(source, destination.parent):
        if os.path.lexists(destination):
            raise FileExistsError(str(destination))
        os.rename(source, destination)  # atomic on one filesystem
        return
    _copy_into_place(source, destination)
    if file_digest(destination) != digest:
        destination.unlink()
        raise OSError(f"copy of {source} does not match the original; source kept")
    os.unlink(source)


def execute(plan: Sequence[Operation], manifest: Manifest,
            progress: Callable[[int, int], None] | None = None) -> Iterator[Operation]:
    """Carry out the plan, journaling each operation first; yields each operation as done (or failed)."""
    made: set[Path] = set()
    for done, op in enumerate(plan, start=1):
        if op.operation in MODES:
            try:
                destination = Path(op.destination)
                if destination.parent not in made:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    made.add(destination.parent)
                if os.path.lexists(destination):  # appeared after planning: never overwrite
                    raise FileExistsError(f"{destination} appeared after planning; run the sort again")
                op.size = os.path.getsize(op.source)
                op.sha256 = file_digest(op.source)
                manifest.write(asdict(op))
                if op.operation == "copy":
                    _copy_into_place(op.source, destination)
                elif op.operation == "move":
                    _move(op.source, destination, op.sha256)
                elif op.operation == "link":
                    os.link(op.source, destination)
                else:
                    os.symlink(os.path.abspath(op.source), destination)
                fsync_dir(destination.parent)
            except OSError as exc:
                op.operation, op.note = "error", _reason(exc, op)
        if progress is not None:
            progress(done, len(plan))
        yield op


def _reason(exc: OSError, op: Operation) -> str:
    import errno

    if exc.errno == errno.EXDEV:
        return "cannot hard-link across filesystems; use --mode copy or --mode symlink"
    return f"{op.operation} failed: {exc.strerror or exc}"


def remove_temporaries(into: Path) -> None:
    """Hidden temporary copies left by an interrupted sort (never the user's files)."""
    if into.is_dir():
        for folder in [into, *(p for p in into.iterdir() if p.is_dir() and not p.is_symlink())]:
            for entry in folder.glob(f"{TEMP_PREFIX}*.tmp"):
                entry.unlink(missing_ok=True)


@dataclass
class UndoResult:
    restored: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def undo(manifest_path: Path, progress: Callable[[int, int], None] | None = None) -> UndoResult:
    """Reverse a sort from its manifest, newest operation first; per file, refuse anything changed since."""
    try:
        lines = manifest_path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read manifest {manifest_path}: {exc.strerror or exc}") from None
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: its operation never started
        if isinstance(entry, dict) and {"source", "destination", "operation", "sha256"} <= entry.keys():
            entries.append(entry)
    if lines and not entries:
        raise UsageError(f"{manifest_path} is not a clip sort manifest")
    result = UndoResult()
    folders: set[Path] = set()
    for done, entry in enumerate(reversed(entries), start=1):
        why = _undo_one(entry)
        if why is None:
            result.restored.append(entry["source"])
            folders.add(Path(entry["destination"]).parent)
        elif why:
            result.refused.append((entry["destination"], why))
        if progress is not None:
            progress(done, len(entries))
    for folder in sorted(folders, key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()  # only folders the sort left empty
        except OSError:
            pass
    return result


def _undo_one(entry: dict) -> str | None:
    """None: undone; "": nothing to undo (the operation never happened); else why it was refused."""
    source, destination, op = entry["source"], Path(entry["destination"]), entry["operation"]
    if not os.path.lexists(destination):
        return "" if op != "move" or os.path.exists(source) else "the moved file is no longer at its destination"
    if op == "symlink":
        if not destination.is_symlink() or os.readlink(destination) != os.path.abspath(source):
            return "the link was changed since the sort"
        destination.unlink()
        return None
    if destination.is_symlink() or file_digest(destination) != entry["sha256"]:
        return "changed since the sort; left as it is"
    if op == "move":
        if os.path.lexists(source):
            return f"{source} exists again; left as it is"
        Path(source).parent.mkdir(parents=True, exist_ok=True)
        if same_filesystem(str(destination), Path(source).parent):
            os.rename(destination, source)
        else:
            _copy_into_place(str(destination), Path(source))
            destination.unlink()
        return None
    if op == "link" and not os.path.exists(source):
        return "the original is gone; the link is its only copy, left as it is"
    destination.unlink()  # a copy (checked identical) or a hard link
    return None
