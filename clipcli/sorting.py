"""`clip sort`: file images into label folders, safely (stdlib only).

Two halves:
- the plan (pure but for read-only looks at the destination): records -> one Operation per image,
  with its destination file name, never an existing name; this is what `--dry-run` prints;
- the execution: the only code that touches the user's files.  Each file operation is journaled in
  the manifest, so a sort can be reversed (`undo`) and a crash can be finished by running the same
  command again.

The manifest: one JSON line per operation, written in two fsynced parts.  Before the operation: the
Operation's fields plus `id` (a fresh uuid, which also names the operation's temporary file
`.clip-sort-<id>.tmp`), `source_id` (the source's st_dev, st_ino, st_size, st_mtime_ns) and, for a
symlink source, `link` (its text), with the closing brace left off.  After it: `"destination_id"` (the
same four numbers for the file it made) and the brace, or the brace alone when it failed.  A line
without `destination_id` was never journaled as done; one left open was cut short by a crash.  Manifests
of the first format (no id, no identities) are still read, with the safe choices.

Safety rules: nothing is ever overwritten (a taken name gets a numbered suffix); a copy is written to a
hidden temporary file, fsynced, checked, then renamed into place, so a destination file is whole or
absent; a move is a rename on one filesystem, and a verified copy followed by unlinking the source
across filesystems.  Moving a symlink files a copy of the image it points to and removes the link (the
target is never moved: it may lie outside the inputs, or be an input itself; undo puts the link back).
Only temporaries named in a manifest are ever deleted, and a label folder that is a symlink is refused.
Undo removes a copy or link only while its original still holds the same bytes, and moves a file back
only while it is still the file the sort made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import unicodedata
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import InputError, OutputPathError, UsageError
from .fsutil import fsync_dir

MODES = ("copy", "move", "link", "symlink")
UNSURE_DIR = "_unsure"
TEMP_PREFIX = ".clip-sort-"
DONE_KEY = ', "destination_id"'  # never inside a JSON string, whose quotes are escaped
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
    resumed: bool = False  # a move interrupted after its copy was made: only the source's unlink is left

    def as_record(self) -> dict:
        """For output: paths as text (undecodable bytes as \\x escapes), no journal-only fields."""
        from .paths import display_path

        record = {k: v for k, v in asdict(self).items() if k not in ("size", "sha256", "resumed")}
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


def identity(path: str | os.PathLike) -> list[int]:
    """What tells one file from another at a path: st_dev, st_ino, st_size, st_mtime_ns (the path itself)."""
    st = os.lstat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


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
    other_label: str | None = None  # --other: images answered with it go to its own folder, never unsure

    def folder_labels(self, labels: Sequence[str]) -> list[str]:
        """The labels that get a folder: the scorer's, and the other label with --other."""
        return [*labels, *([self.other_label] if self.other_label is not None else [])]

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


def outside_into(paths: Sequence[str], into: Path) -> list[str]:
    """The paths not inside `into` (a sort never takes up its own output); refuses inputs that all are."""
    inside = os.path.realpath(into) + os.sep
    kept = [p for p in paths if not os.path.realpath(p).startswith(inside)]
    if paths and not kept:
        raise InputError(f"every input is inside --into {into}, where the sorted images go, so none would be "
                         "sorted; give --into a folder outside the inputs")
    return kept


def plan_sort(paths: Sequence[str], records: Iterable[dict], labels: Sequence[str], rules: SortRules,
              exists: Callable[[Path], bool] = os.path.lexists,
              identical: Callable[[str, Path], bool] = same_bytes, manifest: Path | None = None) -> list[Operation]:
    """Each path with its record (ranked predictions, best first) -> an operation, with absolute paths.
    Only looks at the destination (and its manifests, or `manifest`, for moves to finish)."""
    rules.check()
    names = folder_names(rules.folder_labels(labels), rules.unsure_dir)
    unsure_name = safe_folder_name(rules.unsure_dir)
    into = Path(os.path.abspath(rules.into))
    refuse_linked_folders(into, [*names.values(), unsure_name])
    unfinished = unfinished_moves(into, manifest) if rules.mode == "move" else set()
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
        unsure = (score < rules.min_score or margin < rules.min_margin) and label != rules.other_label
        folder = unsure_name if unsure else names[label]
        base = os.path.basename(source) or "image"
        candidate, n = into / folder / base, 1
        operation, note, resumed = rules.mode, "", False
        while candidate in taken or exists(candidate):
            if candidate not in taken and identical(source, candidate):
                if (source, str(candidate)) in unfinished:
                    note, resumed = "finishing a move that was interrupted", True
                else:
                    operation, note = "skip", f"identical file already at {candidate}"
                break
            n += 1
            candidate = into / folder / numbered(base, n)
        taken.add(candidate)
        plan.append(Operation(source, None if operation == "skip" else str(candidate), label, score, operation,
                              folder, unsure, note, resumed=resumed))
    return plan


def refuse_linked_folders(into: Path, folders: Iterable[str]) -> None:
    """A label folder that is a symlink would send files outside `into`: refused."""
    linked = next((name for name in folders if (into / name).is_symlink()), None)
    if linked is not None:
        raise OutputPathError(f"--into {into}: the label folder {linked!r} is a symbolic link (files would land "
                              "outside --into); replace it with a real folder or choose another --into")


def unfinished_moves(into: Path, manifest: Path | None = None) -> set[tuple[str, str]]:
    """(source, destination) of the moves journaled as started but never done, in `into`'s manifests, whose
    source is still the very file the move started from."""
    return {(e["source"], e["destination"]) for entries in manifests_of(into, manifest) for e in entries
            if e["operation"] == "move" and "source_id" in e and "destination_id" not in e
            and _is_file(e["source"], e["source_id"])}


def _is_file(path: str, journaled: list[int]) -> bool:
    """Whether the file at `path` is still the one journaled (the same identity)."""
    try:
        return identity(path) == journaled
    except OSError:
        return False


class Journal:
    """A journal of file operations, shared by `clip sort` and `clip tag`: one JSON line per operation, begun
    (fsynced) before it with the closing brace left off, and closed (fsynced) after it with `, "DONE": value}` or
    the brace alone.  Locked while written: two runs' half-written lines never interleave."""

    def __init__(self, path: Path, command: str = "clip sort") -> None:
        import fcntl

        self.path = path
        self.handle = open(path, "a", encoding="utf-8")
        try:  # two runs' half-written lines must never interleave
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise OutputPathError(f"manifest {path} is being written by another {command}; wait for it to finish, "
                                  "or give another --manifest") from None
        cut = False
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                cut = existing.read(1) != b"\n"  # a run killed mid-line: end that line so ours start clean
        if cut:
            self.handle.write("\n")

    def _append(self, text: str) -> None:
        self.handle.write(text)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def begin_entry(self, entry: dict) -> None:
        """Journal an operation about to start, its line left open until `end_entry`."""
        # ASCII escapes keep any file name, even non-UTF-8, exact
        self._append(json.dumps(entry)[:-1])

    def end_entry(self, done_key: str | None = None, value: object = None) -> None:
        """Close the open line: done (with `done_key` and its value), or (None) not done."""
        self._append((f", {json.dumps(done_key)}: {json.dumps(value)}" if done_key is not None else "") + "}\n")

    def close(self) -> None:
        self.handle.close()


class Manifest(Journal):
    """The sort's journal: one JSON line per operation, begun before it and closed after it (see the module's
    docstring)."""

    def begin(self, op: Operation) -> str:
        """Journal an operation about to start, its line left open until `end`; returns its id."""
        key = uuid.uuid4().hex
        link = {"link": os.readlink(op.source)} if os.path.islink(op.source) else {}
        self.begin_entry({**asdict(op), "id": key, "source_id": identity(op.source), **link})
        return key

    def end(self, made: Path | None) -> None:
        """Close the open line: done, with the identity of the file `made`, or (None) not done."""
        try:
            made_id = identity(made) if made is not None else None
        except OSError:
            made_id = None
        self.end_entry("destination_id" if made_id is not None else None, made_id)


def default_manifest(into: Path) -> Path:
    return into / f"clip-sort-{datetime.now().strftime('%Y%m%d-%H%M%S')}.jsonl"


def temp_name(key: str | None) -> str:
    """The temporary file of the journaled operation `key` (a fresh name where an old manifest has no id)."""
    return f"{TEMP_PREFIX}{key or uuid.uuid4().hex}.tmp"


def _copy_into_place(source: str, destination: Path, temp: Path) -> None:
    """Copy through a hidden temporary file in the destination folder: fsync, check the size, rename."""
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


def _move(source: str, destination: Path, digest: str, temp: Path) -> None:
    """A rename on one filesystem; else (and for a symlink: its image's bytes) copy, verify, unlink."""
    if not os.path.islink(source) and same_filesystem(source, destination.parent):
        if os.path.lexists(destination):
            raise FileExistsError(str(destination))
        os.rename(source, destination)  # atomic on one filesystem
        return
    _copy_into_place(source, destination, temp)
    if file_digest(destination) != digest:
        destination.unlink()
        raise OSError(f"copy of {source} does not match the original; source kept")
    os.unlink(source)


def _finish_move(source: str, destination: Path, digest: str) -> None:
    """The rest of a move interrupted after its copy: unlink the source, the copy still holding its bytes."""
    if file_digest(destination) != digest:
        raise OSError(f"{destination} no longer matches the original; source kept")
    os.unlink(source)


def execute(plan: Sequence[Operation], manifest: Manifest,
            progress: Callable[[int, int], None] | None = None) -> Iterator[Operation]:
    """Carry out the plan, journaling each operation; yields each operation as done (or failed)."""
    folders: set[Path] = set()
    for done, op in enumerate(plan, start=1):
        if op.operation in MODES:
            try:
                _carry_out(op, manifest, folders)
            except OSError as exc:
                op.operation, op.note = "error", _reason(exc, op)
        if progress is not None:
            progress(done, len(plan))
        yield op


def _carry_out(op: Operation, manifest: Manifest, folders: set[Path]) -> None:
    """One operation, inside its manifest line (begun before, closed after)."""
    destination = Path(op.destination)
    if destination.parent not in folders:
        destination.parent.mkdir(parents=True, exist_ok=True)
        folders.add(destination.parent)
    if os.path.lexists(destination) and not op.resumed:  # appeared after planning: never overwrite
        raise FileExistsError(f"{destination} appeared after planning; run the sort again")
    op.size = os.path.getsize(op.source)
    op.sha256 = file_digest(op.source)
    temp = destination.parent / temp_name(manifest.begin(op))
    made = None
    try:
        if op.resumed:
            _finish_move(op.source, destination, op.sha256)
        elif op.operation == "copy":
            _copy_into_place(op.source, destination, temp)
        elif op.operation == "move":
            _move(op.source, destination, op.sha256, temp)
        elif op.operation == "link":
            os.link(op.source, destination)
        else:
            os.symlink(os.path.abspath(op.source), destination)
        fsync_dir(destination.parent)
        made = destination
    finally:
        manifest.end(made)


def _reason(exc: OSError, op: Operation) -> str:
    import errno

    if exc.errno == errno.EXDEV:
        return "cannot hard-link across filesystems; use --mode copy or --mode symlink"
    return f"{op.operation} failed: {exc.strerror or exc}"


def read_journal(path: Path) -> list[dict]:
    """A manifest's operations, oldest first (see the module's docstring)."""
    return read_entries(path, {"source", "destination", "operation", "sha256"}, "a clip sort manifest", DONE_KEY)


def read_entries(path: Path, keys: set[str], what: str, done_key: str) -> list[dict]:
    """A journal's entries that have `keys`, oldest first; a line left open by a crash reads as not done (its
    part before `done_key`).  Refuses a file none of whose lines is an entry (it is not `what`)."""
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not {what}") from None
    entries = [entry for entry in (_parse_line(line, done_key) for line in lines)
               if isinstance(entry, dict) and keys <= entry.keys()]
    if lines and not entries:
        raise UsageError(f"{path} is not {what}")
    return entries


def _parse_line(line: str, done_key: str = DONE_KEY) -> object:
    """A whole line; else, for a line left open by a crash, its first part (not done); else None (cut short
    while being written: its operation never started)."""
    for text in (line, line.split(done_key, 1)[0] + "}"):
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None


def manifests_of(into: Path, manifest: Path | None = None) -> Iterator[list[dict]]:
    """The readable manifests of sorts into `into` (its own, and `manifest`); others are passed over."""
    paths = {*Path(into).glob("clip-sort-*.jsonl"), *([manifest] if manifest is not None else [])}
    for path in sorted(paths):
        try:
            yield read_journal(path)
        except UsageError:
            continue


def remove_temporaries(into: Path, manifest: Path | None = None) -> None:
    """Temporary copies left by an interrupted sort or undo into `into`: only the names its manifests made."""
    for entries in manifests_of(into, manifest):
        _remove_temporaries(entries)


def _remove_temporaries(entries: list[dict]) -> None:
    """Each journaled operation's temporary file, beside its destination (a sort) or its source (an undo)."""
    for entry in entries:
        if not entry.get("id"):
            continue  # the first format named no temporary file after its operation
        for folder in (Path(entry["destination"]).parent, Path(entry["source"]).parent):
            with suppress(OSError):
                (folder / temp_name(entry["id"])).unlink(missing_ok=True)


@dataclass
class UndoResult:
    restored: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def undo(manifest_path: Path, progress: Callable[[int, int], None] | None = None) -> UndoResult:
    """Reverse a sort from its manifest, newest operation first; per file, refuse anything changed since."""
    entries = read_journal(manifest_path)
    _remove_temporaries(entries)
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
        return "" if op != "move" or os.path.lexists(source) else "the moved file is no longer at its destination"
    if op == "symlink":
        if not destination.is_symlink() or os.readlink(destination) != os.path.abspath(source):
            return "the link was changed since the sort"
        destination.unlink()
        return None
    if destination.is_symlink() or file_digest(destination) != entry["sha256"]:
        return "changed since the sort; left as it is"
    made = entry.get("destination_id")
    if made is not None and identity(destination)[:2] != made[:2]:
        return "replaced since the sort; left as it is"
    if os.path.lexists(source):
        if not holds(source, destination, entry["sha256"]):
            return (f"{source} exists again; left as it is" if op == "move" else
                    f"the original {source} changed since the sort; this is the only copy, left as it is")
        destination.unlink()  # a copy, a link, or a move's copy: its bytes are safe at the source
        return None
    if op != "move":
        return f"the original {source} is gone; this is its only copy, left as it is"
    return _move_back(entry, destination)


def holds(path: str | os.PathLike, other: Path, sha256: str) -> bool:
    """Whether `path` keeps these bytes without `other`: the same content, and not `other` under another name."""
    try:
        return os.path.realpath(path) != os.path.realpath(other) and file_digest(path) == sha256
    except OSError:
        return False


def _move_back(entry: dict, destination: Path) -> str | None:
    """Put a moved file back at its source (a moved symlink: the link again, once its target holds the bytes)."""
    source = Path(entry["source"])
    source.parent.mkdir(parents=True, exist_ok=True)
    if entry.get("link") is not None:
        if not holds(source.parent / entry["link"], destination, entry["sha256"]):
            return f"the link's target {entry['link']} changed or is gone; this is its only copy, left as it is"
        os.symlink(entry["link"], source)
        destination.unlink()
    elif same_filesystem(str(destination), source.parent):
        os.rename(destination, source)
    else:
        _copy_into_place(str(destination), source, source.parent / temp_name(entry.get("id")))
        destination.unlink()
    return None
