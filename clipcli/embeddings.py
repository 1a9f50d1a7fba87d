"""Image embeddings, the hinge of clipcli: encoded from files, or read from (and added to) a store.

Every command that needs image features asks `embedding_batches` for them: it yields
(items, features) batches in input order, whether the features were just encoded or were
already in the image-embedding store.  Scorers (zero-shot classifier, few-shot heads) only ever
see those features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from . import __version__
from .batches import BatchItem, DecodeOptions, RunOptions
from .images import display_path
from .scoring import as_array
from .store import (DEFAULT_SHARD_ROWS, ImageStore, StoreModel, StoreWriter, file_state, model_key, open_for_writing,
                    resolve, still_exists)

if TYPE_CHECKING:  # either backend's model: models.LoadedModel (torch) or backends.onnx.OnnxModel
    from .models import LoadedModel

Progress = Callable[[int, int], None]
Batches = Iterator[tuple[list[BatchItem], "np.ndarray | None"]]


def encode_pixels(loaded, pixels) -> np.ndarray:
    """L2-normalised float32 features of one batch of preprocessed pixels, on the model's backend."""
    return as_array(loaded.encode_pixels(pixels))


def encode_batches(loaded, paths: Sequence[str], options: RunOptions = RunOptions(),
                   progress: Progress | None = None) -> Batches:
    """(items, L2-normalised float32 features of the decoded items) per batch, in input order."""
    decode = DecodeOptions(options.max_megapixels, loaded.image_size if options.reduced_decode else None)
    if options.engine == "ray":
        from .engines.ray import RaySettings, ray_batches

        settings = RaySettings(options.ray_address, options.workers, options.gpus_per_worker)
        yield from ray_batches(loaded, paths, options.batch_size, decode, settings, progress)
        return
    done = 0
    for batch in loaded.image_batches(paths, options.batch_size, options.workers, decode):
        features = None if batch.pixels is None else encode_pixels(loaded, batch.pixels)
        yield batch.items, features
        done += len(batch.items)
        if progress is not None:
            progress(done, len(paths))


def store_model(loaded: LoadedModel) -> StoreModel:
    """The store's record of a loaded model: how to load it again, and its identity."""
    return StoreModel(loaded.spec.alias or loaded.spec.name, loaded.spec.pretrained, model_key(loaded.identity),
                      {k: v for k, v in loaded.identity.items() if k != "precision"},
                      {"logit_scale": loaded.logit_scale, "logit_bias": loaded.logit_bias,
                       "text_cache_key": loaded.identity_key()})


def open_store_writer(directory: str | Path, loaded: LoadedModel, dtype: str | None = None,
                      shard_rows: int = DEFAULT_SHARD_ROWS) -> StoreWriter:
    return open_for_writing(directory, store_model(loaded), loaded.embed_dim, dtype, shard_rows, __version__)


@dataclass
class SyncReport:
    """What bringing a store up to date with some inputs took."""

    inputs: int = 0
    stored: int = 0  # already stored and fresh
    encoded: int = 0  # newly encoded (or re-encoded because the file changed)
    failed: int = 0  # could not be read (stored as error rows when the file exists)
    pruned: int = 0
    transient: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> error, for files not stored
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of files that failed this run


def sync_store(loaded: LoadedModel, writer: StoreWriter, paths: Sequence[str], options: RunOptions = RunOptions(),
               progress: Progress | None = None) -> SyncReport:
    """Encode the inputs that the store lacks or holds stale, and add them; fresh ones cost nothing."""
    report = SyncReport(inputs=len(paths))
    todo: dict[str, tuple[str, tuple[int, int] | None]] = {}  # key -> (path to read, state)
    for path in paths:
        key = resolve(path)
        if key in todo:
            continue
        state = file_state(path)
        if state is not None and writer.is_fresh(key, state):
            report.stored += 1
            continue
        todo[key] = (path, state)
    keys = list(todo)
    done = 0
    for items, features in encode_batches(loaded, [todo[k][0] for k in keys], options):
        vectors = iter(features if features is not None else [])
        for item, key in zip(items, keys[done:done + len(items)]):
            state = todo[key][1]
            vector = None if item.error else next(vectors)
            if item.error:
                report.failed += 1
                report.errors.append((display_path(item.path), item.error[1]))
            else:
                report.encoded += 1
            if state is None:  # cannot be stat-ed (missing): nothing to key a stored row on
                if item.error:
                    report.transient[key] = item.error
                continue
            writer.add(key, state, item.size, vector, item.error)
        done += len(items)
        if progress is not None:
            progress(done, len(keys))
    writer.commit()
    return report


def prune_store(writer: StoreWriter) -> int:
    """Remove rows whose files (or objects) no longer exist; returns how many."""
    gone = [key for key in writer.stored_index() if not still_exists(key)]
    count = writer.remove(gone)
    writer.commit()
    return count


def embedding_batches(loaded: LoadedModel, paths: Sequence[str], options: RunOptions = RunOptions(),
                      writer: StoreWriter | None = None, progress: Progress | None = None,
                      report: SyncReport | None = None) -> Batches:
    """Features for the paths in input order: encoded, or taken from (and added to) the store."""
    if writer is None:
        yield from encode_batches(loaded, paths, options, progress)
        return
    synced = sync_store(loaded, writer, paths, options, progress)
    if report is not None:
        report.__dict__.update(synced.__dict__)
    yield from stored_batches(writer, paths, options.batch_size, synced.transient)


def stored_batches(store: ImageStore, paths: Sequence[str], batch_size: int,
                   transient: dict[str, tuple[str, str]] | None = None) -> Batches:
    """Features of paths that are all in the store (fresh), batch by batch in input order."""
    keys = [resolve(p) for p in paths]
    found = store.lookup(keys)
    transient = transient or {}
    for start in range(0, len(paths), batch_size):
        items, rows = [], []
        for path, key in zip(paths[start:start + batch_size], keys[start:start + batch_size]):
            row = found.get(display_path(key))
            if row is None:
                items.append(BatchItem(path, transient.get(key, ("not_found", "file not found"))))
            elif row.error:
                items.append(BatchItem(path, row.error))
            else:
                items.append(BatchItem(path))
                rows.append(row.embedding)
        yield items, (np.stack(rows).astype(np.float32, copy=False) if rows else None)
