"""On-disk cache of class embeddings, one small file per (model, template set, label).

Layout under the cache root:
    embeddings/<model key>/model.json               what the model key stands for
    embeddings/<model key>/<templates key>/<label key>.emb
    embeddings/<model key>/<templates key>/labels-<label list key>.pack   (long label lists: one read)

Each .emb file is MAGIC, the dimension, a CRC32 of the data, then float32 data;
it is written to a temporary file and renamed, so readers never see half a file
and two runs writing the same entry at once both leave a valid one.  A file that
fails its checks is reported once and rebuilt; a cache that cannot be written to
is reported once and the run goes on without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import CacheWarning
from .fsutil import atomic_write_bytes

MAGIC = b"CLIPEMB1"
PACK_MIN_LABELS = 64  # from this many labels, a warm run reads one pack file instead of a file per label
HEADER = struct.Struct("<8sII")


def _digest(texts) -> str:
    return hashlib.sha256("\x1f".join(texts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def encode_entry(vector) -> bytes:
    """A float32 numpy vector -> the entry's bytes."""
    import numpy as np

    data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    return HEADER.pack(MAGIC, vector.size, zlib.crc32(data)) + data


def decode_entry(blob: bytes):
    """The vector as float32 numpy, or None when the bytes are not a complete, intact entry."""
    import numpy as np

    if len(blob) < HEADER.size:
        return None
    magic, dim, crc = HEADER.unpack_from(blob)
    data = blob[HEADER.size:]
    if magic != MAGIC or len(data) != dim * 4 or zlib.crc32(data) != crc:
        return None
    return np.frombuffer(data, dtype=np.float32).copy()


@dataclass
class EmbeddingCache:
    """Class embeddings for one model and one template set."""

    directory: Path
    model_dir: Path
    model_info: dict
    enabled: bool = True
    _warned_corrupt: bool = False

    @classmethod
    def for_model(cls, root: Path, model_key: str, model_info: dict, templates: list[str]) -> "EmbeddingCache":
        model_dir = Path(root) / "embeddings" / model_key
        return cls(model_dir / _digest(templates), model_dir, model_info)

    def _path(self, texts: tuple[str, ...]) -> str:
        # plain strings, not pathlib: a warm run looks up every label, and this is its hot loop
        return os.path.join(self.directory, _digest(texts) + ".emb")

    def get(self, texts: tuple[str, ...]):
        """The cached class embedding as float32 numpy, or None."""
        if not self.enabled:
            return None
        path = self._path(texts)
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._disable(f"cannot read {path} ({exc.strerror or exc})")
            return None
        vector = decode_entry(blob)
        if vector is None and not self._warned_corrupt:
            self._warned_corrupt = True
            warnings.warn(f"embedding cache entry {path} was corrupt; rebuilding it", CacheWarning, stacklevel=2)
        return vector

    def put(self, texts: tuple[str, ...], vector) -> None:
        if not self.enabled:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_model_info()
            atomic_write_bytes(self._path(texts), encode_entry(vector), durable=False)
        except OSError as exc:
            self._disable(f"cannot write to {self.directory} ({exc.strerror or exc})")

    def _pack_path(self, keys: list[tuple[str, ...]]) -> str:
        return os.path.join(self.directory, "labels-" + _digest([_digest(k) for k in keys]) + ".pack")

    def get_pack(self, keys: list[tuple[str, ...]]):
        """All class embeddings of one label list from a single file (a warm run with many labels reads one file):
        float32 numpy [labels, dim], or None."""
        if not self.enabled:
            return None
        try:
            with open(self._pack_path(keys), "rb") as handle:
                vector = decode_entry(handle.read())
        except OSError:
            return None
        if vector is None or vector.size % len(keys):
            return None  # damaged: the per-label entries are used, and the pack is written again
        return vector.reshape(len(keys), -1)

    def put_pack(self, keys: list[tuple[str, ...]], matrix) -> None:
        if not self.enabled:
            return
        try:
            atomic_write_bytes(self._pack_path(keys), encode_entry(matrix.reshape(-1)), durable=False)
        except OSError as exc:
            self._disable(f"cannot write to {self.directory} ({exc.strerror or exc})")

    def _write_model_info(self) -> None:
        info = self.model_dir / "model.json"
        if not info.exists():
            atomic_write_bytes(info, json.dumps(self.model_info, indent=2, sort_keys=True).encode(), durable=False)

    def _disable(self, why: str) -> None:
        self.enabled = False
        warnings.warn(f"embedding cache disabled for this run: {why}", CacheWarning, stacklevel=3)


@dataclass(frozen=True)
class CachedModel:
    key: str
    info: dict
    entries: int
    size_bytes: int

    @property
    def name(self) -> str:
        info = self.info
        name = info.get("alias") or info.get("name") or info.get("model") or self.key
        return f"{name}:{info['pretrained']}" if info.get("pretrained") and not info.get("alias") else name


def cache_summary(root: Path) -> list[CachedModel]:
    """One row per model that has cached embeddings."""
    base = Path(root) / "embeddings"
    if not base.is_dir():
        return []
    rows = []
    for model_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            info = json.loads((model_dir / "model.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        files = [p for p in model_dir.rglob("*") if p.is_file()]
        entries = sum(p.suffix == ".emb" for p in files)
        rows.append(CachedModel(model_dir.name, info, entries, sum(p.stat().st_size for p in files)))
    return rows


def clear_cache(root: Path, model: str | None = None) -> int:
    """Remove cached embeddings (of models whose name contains `model`, if given); returns models removed."""
    removed = 0
    for row in cache_summary(root):
        if model is None or model.lower() in row.name.lower() or model == row.key:
            shutil.rmtree(Path(root) / "embeddings" / row.key, ignore_errors=True)
            removed += 1
    return removed


def export_summary(root: Path) -> tuple[int, int]:
    """(ONNX exports, their bytes) under the cache root (see backends.onnx)."""
    base = Path(root) / "onnx"
    if not base.is_dir():
        return 0, 0
    folders = [p for p in base.iterdir() if p.is_dir() and (p / "model.json").is_file()]
    return len(folders), sum(f.stat().st_size for p in folders for f in p.iterdir() if f.is_file())


def clear_exports(root: Path, model: str | None = None) -> int:
    """Remove ONNX exports (of models whose name contains `model`, if given) and remembered export failures."""
    base = Path(root) / "onnx"
    if not base.is_dir():
        return 0
    removed = 0
    for folder in [p for p in base.iterdir() if p.is_dir() and p.name not in ("specs", "sizes")]:
        try:
            spec = json.loads((folder / "model.json").read_text(encoding="utf-8")).get("spec", {})
        except (OSError, ValueError):
            spec = {}
        names = " ".join(str(v) for v in spec.values() if v)
        if model is None or model.lower() in names.lower() or model == folder.name:
            shutil.rmtree(folder, ignore_errors=True)
            (base / "sizes" / f"{folder.name}.json").unlink(missing_ok=True)  # what its files' sizes were
            removed += 1
    for record in (base / "specs").glob("*.json") if (base / "specs").is_dir() else []:
        try:
            names = " ".join(str(v) for v in json.loads(record.read_text(encoding="utf-8")).get("spec", []) if v)
        except (OSError, ValueError):
            names = ""
        if model is None or model.lower() in names.lower():
            record.unlink(missing_ok=True)
    return removed
