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
several times faster (bench/bench_search.py).  A copy whose name does not match its shard's
file is ignored (and deleted by the next writer); a shard without one is read from Parquet.

A file is fresh when its size and mtime equal the stored ones.  Stores of schema version 1 (manifest
`clip-store.json` with a shard list) are read as they are and upgraded in place by the next writer.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import config, remote
from .errors import StoreBusyError, StoreError, StoreModelError, UsageError
from .fsutil import atomic_write_bytes, fsync_dir, temp_beside
from .paths import display_path
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


def resolve(path: str) -> str:
    """The store's key for a file: its absolute path with symlinks resolved (an object-storage URI as is)."""
    return path if remote.is_remote(path) else os.path.realpath(path)


def file_state(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns), or None for a file that cannot be stat-ed (missing, broken link)."""
    if remote.is_remote(path):
        return remote.file_state(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def still_exists(key: str) -> bool:
    """Whether a stored file (or object: asked of the storage, not taken from a listing) is still there."""
    return remote.file_state(key, listed=False) is not None if remote.is_remote(key) else os.path.exists(key)


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

    def shard_names(self) -> list[str]:
        """The live shards' file names, oldest first (for a version 1 store: the ones its manifest names)."""
        if "shards" in self.manifest:
            return [Path(s["file"]).name for s in self.manifest["shards"]]
        try:
            names = [e.name for e in os.scandir(self.directory / SHARD_DIR)
                     if e.name.endswith(".parquet") and not e.name.startswith((".", "_"))]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"store {self.directory}: cannot list its shards ({exc.strerror or exc})") from None
        return sorted(names)

    @property
    def rows(self) -> int:
        return sum(shard.metadata.num_rows for _, shard in self._shards())

    def info(self) -> dict:
        """Model, counts, size on disk and last update (for `clip store info`)."""
        errors = rows = size = shards = 0
        for name, shard in self._shards():
            shards += 1
            rows += shard.metadata.num_rows
            size += shard.metadata.serialized_size + sum(shard.metadata.row_group(g).total_byte_size
                                                         for g in range(shard.metadata.num_row_groups))
            for batch in self._batches(shard, name, ["error_type"], READ_ROWS):
                errors += batch.num_rows - batch.column(0).null_count
        return {"store": str(self.directory), "model": self.model.display(), "model_key": self.model.key,
                "dim": self.dim, "dtype": self.dtype, "images": rows - errors, "errors": errors,
                "shards": shards, "size_bytes": size,
                "created": self.manifest.get("created"), "updated": self.manifest.get("updated"),
                "clipcli_version": self.manifest.get("clipcli_version"),
                "schema_version": self.manifest.get("schema_version")}

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
        between shards, so a writer replacing shards meanwhile cannot make a reader see a row twice or miss one;
        a shard deleted before it was opened held only pruned rows."""
        wanted = set(names) if names is not None else None
        for name in self.shard_names():
            if wanted is not None and name not in wanted:
                continue
            try:
                shard = self._open(name)
            except FileNotFoundError:
                continue
            try:
                yield name, shard
            finally:
                shard.close()

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
        for name in self.shard_names() if shards is None else shards:
            path = self.directory / SHARD_DIR / name
            try:
                before = os.stat(path)
            except FileNotFoundError:
                continue
            for _, shard in self._shards([name]):  # none when it went away meanwhile
                yield from self._shard_vectors(name, shard, before, path, rows)

    def _shard_vectors(self, name: str, shard, before: os.stat_result, path: Path, rows: int) -> Iterator:
        # the copy of the shard version that was opened: the same file before and after the open (one that a
        # writer replaced in between is read from Parquet instead)
        copy = self._scan_copy(name, before) if _same_file(before, path) else None
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

    def _scan_copy(self, name: str, st: os.stat_result | None = None) -> np.ndarray | None:
        """The scan copy of the shard as it is now (or as `st` saw it), memory-mapped, or None."""
        try:
            st = st or os.stat(self.directory / SHARD_DIR / name)
            copy = np.load(self.directory / SCAN_DIR / scan_name(name, st), mmap_mode="r")
        except (OSError, ValueError):
            return None
        if copy.ndim != 2 or copy.shape[1] != self.dim or copy.dtype != np.float32:
            return None
        return copy

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
                    found[path] = Location(name, group, row, (sizes[row], mtimes[row]))
        return found

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


def check_store(directory: str | os.PathLike, repair: bool = False) -> tuple[int, list[tuple[str, str]]]:
    """Read every shard of a store whole, pages checked against their checksums, and compare each shard's scan
    copy with it: (rows that read, [(damaged shard, or `_scan/<copy>`, why)]).  With `repair`, damaged shards
    and copies are deleted under the writer's lock: a shard's images are encoded again by the next `clip
    embed`, a copy is remade by the next writer."""
    import pyarrow.parquet as pq

    store = open_store(directory)
    good, damaged = 0, []
    for name in store.shard_names():
        path = store.directory / SHARD_DIR / name
        try:
            before = os.stat(path)
            with pq.ParquetFile(path, page_checksum_verification=True) as shard:
                table = shard.read()
                good += table.num_rows
            copy = store._scan_copy(name, before) if _same_file(before, path) else None  # the version read
            if copy is not None and not np.allclose(copy, scan_matrix(table, store.dim), atol=1e-6, equal_nan=True):
                damaged.append((f"{SCAN_DIR}/{scan_name(name, before)}",
                                "this scan copy differs from its shard; removing it lets the next writer remake it"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno:  # the system's trouble (permissions, handles): not damage
                raise StoreError(f"store {store.directory}: cannot read shard {name} ({exc.strerror or exc})") \
                    from None
            damaged.append((name, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__))
    if repair and damaged:
        lock = _take_lock(store.directory)
        try:
            for name, _ in damaged:
                if name.startswith(SCAN_DIR + "/"):
                    (store.directory / name).unlink(missing_ok=True)
                    continue
                (store.directory / SHARD_DIR / name).unlink(missing_ok=True)
                for copy in (store.directory / SCAN_DIR).glob(f"{name}.*.npy"):
                    copy.unlink(missing_ok=True)  # the shard's scan copy goes with it
        finally:
            os.close(lock)
    return good, damaged


def _by_group(located: dict[str, Location]) -> dict[tuple[str, int], list[str]]:
    groups: dict[tuple[str, int], list[str]] = {}
    for key, where in located.items():
        groups.setdefault((where.shard, where.group), []).append(key)
    return groups


def batch_embeddings(batch, dim: int) -> tuple[list[str], np.ndarray, list[tuple[int, str, str]]]:
    """Decode one RecordBatch or Table (path, embedding, error_type, error_message) into float32 numpy."""
    paths = batch.column(0).to_pylist()
    column = batch.column(1)
    if hasattr(column, "combine_chunks"):
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

    column = table.column("embedding") if hasattr(table, "schema") else table
    if hasattr(column, "combine_chunks"):
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
            final = self.directory / SHARD_DIR / f"part-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
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

    def _write_shard(self, table, final: Path) -> None:
        """Write a shard under a hidden name, then rename it into place (new, or replacing a shard)."""
        import pyarrow.parquet as pq

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
            self._write_scan_copy(scan_matrix(table, self.dim), final.name, os.stat(temp))
            os.replace(temp, final)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)

    def _write_scan_copy(self, matrix: np.ndarray, shard: str, st: os.stat_result) -> None:
        """The shard's scan copy, named after the shard's size and mtime (the shard keeps both on its rename).
        Written before the shard takes its place: a crash in between leaves a copy that matches nothing."""
        import io

        folder = self.directory / SCAN_DIR
        folder.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, matrix, allow_pickle=False)
        atomic_write_bytes(folder / scan_name(shard, st), buffer.getvalue())

    def _drop_stale_scan_copies(self) -> None:
        """Delete scan copies that match no live shard (replaced, pruned, or of an interrupted commit)."""
        folder = self.directory / SCAN_DIR
        if not folder.is_dir():
            return
        current = set()
        for name in self.shard_names():
            try:
                current.add(scan_name(name, os.stat(self.directory / SHARD_DIR / name)))
            except OSError:
                pass
        for entry in os.scandir(folder):
            if entry.name not in current:
                Path(entry.path).unlink(missing_ok=True)

    def add_scan_copies(self) -> int:
        """Write the scan copies that live shards lack (stores written before scan copies existed); returns
        how many."""
        made = 0
        for name in self.shard_names():
            path = self.directory / SHARD_DIR / name
            if self._scan_copy(name) is not None:
                continue
            try:
                with self._open(name) as shard:
                    table = shard.read(columns=["embedding"])
                st = os.stat(path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise self._damaged(name, exc) from None
            self._write_scan_copy(scan_matrix(table, self.dim), name, st)
            made += 1
        self._drop_stale_scan_copies()
        return made

    def remove_leftovers(self) -> None:
        """Delete the hidden temporary files of an interrupted commit."""
        for entry in os.scandir(self.directory / SHARD_DIR):
            if entry.name.startswith(".part-") and entry.name.endswith(".tmp"):
                Path(entry.path).unlink(missing_ok=True)

    def upgrade(self) -> None:
        """A version 1 store becomes a plain Parquet dataset: shards its manifest does not name (left-overs of
        an interrupted commit) are deleted first, then the new manifest replaces the old one."""
        if "shards" not in self.manifest:
            return
        live = set(self.shard_names())
        for entry in os.scandir(self.directory / SHARD_DIR):
            if entry.name not in live and entry.name.startswith(("part-", ".part-")):
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
    (directory / SHARD_DIR).mkdir(parents=True, exist_ok=True)
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
        writer.upgrade()
        writer.remove_leftovers()
        writer.add_scan_copies()
        return writer
    except BaseException:
        os.close(lock_fd)
        raise
