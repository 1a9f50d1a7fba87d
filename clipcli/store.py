"""The image-embedding store: a folder of Parquet shards plus a JSON manifest (pyarrow and numpy only).

    STORE/clip-store.json        the manifest: model, dimension, dtype, the live shards (written last)
    STORE/shards/part-*.parquet  one row per image file:
        path           string     resolved absolute path (the key)
        size           int64      file size in bytes
        mtime_ns       int64      modification time, nanoseconds
        width, height  int32      upright image size in pixels (null for an unreadable file)
        embedding      fixed_size_list<float16 or float32>[dim]  L2-normalised image embedding (null on error)
        error_type     string     null, or why the file could not be read
        error_message  string

Writers hold an exclusive lock (`STORE/.clip-store.lock`).  Each commit writes new shards under a
hidden temporary name, renames them into place and then atomically replaces the manifest, so a
reader (or a crash at any moment) sees either the old set of shards or the new one.  Shards not
named in the manifest are left-overs of an interrupted commit and are removed by the next writer.
A row whose file changed is replaced by rewriting its shard without it in the same commit, so every
path appears at most once.  A file is fresh when its size and mtime equal the stored ones.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from . import remote
from .errors import StoreBusyError, StoreError, StoreModelError, UsageError
from .fsutil import atomic_write_bytes, fsync_dir, temp_beside
from .scoring import l2_normalize

MANIFEST = "clip-store.json"
SHARD_DIR = "shards"
LOCK_FILE = ".clip-store.lock"
FORMAT = "clipcli-image-store"
SCHEMA_VERSION = 1
DTYPES = ("float16", "float32")
DEFAULT_SHARD_ROWS = 4096
COMMIT_SECONDS = 30.0  # a long run commits at least this often, so an interruption loses little
READ_ROWS = 65536


def resolve(path: str) -> str:
    """The store's key for a file: its absolute path with symlinks resolved (an object-storage URI as is)."""
    return path if remote.is_remote(path) else os.path.realpath(path)


def key_text(path: str) -> str:
    """A path as Parquet text: bytes that are not UTF-8 kept as \\x escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


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


def model_key(identity: dict) -> str:
    import hashlib

    kept = {k: v for k, v in identity.items() if k != "precision"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class Rows:
    """Rows to add, column by column (embeddings as float32 [n, dim]; rows with an error have zeros there)."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    widths: list[int | None] = field(default_factory=list)
    heights: list[int | None] = field(default_factory=list)
    errors: list[tuple[str, str] | None] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, path: str, state: tuple[int, int], size: tuple[int, int] | None,
            vector: np.ndarray | None, error: tuple[str, str] | None) -> None:
        self.paths.append(path)
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
            pa.array([key_text(p) for p in self.paths], pa.string()),
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


class ImageStore:
    """A store opened for reading.  Shards never change once written, so reading needs no lock."""

    def __init__(self, directory: str | os.PathLike, manifest: dict) -> None:
        self.directory = Path(directory)
        self.manifest = manifest

    # --- what it holds --------------------------------------------------------------------------------
    @property
    def model(self) -> StoreModel:
        m = self.manifest["model"]
        return StoreModel(m["name"], m.get("pretrained"), m["key"], m.get("identity", {}), m.get("scoring", {}))

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def shard_files(self) -> list[Path]:
        return [self.directory / s["file"] for s in self.manifest["shards"]]

    @property
    def rows(self) -> int:
        return sum(int(s["rows"]) for s in self.manifest["shards"])

    def info(self) -> dict:
        """Model, counts, size on disk and last update (for `clip store info`)."""
        errors = 0
        for batch in self.iter_record_batches(columns=["error_type"]):
            errors += batch.num_rows - batch.column(0).null_count
        size = sum(f.stat().st_size for f in self.shard_files if f.exists())
        size += (self.directory / MANIFEST).stat().st_size
        return {"store": str(self.directory), "model": self.model.display(), "model_key": self.model.key,
                "dim": self.dim, "dtype": self.dtype, "images": self.rows - errors, "errors": errors,
                "shards": len(self.manifest["shards"]), "size_bytes": size,
                "created": self.manifest.get("created"), "updated": self.manifest.get("updated"),
                "clipcli_version": self.manifest.get("clipcli_version"),
                "schema_version": self.manifest.get("schema_version")}

    # --- reading ------------------------------------------------------------------------------------
    def _open_shards(self) -> list:
        # Open every live shard's file first: a writer that replaces a shard afterwards cannot pull it away.
        # (Plain handles: a ParquetFile keeps its last row group in memory, so readers are made one at a time.)
        try:
            return [open(path, "rb") for path in self.shard_files]
        except OSError as exc:
            raise StoreError(f"store {self.directory}: cannot read a shard ({exc.strerror or exc}); "
                             "run `clip embed` on it again to repair") from None

    def iter_record_batches(self, columns: Sequence[str] | None = None, rows: int = READ_ROWS) -> Iterator:
        """pyarrow RecordBatches over every live row, shard by shard, row group by row group."""
        import pyarrow.parquet as pq

        handles = self._open_shards()
        try:
            for handle in handles:
                try:
                    shard = pq.ParquetFile(handle)
                except (OSError, ValueError) as exc:
                    raise StoreError(f"store {self.directory}: shard {handle.name} is damaged ({exc}); "
                                     "run `clip embed` on it again to repair") from None
                yield from shard.iter_batches(batch_size=rows, columns=list(columns) if columns else None)
                del shard
                handle.close()
        finally:
            for handle in handles:
                handle.close()

    def to_table(self, columns: Sequence[str] | None = None):
        """Every live row as one pyarrow Table."""
        import pyarrow as pa

        batches = list(self.iter_record_batches(columns))
        if batches:
            return pa.Table.from_batches(batches)
        schema = arrow_schema(self.dim, self.dtype)
        return schema.empty_table().select(list(columns)) if columns else schema.empty_table()

    def iter_embeddings(self, rows: int = READ_ROWS) -> Iterator[tuple[list[str], np.ndarray, list[tuple[int, str, str]]]]:
        """(paths, float32 [n, dim] renormalised embeddings, [(row, error_type, message)]) per batch; the
        embedding rows of error entries are zero."""
        for batch in self.iter_record_batches(["path", "embedding", "error_type", "error_message"], rows):
            yield batch_embeddings(batch, self.dim)

    def index(self) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of every live row."""
        found: dict[str, tuple[int, int]] = {}
        for batch in self.iter_record_batches(["path", "size", "mtime_ns"]):
            paths, sizes, mtimes = (batch.column(i).to_pylist() for i in range(3))
            found.update(zip(paths, zip(sizes, mtimes)))
        return found

    def lookup(self, paths: Iterable[str]) -> dict[str, StoredImage]:
        """The stored rows of these (resolved) paths; others are absent from the answer."""
        wanted = {key_text(p) for p in paths}
        found: dict[str, StoredImage] = {}
        for batch in self.iter_record_batches(["path", "embedding", "error_type", "error_message"]):
            keys = batch.column(0).to_pylist()
            hits = [i for i, key in enumerate(keys) if key in wanted]
            if not hits:
                continue
            import pyarrow as pa

            sub = batch.take(pa.array(hits))
            names, vectors, errors = batch_embeddings(sub, self.dim)
            error_rows = {row: (kind, message) for row, kind, message in errors}
            for row, name in enumerate(names):
                error = error_rows.get(row)
                found[name] = StoredImage(name, None if error else vectors[row], error)
        return found


def batch_embeddings(batch, dim: int) -> tuple[list[str], np.ndarray, list[tuple[int, str, str]]]:
    """Decode one RecordBatch (path, embedding, error_type, error_message) into float32 numpy."""
    paths = batch.column(0).to_pylist()
    column = batch.column(1)
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


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"store {directory}: cannot read {MANIFEST} ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(text)
    except ValueError:
        raise StoreError(f"store {directory}: {MANIFEST} is not valid JSON; the store cannot be used") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{directory}: {MANIFEST} is not a clipcli store manifest")
    if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
        raise StoreError(f"store {directory} has schema version {manifest['schema_version']}, newer than this "
                         f"clipcli reads ({SCHEMA_VERSION}); upgrade clipcli")
    return manifest


def open_store(directory: str | os.PathLike) -> ImageStore:
    """Open an existing store for reading."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"--store {directory}: is a file, not a store folder")
    manifest = read_manifest(directory)
    if manifest is None:
        raise StoreError(f"no image store at {directory}; create one with `clip embed IMAGES --store {directory}`")
    return ImageStore(directory, manifest)


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
        self.pending = Rows()
        self.replaced: set[str] = set()  # key paths whose old rows must go at the next commit
        self.last_commit = time.monotonic()
        self._index: dict[str, tuple[int, int]] | None = None

    # --- planning ---------------------------------------------------------------------------------------
    def stored_index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index = self.index()
        return self._index

    def is_fresh(self, key: str, state: tuple[int, int]) -> bool:
        return self.stored_index().get(key_text(key)) == state

    # --- writing ----------------------------------------------------------------------------------------
    def add(self, key: str, state: tuple[int, int], size: tuple[int, int] | None,
            vector: np.ndarray | None, error: tuple[str, str] | None) -> None:
        """Queue one row (key: resolved path); commits by itself every `shard_rows` rows or COMMIT_SECONDS."""
        if key_text(key) in self.stored_index():
            self.replaced.add(key_text(key))
        self.pending.add(key, state, size, vector, error)
        if len(self.pending) >= self.shard_rows or time.monotonic() - self.last_commit >= COMMIT_SECONDS:
            self.commit()

    def remove(self, keys: Iterable[str]) -> int:
        """Queue rows for removal (pruning); returns how many stored rows that is."""
        index = self.stored_index()
        gone = {key_text(k) for k in keys} & index.keys()
        self.replaced |= gone
        return len(gone)

    def commit(self) -> None:
        """Make pending rows and removals durable: new shard(s), then the manifest, then clean-up."""
        if not self.pending and not self.replaced:
            return
        import pyarrow.parquet as pq

        shards = list(self.manifest["shards"])
        obsolete: list[Path] = []
        if self.replaced:
            kept = []
            for entry in shards:
                path = self.directory / entry["file"]
                keys = pq.read_table(path, columns=["path"]).column(0).to_pylist()
                if not self.replaced.intersection(keys):
                    kept.append(entry)
                    continue
                import pyarrow as pa

                table = pq.read_table(path)
                keep = pa.array([key not in self.replaced for key in keys])
                table = table.filter(keep)
                obsolete.append(path)
                if table.num_rows:
                    kept.append(self._write_shard(table))
            shards = kept
        if self.pending:
            shards.append(self._write_shard(self.pending.table(self.dim, self.dtype)))
        manifest = {**self.manifest, "shards": shards, "updated": _now()}
        atomic_write_bytes(self.directory / MANIFEST, json.dumps(manifest, indent=2).encode())
        self.manifest = manifest
        for path in obsolete:
            path.unlink(missing_ok=True)
        if self._index is not None:
            for key in self.replaced:
                self._index.pop(key, None)
            self._index.update({key_text(p): (s, m) for p, s, m in
                                zip(self.pending.paths, self.pending.sizes, self.pending.mtimes)})
        self.pending = Rows()
        self.replaced = set()
        self.last_commit = time.monotonic()

    def _write_shard(self, table) -> dict:
        import pyarrow.parquet as pq

        name = f"part-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        final = self.directory / SHARD_DIR / name
        fd, temp = temp_beside(final)
        os.close(fd)
        try:
            # Embeddings do not compress (float noise) and are never repeated: write them plain, which
            # reads several times faster; the text and integer columns compress well with zstd.
            pq.write_table(table, temp, row_group_size=READ_ROWS,
                           compression={name: ("none" if name == "embedding" else "zstd") for name in table.column_names},
                           use_dictionary=["path", "error_type", "error_message"])
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)
        return {"file": f"{SHARD_DIR}/{name}", "rows": table.num_rows}

    def remove_leftovers(self) -> None:
        """Delete shards and temporary files that no manifest names (an interrupted commit's)."""
        live = {Path(s["file"]).name for s in self.manifest["shards"]}
        for entry in (self.directory / SHARD_DIR).iterdir():
            if entry.name not in live and (entry.name.startswith("part-") or entry.name.startswith(".part-")):
                entry.unlink(missing_ok=True)

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
        if kind is None or issubclass(kind, KeyboardInterrupt):
            self.close()  # Ctrl-C keeps every image finished so far
        else:
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
                        "dim": int(dim), "dtype": dtype or "float16", "created": _now(), "updated": _now(),
                        "shards": []}
            atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=2).encode())
        else:
            check_model(directory, manifest, model)
            if dtype is not None and dtype != manifest["dtype"]:
                raise UsageError(f"store {directory} keeps {manifest['dtype']} embeddings; --dtype {dtype} "
                                 "needs another --store folder")
            manifest = {**manifest, "clipcli_version": version or manifest.get("clipcli_version", "")}
        writer = StoreWriter(directory, manifest, lock_fd, shard_rows)
        writer.remove_leftovers()
        return writer
    except BaseException:
        os.close(lock_fd)
        raise
