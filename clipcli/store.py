"""The image-embedding store: a plain Parquet dataset plus a manifest (pyarrow and numpy only).

    STORE/_clip-store.json        the manifest: format, model, dimension, dtype (Parquet readers skip `_` names)
    STORE/.clip-store.lock        held by the one writer
    STORE/shards/part-*.parquet   the rows, one per image file; every visible shard is live:
        path           string     resolved absolute path (the key)
        size           int64      file size in bytes
        mtime_ns       int64      modification time, nanoseconds
        width, height  int32      upright image size in pixels (null for an unreadable file)
        embedding      fixed_size_list<float16 or float32>[dim]  L2-normalised image embedding (null on error)
        error_type     string     null, or why the file could not be read
        error_message  string

So `pyarrow.dataset.dataset(STORE)`, `pandas.read_parquet(STORE)`, `ray.data.read_parquet(STORE)` and
DuckDB's `read_parquet('STORE/**/*.parquet')` read every live row exactly once.  A commit never makes
that untrue, not even for a moment or after a crash: shards are written under hidden temporary names
(`.part-*.tmp`, skipped by every reader), a new shard appears with one rename, and a shard holding rows
that changed is replaced in place, with one rename, by a copy holding the new rows instead: a row never
moves from one shard to another, so any mix of old and new shards holds each path once.  A shard whose
rows were all pruned is deleted.  Readers open every shard before reading one, so a writer cannot pull a
shard away from them.  Pages carry CRC checksums, verified on every read.

Scan copies (`STORE/_scan/`, skipped by Parquet readers): each shard's embeddings again as one contiguous
float32 matrix, renormalised (`<shard>.<inode>-<size>-<mtime_ns>.npy`; NaN rows for unreadable images), written by
the writer beside every shard it writes (2 KB per image at 512-d).  Parquet decodes a fixed-size list value
by value and float16 must then be cast; a scan (`clip search`) multiplies the mapped matrix directly,
several times faster (bench/bench_search.py).  A copy is a cache, never trusted: it is used only when it is a
regular file (never a FIFO or a symlink) named after its shard's file, and its row count, shape and XXH3 hash equal
the ones its shard records in its own Parquet metadata (`clipcli:shard`, written with the shard in one rename).
Any other copy is ignored (the shard is read from Parquet) and remade by the next writer.  The tool deletes
only files it made: names of its own pattern, inside the real `_scan` folder (a symlink or a file there is left
alone and scan copies are then not used).

Each shard's metadata also records the name it was written under: a copy of a shard under another name (a
sync tool's conflict copy) holds every row twice, and is refused by readers as damage that
`clip store check --repair` resolves (one row kept per key).  `clip store compact` merges small shards:
the merged shard lists the shards it replaces in a journal `shards/_compact-<id>.json` written before its
rename; until those shards are deleted (at once, or by the next writer after a crash) clipcli's readers skip
them, so every row is read once at every moment (a plain Parquet reader may see the moved rows twice in that
short window, or after a crash until the next `clip` command writes the store).

A file is fresh when its size and mtime equal the stored ones.  Stores of schema version 1 (manifest
`clip-store.json` with a shard list) are read as they are and upgraded in place by the next writer.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import config, remote
from .errors import StoreBusyError, StoreError, StoreModelError, UsageError
from .fsutil import atomic_write_bytes, forget_temp, fsync_dir, temp_beside
from .paths import display_path, frame_key, split_frame
from .vectors import l2_normalize

MANIFEST = "_clip-store.json"
LEGACY_MANIFEST = "clip-store.json"  # schema version 1; in a version 2 store, an empty folder (see _guard)
SHARD_DIR = "shards"
SCAN_DIR = "_scan"
LOCK_FILE = ".clip-store.lock"
FORMAT = "clipcli-image-store"
SCHEMA_VERSION = 2
DTYPES = ("float16", "float32")
DEFAULT_SHARD_ROWS = config.DEFAULT_SHARD_ROWS
COMMIT_SECONDS = 30.0  # a long run commits at least this often, so an interruption loses little
GROUP_ROWS = 8192  # rows per Parquet row group: the unit a keyed read decodes (8 MB at 512-d float16)
READ_ROWS = 65536
GROUPS_KEPT = 4  # decoded row groups a keyed read keeps (8 MB each at 512-d float16)
MANIFEST_KEYS = {"format": str, "schema_version": int, "model": dict, "dim": int, "dtype": str}
SHARD_META = b"clipcli:shard"  # a shard's Parquet key-value metadata: its name, row count, scan copy XXH3 hash
JOURNAL = re.compile(r"_compact-[0-9a-f]{16}\.json")
# The only names a writer deletes in _scan: its copies and the temporary files of an interrupted copy write.
SCAN_NAMES = re.compile(r"[^/]+\.parquet\.\d+-\d+-\d+\.npy|\.[^/]+\.parquet\.\d+-\d+-\d+\.npy\.[A-Za-z0-9_]+\.tmp")


def resolve(path: str) -> str:
    """The store's key for a file: its absolute path with symlinks resolved (an object-storage URI as is), as
    text that names one file only (see key_text); for a video's frame, the video's key and the frame's time."""
    video, at = split_frame(path)
    if at is not None:
        return frame_key(resolve(video), at)
    return path if remote.is_remote(path) else key_text(os.path.realpath(path))


def key_text(path: str) -> str:
    """A local path as a key: its text where it is UTF-8 without a backslash (nearly always); else with each
    backslash doubled and each byte that is not UTF-8 as \\xNN, so that a file named `caf\\xe9.jpg` and a
    non-UTF-8 `caf<E9>.jpg` are two keys (see key_path for the way back)."""
    raw = os.fsencode(path)
    if b"\\" not in raw:
        return raw.decode("utf-8", errors="backslashreplace")  # \xNN only where a byte is not UTF-8
    return raw.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")


def key_path(key: str) -> str:
    """The local path a key names (the inverse of key_text); a key of an older clipcli that cannot be read so
    is taken as the path it spells."""
    if "\\" not in key or remote.is_remote(key):
        return key
    out, i = bytearray(), 0
    while i < len(key):
        char = key[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
        elif key.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif re.fullmatch(r"x[0-9a-f]{2}", key[i + 1:i + 4]):
            out.append(int(key[i + 2:i + 4], 16))
            i += 4
        else:
            return key
    return os.fsdecode(bytes(out))


def file_state(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns), or None for a file that cannot be stat-ed (missing, broken link); a frame's is its
    video's (a changed video is sampled again)."""
    path = split_frame(path)[0]
    if remote.is_remote(path):
        return remote.object_state(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def still_exists(key: str) -> bool:
    """Whether a stored file (or object: asked of the storage, not taken from a listing) is still there."""
    key = split_frame(key)[0]
    return remote.object_state(key, listed=False) is not None if remote.is_remote(key) else os.path.exists(key_path(key))


def arrow_schema(dim: int, dtype: str):
    import pyarrow as pa

    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([
        ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()),
        ("embedding", pa.list_(value, dim)),
        ("error_type", pa.string()), ("error_message", pa.string()),
    ])


@dataclass
class StoreModel:
    """Which model made the embeddings: what to load it by, and the identity that must match."""

    name: str  # as the user gave it: `demo`, `local-dir:...`, an architecture
    pretrained: str | None
    key: str  # identity hash without the precision (fp16 and fp32 of the same weights share a store)
    identity: dict = field(default_factory=dict)
    scoring: dict = field(default_factory=dict)  # logit_scale, logit_bias, text_cache_key: score without the model

    def display(self) -> str:
        return f"{self.name}:{self.pretrained}" if self.pretrained else self.name


@dataclass
class Rows:
    """Rows to add, column by column (embeddings as float32 [n, dim]; rows with an error have zeros there)."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=list)
    heights: list[int | None] = field(default_factory=list)
    errors: list[tuple[str, str] | None] = field(default_factory=list)
    vectors: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, path: str, state: tuple[int, int], size: tuple[int, int] | None,
            vector: np.ndarray | None, error: tuple[str, str] | None) -> None:
        self.paths.append(display_path(path))
        self.sizes.append(state[0])
        self.mtimes.append(state[1])
        self.widths.append(size[0] if size else None)
        self.heights.append(size[1] if size else None)
        self.errors.append(error)
        self.vectors.append(vector)

    def table(self, dim: int, dtype: str):
        import pyarrow as pa

        schema = arrow_schema(dim, dtype)
        values = np.zeros((len(self), dim), dtype=dtype)
        valid = np.zeros(len(self), dtype=bool)
        for i, vector in enumerate(self.vectors):
            if vector is not None:
                values[i] = vector
                valid[i] = True
        flat = pa.array(values.reshape(-1), type=schema.field("embedding").type.value_type)
        embedding = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~valid))
        return pa.table([
            pa.array(self.paths, pa.string()),
            pa.array(self.sizes, pa.int64()), pa.array(self.mtimes, pa.int64()),
            pa.array(self.widths, pa.int32()), pa.array(self.heights, pa.int32()),
            embedding,
            pa.array([e[0] if e else None for e in self.errors], pa.string()),
            pa.array([e[1] if e else None for e in self.errors], pa.string()),
        ], schema=schema)


@dataclass
class StoredImage:
    """One stored row as the scorers need it."""

    path: str
    embedding: np.ndarray | None  # float32 [dim], renormalised; None for an error row
    error: tuple[str, str] | None


@dataclass(frozen=True)
class Location:
    """Where a key's row is, and the file state it was stored with."""

    shard: str  # file name inside SHARD_DIR
    group: int  # row group
    row: int  # row inside the group
    state: tuple[int, int]


class ImageStore:
    """A store opened for reading: needs no lock and no write permission."""

    def __init__(self, directory: str | os.PathLike, manifest: dict) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self._groups: dict[tuple[str, int], object] = {}  # the last few row groups keyed reads decoded

    # --- what it holds --------------------------------------------------------------------------------
    @property
    def model(self) -> StoreModel:
        m = self.manifest["model"]
        return StoreModel(m["name"], m.get("pretrained"), m["key"], m.get("identity", {}), m.get("scoring", {}))

    def describe(self) -> dict:
        """The model as a run's header names it when answers come from the store alone (no model loaded)."""
        return {"name": self.model.name, "pretrained": self.model.pretrained, "backend": None, "precision": None}

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def legacy(self) -> bool:
        """A version 1 store: its manifest lists the live shards (read_manifest keeps such a list for no other)."""
        return "shards" in self.manifest

    def shard_names(self) -> list[str]:
        """The live shards' file names, oldest first (for a version 1 store: the ones its manifest names).  Shards
        that a compaction replaced (its journal names them, and its merged shard is in place) are not live."""
        if self.legacy:
            return [Path(s["file"]).name for s in self.manifest["shards"]]
        try:
            entries = [e.name for e in os.scandir(self.directory / SHARD_DIR)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"store {self.directory}: cannot list its shards ({exc.strerror or exc})") from None
        names = sorted(n for n in entries if n.endswith(".parquet") and not n.startswith((".", "_")))
        journals = [n for n in entries if JOURNAL.fullmatch(n)]
        if journals:
            live, superseded = set(names), set()
            for journal in journals:
                target, sources = read_journal(self.directory / SHARD_DIR / journal)
                if target in live:
                    superseded |= sources
            names = [n for n in names if n not in superseded]
        return names

    @property
    def rows(self) -> int:
        return sum(shard.metadata.num_rows for _, shard in self._shards())

    def info(self) -> dict:
        """Model, counts, size on disk and last update (for `clip store info`)."""
        errors = rows = shards = frames = 0
        videos: set[str] = set()
        for name, shard in self._shards():
            shards += 1
            rows += shard.metadata.num_rows
            for batch in self._batches(shard, name, ["path", "error_type"], READ_ROWS):
                errors += batch.num_rows - batch.column(1).null_count
                for path, error in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    video, at = split_frame(path)
                    if at is not None and error is None:
                        frames += 1
                        videos.add(video)
        size = self.size_on_disk()
        return {"store": str(self.directory), "model": self.model.display(), "model_key": self.model.key,
                "dim": self.dim, "dtype": self.dtype, "images": rows - errors - frames, "errors": errors,
                "videos": len(videos), "video_frames": frames,
                "shards": shards, "size_bytes": size,
                "created": self.manifest.get("created"), "updated": self.manifest.get("updated"),
                "clipcli_version": self.manifest.get("clipcli_version"),
                "schema_version": self.manifest.get("schema_version")}

    def size_on_disk(self) -> int:
        """Bytes of every file the store keeps (manifest, shards, journals, scan copies), as their sizes say;
        symlinks are not followed."""
        total = 0
        for folder in (self.directory, self.directory / SHARD_DIR, _scan_folder(self.directory)):
            if folder is None:
                continue
            try:
                with os.scandir(folder) as listing:
                    total += sum(e.stat(follow_symlinks=False).st_size for e in listing
                                 if e.is_file(follow_symlinks=False))
            except OSError:
                continue
        return total

    # --- reading ------------------------------------------------------------------------------------
    def _open(self, name: str):
        """A ParquetFile of one shard, pages checked against their checksums (FileNotFoundError passes)."""
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(str(self.directory / SHARD_DIR / name), page_checksum_verification=True)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise self._unreadable(name, exc) from None

    def _unreadable(self, name: str, exc: BaseException) -> StoreError:
        """A shard that cannot be read: damaged (pyarrow's own error), or the system's (no errno: damage)."""
        if isinstance(exc, OSError) and exc.errno:
            return StoreError(f"store {self.directory}: cannot read shard {name} ({exc.strerror or exc})")
        return self._damaged(name, exc)

    def _damaged(self, name: str, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.directory}: shard {name} is damaged ({str(exc).splitlines()[0][:120]}); "
                          f"`clip store check --repair {self.directory}` removes it, then `clip embed` encodes its "
                          "images again")

    def _shards(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, object]]:
        """(name, ParquetFile) of every live shard (or of those named), opened one at a time.  A row never moves
        between shards (but in a compaction, which readers notice), so a writer replacing shards meanwhile cannot
        make a reader see a row twice or miss one; a shard deleted before it was opened held only pruned rows.
        A shard that is a copy of another live one is refused (its rows would count twice)."""
        live = self.shard_names()
        wanted = set(names) if names is not None else None
        for name in live:
            if wanted is not None and name not in wanted:
                continue
            try:
                shard = self._open(name)
            except FileNotFoundError:
                self._went_away(name)
                continue
            try:
                self._check_not_a_copy(name, shard, live)
                yield name, shard
            finally:
                shard.close()
        for name in sorted(wanted - set(live)) if wanted is not None else ():
            self._went_away(name)  # listed by the caller, not live now

    def _went_away(self, name: str) -> None:
        """A listed shard that is gone: pruned (fine), or moved by a compaction (its rows are in a shard this
        read did not list: say so rather than answer without them), or missing from a version 1 store."""
        if self.legacy:
            raise StoreError(f"store {self.directory}: its manifest names shard {name}, which is missing; "
                             f"`clip store check --repair {self.directory}` drops it from the manifest, then "
                             "`clip embed` encodes its images again")
        for other in self.shard_names():
            try:
                with self._open(other) as shard:
                    replaced = shard_meta(shard).get("replaces") or []
            except (FileNotFoundError, StoreError):
                continue
            if name in replaced:
                raise StoreError(f"store {self.directory} was compacted while this command read it; run the "
                                 "command again")

    def _check_not_a_copy(self, name: str, shard, live: list[str]) -> None:
        recorded = shard_meta(shard).get("name")
        if isinstance(recorded, str) and recorded != name and recorded in live:
            raise StoreError(f"store {self.directory}: shard {name} is a copy of shard {recorded} (a sync tool's "
                             f"conflict copy?), so its rows would count twice; `clip store check --repair "
                             f"{self.directory}` keeps one row per image")

    def _batches(self, shard, name: str, columns: Sequence[str] | None, rows: int) -> Iterator:
        try:
            yield from shard.iter_batches(batch_size=rows, columns=list(columns) if columns else None)
        except (OSError, ValueError) as exc:
            raise self._unreadable(name, exc) from None

    def iter_record_batches(self, columns: Sequence[str] | None = None, rows: int = READ_ROWS) -> Iterator:
        """pyarrow RecordBatches over every live row, shard by shard (memory does not grow with the store)."""
        for name, shard in self._shards():
            yield from self._batches(shard, name, columns, rows)

    def iter_embeddings(self, rows: int = READ_ROWS) -> Iterator[tuple[list[str], np.ndarray, list[tuple[int, str, str]]]]:
        """(paths, float32 [n, dim] renormalised embeddings, [(row, error_type, message)]) per batch; the
        embedding rows of error entries are zero."""
        for batch in self.iter_record_batches(["path", "embedding", "error_type", "error_message"], rows):
            yield batch_embeddings(batch, self.dim)

    def iter_vectors(self, rows: int = READ_ROWS, shards: Iterable[str] | None = None
                     ) -> Iterator[tuple[Callable[[np.ndarray], list[str]], np.ndarray]]:
        """(paths_of(rows) -> their paths, float32 unit embeddings [n, dim], NaN rows for unreadable images)
        per batch, of every shard or the ones named: for scans that need only a few of the paths.  Read from
        the shard's scan copy when it has a current one."""
        for name, path, before, shard in self._opened_shards(shards):
            yield from self._shard_vectors(name, shard, before, path, rows)

    def iter_shard_tables(self, columns: Sequence[str]) -> Iterator[tuple[object, np.ndarray]]:
        """Per live shard: (its `columns` as a pyarrow Table, its float32 unit embeddings [rows, dim] with NaN
        rows for unreadable images, from its scan copy when it has a current one), both of one shard version."""
        for name, path, before, shard in self._opened_shards():
            copy = self._scan_copy(name, before, shard) if _same_file(before, path) else None
            try:
                table = shard.read(columns=list(columns) + ([] if copy is not None else ["embedding"]))
            except (OSError, ValueError) as exc:
                raise self._unreadable(name, exc) from None
            yield table, (scan_matrix(table, self.dim) if copy is None else copy)

    def _opened_shards(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, Path, os.stat_result, object]]:
        """(name, path, its stat before the open, the opened Parquet file) per live shard of `names` (all when None):
        the stat taken first, so a reader can tell whether a writer replaced the shard while it was opened."""
        for name in self.shard_names() if names is None else names:
            path = self.directory / SHARD_DIR / name
            try:
                before = os.stat(path)
            except FileNotFoundError:
                self._went_away(name)
                continue
            for _, shard in self._shards([name]):  # none when it went away meanwhile
                yield name, path, before, shard

    def _shard_vectors(self, name: str, shard, before: os.stat_result, path: Path, rows: int) -> Iterator:
        # the copy of the shard version that was opened: the same file before and after the open (one that a
        # writer replaced in between is read from Parquet instead)
        copy = self._scan_copy(name, before, shard) if _same_file(before, path) else None
        if copy is None:
            for batch in self._batches(shard, name, ["path", "embedding"], rows):
                yield (lambda found, paths=batch.column(0): take_paths(paths, found)), scan_matrix(batch, self.dim)
            return
        paths: list = []

        def paths_of(found: np.ndarray, start: int) -> list[str]:
            if not paths:  # the shard's path column, read once and only when a batch has candidates
                try:
                    paths.append(shard.read(columns=["path"]).column(0))
                except (OSError, ValueError) as exc:
                    raise self._unreadable(name, exc) from None
            return take_paths(paths[0], found + start)

        for start in range(0, len(copy), rows):
            yield (lambda found, start=start: paths_of(found, start)), copy[start:start + rows]

    def _scan_copy(self, name: str, st: os.stat_result | None = None, shard=None) -> np.ndarray | None:
        """The scan copy of the shard as it is now (or as `st` saw it; `shard`: that version, opened),
        memory-mapped, or None when there is none that matches the shard's recorded rows and XXH3 hash."""
        folder = _scan_folder(self.directory)
        if folder is None:
            return None
        try:
            st = st or os.stat(self.directory / SHARD_DIR / name)
            if shard is None:
                with self._open(name) as opened:
                    meta, rows = shard_meta(opened), opened.metadata.num_rows
            else:
                meta, rows = shard_meta(shard), shard.metadata.num_rows
        except OSError:
            return None
        if meta.get("rows") != rows or not isinstance(meta.get("scan_xxh3"), str):
            return None  # a shard written before copies were checked: read from Parquet until a writer redoes it
        return load_scan_copy(folder / scan_name(name, st), rows, self.dim, meta["scan_xxh3"])

    def iter_keys(self, shards: Iterable[str] | None = None) -> Iterator[tuple[str, int, int, list, list, list]]:
        """(shard, row group, paths, sizes, mtimes) for each row group: the small columns only."""
        names = set(shards) if shards is not None else None
        for name, shard in self._shards():
            if names is not None and name not in names:
                continue
            for group in range(shard.metadata.num_row_groups):
                try:
                    table = shard.read_row_group(group, columns=["path", "size", "mtime_ns"])
                except (OSError, ValueError) as exc:
                    raise self._damaged(name, exc) from None
                yield name, group, *(table.column(i).to_pylist() for i in range(3))

    def locate(self, keys: Iterable[str], shards: Iterable[str] | None = None) -> dict[str, Location]:
        """Where the rows of these keys (resolved paths) are; keys not stored are absent.  Reads only the
        path, size and mtime columns, and keeps only the keys asked for."""
        wanted = {display_path(k) for k in keys}
        found: dict[str, Location] = {}
        for name, group, paths, sizes, mtimes in self.iter_keys(shards):
            for row, path in enumerate(paths):
                if path in wanted:
                    if path in found and found[path].shard != name:
                        raise self._twice(name, found[path].shard)
                    found[path] = Location(name, group, row, (sizes[row], mtimes[row]))
        return found

    def _twice(self, name: str, other: str) -> StoreError:
        return StoreError(f"store {self.directory}: shards {other} and {name} hold the same image (one a copy of "
                          f"the other?), so it would count twice; `clip store check --repair {self.directory}` "
                          "keeps one row per image")

    def check_unique_keys(self) -> None:
        """Raise StoreError when a key is stored in two shards (reads every shard's path column)."""
        seen: dict[str, str] = {}
        for name, _, paths, _, _ in self.iter_keys():
            for path in paths:
                other = seen.setdefault(path, name)
                if other != name:
                    raise self._twice(name, other)

    def read(self, located: dict[str, Location], again: bool = True) -> dict[str, StoredImage]:
        """The stored rows at these locations, decoding each row group they fall in once.  A row that is not
        where it was located (its shard was rewritten since) is located once more."""
        found: dict[str, StoredImage] = {}
        lost: list[str] = []
        for (name, group), keys in _by_group(located).items():
            table = self._row_group(name, group)
            if table is None:
                lost += keys
                continue
            inside = [k for k in keys if located[k].row < table.num_rows]
            lost += [k for k in keys if located[k].row >= table.num_rows]
            keys = inside
            names, vectors, errors = batch_embeddings(table.take([located[k].row for k in keys]), self.dim)
            bad = {row: (kind, message) for row, kind, message in errors}
            for i, (key, name_found) in enumerate(zip(keys, names)):
                if name_found == key:
                    found[key] = StoredImage(key, None if i in bad else vectors[i], bad.get(i))
                else:
                    lost.append(key)
        if lost and again:
            self._groups = {}
            found.update(self.read(self.locate(lost, {located[k].shard for k in lost}), again=False))
        return found

    def _row_group(self, name: str, group: int):
        """One row group's path, embedding and error columns (the last GROUPS_KEPT are kept: inputs that
        alternate between a few shards do not decode the same group again); None when it is gone."""
        if (name, group) in self._groups:
            return self._groups[(name, group)]
        try:
            shard = self._open(name)
        except FileNotFoundError:
            return None
        try:
            if group >= shard.metadata.num_row_groups:
                return None
            table = shard.read_row_group(group, columns=["path", "embedding", "error_type", "error_message"])
        except (OSError, ValueError) as exc:
            raise self._unreadable(name, exc) from None
        finally:
            shard.close()
        self._groups[(name, group)] = table
        while len(self._groups) > GROUPS_KEPT:
            self._groups.pop(next(iter(self._groups)))
        return table


@dataclass
class Problem:
    """One thing `clip store check` found wrong, and what `--repair` does (did) about it."""

    what: str  # `shard NAME`, `_scan/COPY`, `_scan`, `manifest`
    why: str
    repair: str  # what --repair does; "" when it cannot (the user must act)
    repaired: bool = False


def check_store(directory: str | os.PathLike, repair: bool = False) -> tuple[int, list[Problem]]:
    """Read every shard of a store whole, pages checked against their checksums; check each shard's scan copy
    against it (rows, shape, XXH3 hash, values), that every stored key is in one shard only (a copied shard holds
    them twice) and that the manifest agrees with the folder: (rows that read, problems).  With `repair`, under
    the writer's lock: damaged shards are deleted (the next `clip embed` encodes their images again), damaged
    copies deleted (the next writer remakes them), duplicate rows removed keeping one row per key (the newest
    file state; no image loses its row), and the manifest rewritten."""
    import pyarrow.parquet as pq

    store = open_store(directory)
    folder = store.directory / SHARD_DIR
    good, problems = 0, []
    damaged: list[str] = []
    bad_copies: list[Path] = []
    holders: dict[str, list[tuple[str, int, bool]]] = {}  # key -> [(shard, mtime_ns, shard under its own name)]
    stray_list = _manifest_has_shard_list(store.directory)
    if stray_list:
        problems.append(Problem("manifest", "carries a version 1 shard list, which a version 2 store must not "
                                "have (it hid or deleted shards)", "rewritten without it"))
    scan = _scan_folder(store.directory)
    if scan is None and os.path.lexists(store.directory / SCAN_DIR):
        problems.append(Problem(SCAN_DIR, "is not a folder of the store (a file or a symlink), so scan copies are "
                                "neither used nor written", ""))
    missing = []
    for name in store.shard_names():
        path = folder / name
        try:
            before = os.stat(path)
            with pq.ParquetFile(path, page_checksum_verification=True) as shard:
                table = shard.read()
                meta = shard_meta(shard)
        except FileNotFoundError:
            if store.legacy:
                missing.append(name)
                problems.append(Problem(f"shard {name}", "is named by the manifest but missing",
                                        "dropped from the manifest (`clip embed` encodes its images again)"))
            continue
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno:  # the system's trouble (permissions, handles): not damage
                raise StoreError(f"store {store.directory}: cannot read shard {name} ({exc.strerror or exc})") \
                    from None
            damaged.append(name)
            problems.append(Problem(f"shard {name}", "is damaged (" + (str(exc).splitlines()[0][:120] if str(exc)
                                                                       else type(exc).__name__) + ")", "removed"))
            continue
        good += table.num_rows
        own = meta.get("name") in (None, name)
        for key, mtime in zip(table.column("path").to_pylist(), table.column("mtime_ns").to_pylist()):
            holders.setdefault(key, []).append((name, mtime or 0, own))
        copy_path = None if scan is None else scan / scan_name(name, before)
        if copy_path is None or not os.path.lexists(copy_path) or not _same_file(before, path):
            continue
        if os.path.isdir(copy_path) and not os.path.islink(copy_path):
            problems.append(Problem(f"{SCAN_DIR}/{copy_path.name}", "is a folder where this shard's scan copy goes "
                                    "(not made by clipcli; the shard is read from Parquet)", ""))
            continue
        expected = scan_matrix(table, store.dim)
        crc = meta.get("scan_xxh3") if meta.get("rows") == table.num_rows else None
        copy = load_scan_copy(copy_path, table.num_rows, store.dim, crc if isinstance(crc, str) else None)
        if copy is None or not np.allclose(copy, expected, atol=1e-6, equal_nan=True):
            bad_copies.append(copy_path)
            problems.append(Problem(f"{SCAN_DIR}/{copy_path.name}", "differs from its shard (rows, shape, checksum "
                                    "or values): a cache, never used so; the next writer remakes it", "removed"))
    remove = _duplicate_rows(holders) if not store.legacy else {}
    for name, keys in sorted(remove.items()):
        others = sorted({s for key in keys for s, _, _ in holders[key] if s != name})
        every = all(len(h) > 1 for h in holders.values() if any(s == name for s, _, _ in h))
        problems.append(Problem(f"shard {name}", f"holds {len(keys)} row(s) also stored in shard "
                                f"{', '.join(others[:2])}{' ...' if len(others) > 2 else ''} (a copy of it?), so "
                                "they count twice", "its duplicate rows removed, one row per image kept"
                                + (" (the shard goes)" if every and len(keys) else "")))
    if repair and problems:
        _repair(store, stray_list, missing, damaged, bad_copies, remove)
        for problem in problems:
            problem.repaired = bool(problem.repair)
    return good, problems


def _duplicate_rows(holders: dict[str, list[tuple[str, int, bool]]]) -> dict[str, set[str]]:
    """shard -> keys whose rows there are to go, so that each key keeps one row: the one of the newest file
    state, then of a shard under its own recorded name, then of the oldest shard name."""
    remove: dict[str, set[str]] = {}
    for key, held in holders.items():
        if len(held) < 2:
            continue
        keep = sorted(held, key=lambda h: (-h[1], not h[2], h[0]))[0]
        for shard, _, _ in held:
            if shard != keep[0]:
                remove.setdefault(shard, set()).add(key)
    return remove


def _manifest_has_shard_list(directory: Path) -> bool:
    try:
        raw = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "shards" in raw


def _repair(store: ImageStore, stray_list: bool, missing: list[str], damaged: list[str], bad_copies: list[Path],
            remove: dict[str, set[str]]) -> None:
    lock = _take_lock(store.directory)
    try:
        if store.legacy and missing:
            kept = [s for s in store.manifest["shards"] if Path(s["file"]).name not in set(missing)]
            atomic_write_bytes(store.directory / LEGACY_MANIFEST,
                               json.dumps({**store.manifest, "shards": kept}, indent=2).encode())
            store.manifest = {**store.manifest, "shards": kept}
        for name in damaged:
            (store.directory / SHARD_DIR / name).unlink(missing_ok=True)
        for copy in bad_copies:
            copy.unlink(missing_ok=True)
        if store.legacy:  # its manifest keeps its shard list; the next `clip embed` upgrades it
            return
        writer = StoreWriter(store.directory, store.manifest, -1, DEFAULT_SHARD_ROWS)
        writer.removed = {name: set(keys) for name, keys in remove.items()}
        writer.commit()  # rewrites those shards without the duplicate rows (one rename each)
        if stray_list or damaged or remove:
            writer._write_manifest({**writer.manifest, "updated": _now()})
        writer._drop_stale_scan_copies()  # the copies of deleted shards
        fsync_dir(store.directory / SHARD_DIR)
    finally:
        os.close(lock)


def compact_store(directory: str | os.PathLike, shard_rows: int | None = None) -> tuple[int, int]:
    """Merge a store's small shards (see StoreWriter.compact) under the writer's lock: (shards before, after)."""
    from . import __version__

    store = open_store(directory)
    with open_for_writing(directory, store.model, store.dim, None, shard_rows or DEFAULT_SHARD_ROWS,
                          __version__) as writer:
        return writer.compact()


def _by_group(located: dict[str, Location]) -> dict[tuple[str, int], list[str]]:
    groups: dict[tuple[str, int], list[str]] = {}
    for key, where in located.items():
        groups.setdefault((where.shard, where.group), []).append(key)
    return groups


def batch_embeddings(batch, dim: int) -> tuple[list[str], np.ndarray, list[tuple[int, str, str]]]:
    """Decode one RecordBatch or Table (path, embedding, error_type, error_message) into float32 numpy."""
    import pyarrow as pa

    paths = batch.column(0).to_pylist()
    column = batch.column(1)
    if isinstance(column, pa.ChunkedArray):  # a Table's column (a RecordBatch's is one array)
        column = column.combine_chunks()
    values = column.values.to_numpy(zero_copy_only=False)[column.offset * dim:(column.offset + len(column)) * dim]
    vectors = values.reshape(len(column), dim).astype(np.float32)
    errors: list[tuple[int, str, str]] = []
    if column.null_count:
        kinds, messages = batch.column(2).to_pylist(), batch.column(3).to_pylist()
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(~valid):
            vectors[row] = 0.0
            errors.append((int(row), kinds[row] or "unreadable", messages[row] or ""))
    l2_normalize(vectors, out=vectors)  # float16 storage rounds the norm; undo that
    return paths, vectors, errors


def shard_meta(shard) -> dict:
    """What a shard records about itself (`clipcli:shard` in its Parquet metadata; {} for an older shard)."""
    raw = (shard.metadata.metadata or {}).get(SHARD_META)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def scan_checksum(matrix: np.ndarray) -> str:
    """The XXH3-64 hash of a scan copy's matrix (xxhash: about as fast as the scan itself; zlib's CRC-32 is ten times slower,
    bench/bench_scan_check.py)."""
    import xxhash

    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(matrix, dtype=np.float32))


def load_scan_copy(path: Path, rows: int, dim: int, digest: str | None) -> np.ndarray | None:
    """A scan copy memory-mapped, if it is a regular file (opened without following a symlink, and never
    blocking on a FIFO) holding a float32 [rows, dim] matrix whose XXH3 hash is `digest`; else None."""
    from numpy.lib import format as npy

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            version = npy.read_magic(handle)
            header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = header(handle)
            offset = handle.tell()
            if (tuple(shape) != (rows, dim) or fortran or dtype != np.dtype("<f4")
                    or st.st_size != offset + rows * dim * 4):
                return None
            if not rows:
                matrix = np.empty((0, dim), dtype=np.float32)
            else:
                matrix = np.memmap(handle, dtype=np.float32, mode="r", offset=offset, shape=(rows, dim))
    except (OSError, ValueError, EOFError):
        return None
    return matrix if digest is None or scan_checksum(matrix) == digest else None


def read_journal(path: Path) -> tuple[str | None, set[str]]:
    """(the merged shard, the shards it replaces) of a compaction journal; (None, set()) when unreadable."""
    from .fsutil import read_config_text

    try:
        journal = json.loads(read_config_text(path))
        target, sources = journal["shard"], journal["replaces"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, set()
    if not isinstance(target, str) or not isinstance(sources, list) or not all(isinstance(n, str) for n in sources):
        return None, set()
    return target, set(sources) - {target}


def _scan_folder(directory: Path) -> Path | None:
    """The store's `_scan` folder if it is a real folder (not a symlink, not a file), else None."""
    folder = directory / SCAN_DIR
    try:
        return folder if stat.S_ISDIR(os.lstat(folder).st_mode) else None
    except OSError:
        return None


def scan_name(shard: str, st: os.stat_result) -> str:
    """A copy's name: its shard's name, inode, size and mtime (a rewritten shard is always a new file, so its
    copy never takes the old copy's name, even where the size and a coarse mtime repeat)."""
    return f"{shard}.{st.st_ino}-{st.st_size}-{st.st_mtime_ns}.npy"


def _same_file(before: os.stat_result, path: Path) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_ino, now.st_size, now.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def take_paths(column, rows: np.ndarray) -> list[str]:
    """column[rows] as Python strings, without arrow's `take` (which imports pyarrow.compute, a fifth of a
    search's start-up)."""
    if len(rows) > len(column) // 8:
        every = column.to_pylist()
        return [every[i] for i in rows.tolist()]
    return [column[i].as_py() for i in rows.tolist()]


def scan_matrix(table, dim: int) -> np.ndarray:
    """A shard table's (or batch's) embeddings as one float32 [rows, dim] matrix of unit rows, NaN rows for
    errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column("embedding") if isinstance(table, (pa.Table, pa.RecordBatch)) else table
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.values.slice(column.offset * dim, len(column) * dim)
    matrix = pc.cast(values, pa.float32()).to_numpy(zero_copy_only=False).reshape(len(column), dim)  # arrow's
    matrix = l2_normalize(np.array(matrix))  # cast is vectorised; numpy's from float16 is several times slower
    if column.null_count:
        matrix[~column.is_valid().to_numpy(zero_copy_only=False)] = np.nan
    return matrix


def _check_manifest(directory: Path, manifest) -> dict:
    """The manifest, if its fields have the right types; a StoreError naming what is wrong otherwise."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{directory}: {MANIFEST} is not a clipcli store manifest")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise StoreError(f"store {directory}: its manifest is damaged ({key!r} is missing or not a "
                             f"{kind.__name__}); make a new store with `clip embed`")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise StoreError(f"store {directory} has schema version {manifest['schema_version']}, newer than this "
                         f"clipcli reads ({SCHEMA_VERSION}); upgrade clipcli")
    model = manifest["model"]
    if not isinstance(model.get("name"), str) or not isinstance(model.get("key"), str):
        raise StoreError(f"store {directory}: its manifest is damaged (the model has no name or key); make a new "
                         "store with `clip embed`")
    if manifest["dtype"] not in DTYPES or not 0 < manifest["dim"] <= 65536:
        raise StoreError(f"store {directory}: its manifest is damaged (dtype {manifest['dtype']!r}, dim "
                         f"{manifest['dim']}); make a new store with `clip embed`")
    if "shards" in manifest and not (isinstance(manifest["shards"], list) and
                                     all(isinstance(s, dict) and isinstance(s.get("file"), str)
                                         for s in manifest["shards"])):
        raise StoreError(f"store {directory}: its manifest is damaged (bad shard list); make a new store with "
                         "`clip embed`")
    return manifest


def read_manifest(directory: Path) -> dict | None:
    """The store's manifest (a version 1 store's, if that is what is there), or None when there is no store."""
    for name in (MANIFEST, LEGACY_MANIFEST):
        path = directory / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"store {directory}: cannot read {name} ({getattr(exc, 'strerror', None) or exc})") \
                from None
        try:
            manifest = json.loads(text)
        except ValueError:
            raise StoreError(f"store {directory}: {name} is not valid JSON; the store cannot be used") from None
        manifest = _check_manifest(directory, manifest)
        if name == LEGACY_MANIFEST:
            manifest.setdefault("shards", [])
        else:  # a version 2 store lists its shards folder; a stray v1 list is damage (store check), never obeyed
            manifest.pop("shards", None)
        return manifest
    return None


def open_store(directory: str | os.PathLike) -> ImageStore:
    """Open an existing store for reading."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"--store {directory}: is a file, not a store folder")
    manifest = read_manifest(directory)
    if manifest is None:
        raise StoreError(f"no image store at {directory}; create one with `clip embed IMAGES --store {directory}`")
    return ImageStore(directory, manifest)


def store_model_of(directory: str | os.PathLike) -> StoreModel | None:
    """The model a store (if there is one at `directory`) was made with."""
    directory = Path(directory)
    manifest = read_manifest(directory) if directory.is_dir() else None
    return ImageStore(directory, manifest).model if manifest is not None else None


def check_model(directory: Path, manifest: dict, model: StoreModel) -> None:
    stored = manifest["model"]
    if stored["key"] != model.key:
        shown = StoreModel(stored["name"], stored.get("pretrained"), stored["key"]).display()
        raise StoreModelError(f"store {directory} holds embeddings of model {shown}; this run uses "
                              f"{model.display()}. Use the store's model, or another --store folder")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StoreWriter(ImageStore):
    """A store opened for writing: holds the lock until close(); add rows, commit them."""

    def __init__(self, directory: Path, manifest: dict, lock_fd: int, shard_rows: int) -> None:
        super().__init__(directory, manifest)
        self._lock_fd = lock_fd
        self.shard_rows = shard_rows
        self.pending: dict[str | None, Rows] = {}  # shard a row replaces one of (None: a new key) -> rows
        self.removed: dict[str, set[str]] = {}  # shard -> keys whose rows go at the next commit
        self.queued: set[str] = set()  # keys added by this writer (each is written once per session)
        self.last_commit = time.monotonic()

    # --- writing ----------------------------------------------------------------------------------------
    def add(self, key: str, state: tuple[int, int], size: tuple[int, int] | None, vector: np.ndarray | None,
            error: tuple[str, str] | None, replaces: Location | None = None) -> None:
        """Queue one row (key: resolved path; `replaces`: where its stale row is); commits by itself every
        `shard_rows` rows or COMMIT_SECONDS.  A key queued twice in one commit is kept once."""
        text = display_path(key)
        if text in self.queued:
            return
        self.queued.add(text)
        shard = replaces.shard if replaces is not None else None
        if shard is not None:
            self.removed.setdefault(shard, set()).add(text)
        self.pending.setdefault(shard, Rows()).add(key, state, size, vector, error)
        if self.queued_rows() >= self.shard_rows or time.monotonic() - self.last_commit >= COMMIT_SECONDS:
            self.commit()

    def queued_rows(self) -> int:
        return sum(len(rows) for rows in self.pending.values())

    def drop_stale_videos(self, current: dict[str, tuple[int, int]]) -> int:
        """Remove every row of these videos (their frames', or their own error row) that was stored from another
        state of the file than `current` (video key -> (size, mtime_ns)): the frames of a changed video are
        sampled again, and none of the old ones may be read with the new.  Returns how many rows go."""
        count = 0
        for name, _, paths, sizes, mtimes in self.iter_keys():
            gone = {path for path, size, mtime in zip(paths, sizes, mtimes)
                    if (state := current.get(split_frame(path)[0])) is not None and (size, mtime) != state}
            if gone:
                self.removed.setdefault(name, set()).update(gone)
                count += len(gone)
        return count

    def prune(self, exists: Callable[[str], bool] = still_exists) -> int:
        """Remove the rows whose files (or objects) no longer exist; returns how many."""
        count = 0
        for name, _, paths, _, _ in self.iter_keys():
            gone = {p for p in paths if not exists(p)}
            if gone:
                self.removed.setdefault(name, set()).update(gone)
                count += len(gone)
        self.commit()
        return count

    def commit(self) -> None:
        """Make queued rows and removals durable: changed shards replaced in place, new rows in a new shard.
        Each step forgets what it made durable at once, so a commit interrupted (Ctrl-C) and run again
        never writes a row twice."""
        import pyarrow as pa

        touched = set(self.removed) | {s for s in self.pending if s is not None}
        for name in sorted(touched):
            path = self.directory / SHARD_DIR / name
            try:
                with self._open(name) as shard:
                    table = shard.read()
            except FileNotFoundError:
                table = None
            except (OSError, ValueError) as exc:
                raise self._damaged(name, exc) from None
            if table is not None:
                gone = self.removed.get(name, set())
                table = table.filter(pa.array([key not in gone for key in table.column("path").to_pylist()]))
            new = self.pending.get(name)
            if new:
                added = new.table(self.dim, self.dtype)
                table = added if table is None else pa.concat_tables([table, added.cast(table.schema)])
            if table is not None and table.num_rows:
                self._write_shard(table, path)
            else:
                path.unlink(missing_ok=True)
            self.pending.pop(name, None)
            self.removed.pop(name, None)
        if self.pending.get(None):
            rows = self.pending.pop(None)
            final = self.directory / SHARD_DIR / new_shard_name()
            try:
                self._write_shard(rows.table(self.dim, self.dtype), final)
            except BaseException:
                if not final.exists():  # not written: keep the rows for the next commit
                    self.pending[None] = rows
                raise
            touched.add(final.name)
        if touched:
            self._write_manifest({**self.manifest, "updated": _now()})
            self._drop_stale_scan_copies()
        self._groups = {}
        self.last_commit = time.monotonic()

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_bytes(self.directory / MANIFEST, json.dumps(manifest, indent=2).encode())
        self.manifest = manifest

    def _write_shard(self, table, final: Path, replaces: Sequence[str] = (),
                     before_rename: Callable[[], None] | None = None) -> None:
        """Write a shard under a hidden name, then rename it into place (new, or replacing a shard).  The shard
        records its name, row count and its scan copy's XXH3 hash (and the shards it replaces, for a compaction)."""
        import pyarrow.parquet as pq

        matrix = scan_matrix(table, self.dim)
        meta = {"name": final.name, "rows": table.num_rows, "scan_xxh3": scan_checksum(matrix)}
        if replaces:
            meta["replaces"] = list(replaces)
        table = table.replace_schema_metadata({SHARD_META: json.dumps(meta).encode()})
        fd, temp = temp_beside(final)
        os.close(fd)
        try:
            # Embeddings do not compress (float noise) and are never repeated: write them plain, which
            # reads several times faster; the text and integer columns compress well with zstd.
            pq.write_table(table, temp, row_group_size=GROUP_ROWS, write_page_checksum=True,
                           compression={name: ("none" if name == "embedding" else "zstd") for name in table.column_names},
                           use_dictionary=["path", "error_type", "error_message"])
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            self._write_scan_copy(matrix, final.name, os.stat(temp))
            if before_rename is not None:
                before_rename()
            os.replace(temp, final)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        finally:
            forget_temp(temp)
        fsync_dir(final.parent)

    def _write_scan_copy(self, matrix: np.ndarray, shard: str, st: os.stat_result) -> None:
        """The shard's scan copy, named after the shard's size and mtime (the shard keeps both on its rename).
        Written before the shard takes its place: a crash in between leaves a copy that matches nothing.  Not
        written where `_scan` is not a real folder (a file or a symlink the store did not make)."""
        import io

        try:
            (self.directory / SCAN_DIR).mkdir()
        except FileExistsError:
            pass
        folder = _scan_folder(self.directory)
        if folder is None:
            return
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
        try:
            atomic_write_bytes(folder / scan_name(shard, st), buffer.getvalue())
        except (IsADirectoryError, NotADirectoryError):
            pass  # a folder where the copy goes: left alone; the shard is read from Parquet

    def _drop_stale_scan_copies(self) -> None:
        """Delete scan copies that match no live shard (replaced, pruned, or of an interrupted commit): only
        regular files of the copies' own name pattern inside the real `_scan` folder, nothing else there."""
        folder = _scan_folder(self.directory)
        if folder is None:
            return
        current = set()
        for name in self.shard_names():
            try:
                current.add(scan_name(name, os.stat(self.directory / SHARD_DIR / name)))
            except OSError:
                pass
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.name not in current and SCAN_NAMES.fullmatch(entry.name) and \
                        entry.is_file(follow_symlinks=False):
                    Path(entry.path).unlink(missing_ok=True)

    def add_scan_copies(self) -> int:
        """Write the scan copies that live shards lack or that do not match them (stores written before scan
        copies existed, a damaged copy); a shard that does not record its copy's checksum yet (written by an
        older clipcli) is rewritten in place with the same rows first.  Returns how many copies were made."""
        made, checked = 0, False
        for name in self.shard_names():
            path = self.directory / SHARD_DIR / name
            if self._scan_copy(name) is not None:
                continue
            try:
                with self._open(name) as shard:
                    meta = shard_meta(shard)
                    table = shard.read()
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise self._damaged(name, exc) from None
            matrix = scan_matrix(table, self.dim)
            if meta.get("rows") == table.num_rows and meta.get("scan_xxh3") == scan_checksum(matrix):
                self._write_scan_copy(matrix, name, st)
            else:
                if not checked:  # a copied shard of an older store is not to become a shard of its own name
                    self.check_unique_keys()
                    checked = True
                self._write_shard(table, path)
            made += 1
        self._drop_stale_scan_copies()
        return made

    def remove_leftovers(self) -> None:
        """Delete the hidden temporary files of an interrupted commit, and finish an interrupted compaction:
        the shards its merged shard replaced are deleted (readers already skip them), then its journal."""
        folder = self.directory / SHARD_DIR
        with os.scandir(folder) as listing:
            entries = list(listing)
        for entry in entries:
            if entry.name.startswith(".part-") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
        for entry in entries:
            if JOURNAL.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                target, sources = read_journal(Path(entry.path))
                if target is not None and (folder / target).is_file():
                    self._delete_shards(sources)
                Path(entry.path).unlink(missing_ok=True)
                fsync_dir(folder)

    def _delete_shards(self, names: Iterable[str]) -> None:
        """Delete these shards (regular files of the shards folder only) and make that durable."""
        folder = self.directory / SHARD_DIR
        for name in sorted(names):
            path = folder / name
            if name.endswith(".parquet") and "/" not in name and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
        fsync_dir(folder)

    def compact(self, target_rows: int | None = None) -> tuple[int, int]:
        """Merge shards holding fewer than `target_rows` rows (default: the writer's shard size) into shards of
        up to that many, oldest first; returns (shards before, shards after).  Each merge: the merged shard
        is written under a hidden name, a journal naming it and the shards it replaces is written, the merged
        shard is renamed into place (from then on readers skip the replaced ones), the replaced shards are
        deleted, then the journal.  A crash at any point leaves every row readable once (see remove_leftovers)."""
        import pyarrow as pa

        self.commit()
        target = target_rows or self.shard_rows
        counts = [(name, shard.metadata.num_rows) for name, shard in self._shards()]
        groups, current, rows = [], [], 0
        for name, count in counts:
            if count >= target:
                continue
            if current and rows + count > target:
                groups.append(current)
                current, rows = [], 0
            current.append(name)
            rows += count
        groups.append(current)
        folder = self.directory / SHARD_DIR
        for group in (g for g in groups if len(g) > 1):
            tables = []
            for name in group:
                try:
                    with self._open(name) as shard:
                        tables.append(shard.read().replace_schema_metadata(None))
                except (OSError, ValueError) as exc:
                    raise self._damaged(name, exc) from None
            table = pa.concat_tables([t.cast(tables[0].schema) for t in tables])
            final = folder / new_shard_name()
            journal = folder / f"_compact-{uuid.uuid4().hex[:16]}.json"
            record = json.dumps({"shard": final.name, "replaces": group}).encode()
            self._write_shard(table, final, replaces=group, before_rename=lambda: atomic_write_bytes(journal, record))
            self._delete_shards(group)
            journal.unlink(missing_ok=True)
            fsync_dir(folder)
        if any(len(g) > 1 for g in groups):
            self._write_manifest({**self.manifest, "updated": _now()})
            self._drop_stale_scan_copies()
        return len(counts), len(self.shard_names())

    def upgrade(self) -> None:
        """A version 1 store becomes a plain Parquet dataset: shards its manifest does not name (left-overs of
        an interrupted commit) are deleted first, then the new manifest replaces the old one."""
        if not self.legacy:
            return
        live = set(self.shard_names())
        for entry in os.scandir(self.directory / SHARD_DIR):
            if entry.name not in live and entry.name.startswith(("part-", ".part-")) and \
                    entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
        manifest = {k: v for k, v in self.manifest.items() if k != "shards"}
        self._write_manifest({**manifest, "schema_version": SCHEMA_VERSION})
        (self.directory / LEGACY_MANIFEST).unlink(missing_ok=True)
        _guard(self.directory)

    def close(self) -> None:
        """Commit what is pending and release the lock."""
        try:
            self.commit()
        finally:
            self.release()

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
            return
        # Ctrl-C, a reader that went away (`... | head`) or a failure elsewhere keep every image finished so far;
        # a failure of the store or the disk itself does not try to write again.
        store_trouble = issubclass(kind, StoreError) or (issubclass(kind, OSError) and
                                                         not issubclass(kind, BrokenPipeError))
        try:
            if not store_trouble:
                self.commit()
        except Exception:  # noqa: BLE001  (the error on its way out is the one to report)
            pass
        finally:
            self.release()


def new_shard_name() -> str:
    return f"part-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"


def _take_lock(directory: Path) -> int:
    import fcntl

    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder else ""
        raise StoreBusyError(f"store {directory} is being written by another clip process{who}; "
                             "wait for it to finish, or use another --store folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _guard(directory: Path) -> None:
    """An empty folder where version 1 kept its manifest: a clipcli of schema version 1 then refuses the store
    ("cannot read clip-store.json") instead of taking it for a new one and deleting its shards as left-overs.
    Parquet readers see no file in it."""
    try:
        (directory / LEGACY_MANIFEST).mkdir()
    except FileExistsError:
        pass


def open_for_writing(directory: str | os.PathLike, model: StoreModel, dim: int, dtype: str | None = None,
                     shard_rows: int = DEFAULT_SHARD_ROWS, version: str = "") -> StoreWriter:
    """Open (or create) a store for writing with `model`; refuses a store made with another model."""
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}; use float16 or float32")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"--store {directory}: is a file, not a store folder")
    existing = read_manifest(directory)
    if existing is not None:
        check_model(directory, existing, model)  # before the lock: a wrong model is refused at once
    try:
        (directory / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"store {directory}: {SHARD_DIR} is not a folder; move it out of the store") from None
    except OSError as exc:
        raise StoreError(f"store {directory}: cannot create its {SHARD_DIR} folder ({exc.strerror or exc})") \
            from None
    lock_fd = _take_lock(directory)
    try:
        manifest = read_manifest(directory)  # again: another writer may have created it meanwhile
        if manifest is None:
            manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "clipcli_version": version,
                        "model": {"name": model.name, "pretrained": model.pretrained, "key": model.key,
                                  "identity": model.identity, "scoring": model.scoring},
                        "dim": int(dim), "dtype": dtype or "float16", "created": _now(), "updated": _now()}
            atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=2).encode())
            _guard(directory)
        else:
            check_model(directory, manifest, model)
            if dtype is not None and dtype != manifest["dtype"]:
                raise UsageError(f"store {directory} keeps {manifest['dtype']} embeddings; --dtype {dtype} "
                                 "needs another --store folder")
            manifest = {**manifest, "clipcli_version": version or manifest.get("clipcli_version", "")}
        writer = StoreWriter(directory, manifest, lock_fd, shard_rows)
        if _manifest_has_shard_list(directory):  # a stray version 1 list (ignored when read): written away
            writer._write_manifest(writer.manifest)
        writer.upgrade()
        writer.remove_leftovers()
        writer.add_scan_copies()
        return writer
    except BaseException:
        os.close(lock_fd)
        raise
