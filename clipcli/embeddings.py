"""Image embeddings, the hinge of clipcli: encoded from files, and written through to a store.

Every command that needs image features asks an `Encoder` for them: `encoder.batches(paths)` yields
(items, features) batches in input order.  With a store, the rows it holds fresh are read for just the
keys asked, the rest are encoded, yielded at once, and queued to the store: records stream batch by
batch, and fresh images are scored from the float32 features just computed.  Scorers (zero-shot
classifier, few-shot heads) only ever see those features.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import __version__
from .batches import BatchItem, DecodeLimits, flat_items
from .options import DecodeOptions, EngineOptions, ModelOptions
from .paths import display_path, identity_hash, is_video_name, split_frame
from .store import DEFAULT_SHARD_ROWS, StoreModel, StoreWriter, file_state, open_for_writing, resolve
from .vectors import as_array

Progress = Callable[[int, int], None]
NOT_FOUND = ("not_found", "file not found")
TRANSIENT = frozenset({"timeout"})  # error kinds a store does not keep
Batches = Iterator[tuple[list[BatchItem], "np.ndarray | None"]]


def store_model(loaded) -> StoreModel:
    """The store's record of a loaded model: how to load it again, and its identity."""
    return StoreModel(loaded.spec.alias or _absolute(loaded.spec.name), _absolute_file(loaded.spec.pretrained),
                      identity_hash(loaded.identity, leave_out=("precision",)),
                      {k: v for k, v in loaded.identity.items() if k != "precision"},
                      {"logit_scale": loaded.logit_scale, "logit_bias": loaded.logit_bias,
                       "text_cache_key": loaded.identity_key()})


def _absolute(name: str) -> str:
    """A model named by a local folder, as the store records it: by its absolute path, so the store loads it
    again from any working directory."""
    for prefix in ("local-dir:", "transformers:"):
        if name.startswith(prefix) and Path(name[len(prefix):]).is_dir():
            return prefix + str(Path(name[len(prefix):]).resolve())
    return name


def _absolute_file(pretrained: str | None) -> str | None:
    """A checkpoint file given by a relative path, as an absolute one (a pretrained tag as it is)."""
    if pretrained and Path(pretrained).is_file():
        return str(Path(pretrained).resolve())
    return pretrained


def open_store_writer(directory: str | Path, loaded, dtype: str | None = None,
                      shard_rows: int = DEFAULT_SHARD_ROWS) -> StoreWriter:
    return open_for_writing(directory, store_model(loaded), loaded.embed_dim, dtype, shard_rows, __version__)


@dataclass
class SyncReport:
    """What bringing a store up to date with some inputs took."""

    stored: int = 0  # already stored and fresh
    encoded: int = 0  # newly encoded (or re-encoded because the file changed)
    failed: int = 0  # could not be read (stored as error rows when the file exists)
    pruned: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of files that failed this run


@dataclass
class Encoder:
    """A loaded model (torch or ONNX Runtime backend) with how to read images and where (engine), and the
    store it writes through, if any."""

    model: Any  # models.LoadedModel or backends.onnx.OnnxModel
    decode: DecodeOptions = DecodeOptions()
    engine: EngineOptions = EngineOptions()
    store: StoreWriter | None = None
    report: SyncReport = field(default_factory=SyncReport)

    def describe(self) -> dict:
        return self.model.describe()

    def batches(self, paths: Sequence[str], progress: Progress | None = None, expanded: bool = False) -> Batches:
        """(items, L2-normalised float32 features of the readable items) per batch, in input order; a video's
        items are its sampled frames (keys `video#t=seconds`, see frames), in time order.  expanded: the paths
        are keys from frames.expand already (its videos are not opened again)."""
        from .frames import close_readers, expand

        keys = list(paths) if expanded else expand(paths, self.decode.video).keys
        try:
            if self.store is None:
                yield from self._encode(keys, progress)
            else:
                yield from self._through_store(keys, progress)
        finally:
            close_readers()

    def _encode(self, paths: Sequence[str], progress: Progress | None = None) -> Batches:
        loaded, decode = self.model, self.decode
        limits = DecodeLimits(decode.max_megapixels, loaded.image_size if decode.reduced_decode else None)
        if self.engine.name == "ray":
            from .engines.ray import RaySettings, ray_batches

            settings = RaySettings(self.engine.address, decode.workers, self.engine.gpus_per_worker)
            yield from ray_batches(loaded, paths, decode.batch_size, limits, settings, progress)
            return
        done = 0
        loaded.expect_images(len(paths))  # the ONNX backend starts a quicker session for a short run
        for batch in loaded.image_batches(paths, decode.batch_size, decode.workers, limits):
            yield batch.items, (None if batch.pixels is None else as_array(loaded.encode_pixels(batch.pixels)))
            done += len(batch.items)
            if progress is not None:
                progress(done, len(paths))

    def _through_store(self, paths: Sequence[str], progress: Progress | None) -> Batches:
        store = self.store
        keys = [resolve(p) for p in paths]
        states = [file_state(p) for p in paths]
        videos = {display_path(split_frame(k)[0]): s for k, s in zip(keys, states)
                  if s is not None and is_video_name(split_frame(k)[0])}
        if videos:
            store.drop_stale_videos(videos)  # a changed video's old frames are not read with its new ones
        located = store.locate(keys)
        stored = [states[i] is not None and (loc := located.get(display_path(keys[i]))) is not None
                  and loc.state == states[i] for i in range(len(paths))]
        encoded = self._encode([p for p, s in zip(paths, stored) if not s])
        try:
            yield from self._merge(paths, keys, states, located, stored, flat_items(encoded), progress)
        finally:
            encoded.close()  # stops the decoding workers at once when the consumer stops early

    def _merge(self, paths, keys, states, located, stored, fresh, progress) -> Batches:
        """Stored and freshly encoded items back in input order, batch by batch."""
        store, report, size = self.store, self.report, self.decode.batch_size
        for start in range(0, len(paths), size):
            chunk = range(start, min(start + size, len(paths)))
            rows = store.read({display_path(keys[i]): located[display_path(keys[i])] for i in chunk if stored[i]})
            items, vectors = [], []
            for i in chunk:
                key = display_path(keys[i])
                if stored[i] and key in rows:
                    row = rows[key]
                    item, vector = BatchItem(paths[i], row.error), row.embedding
                    report.stored += 1
                elif stored[i]:  # its row vanished meanwhile (a shard deleted by hand): reported, not stored
                    item, vector = BatchItem(paths[i], NOT_FOUND), None
                    report.failed += 1
                else:
                    item, vector = next(fresh)
                    self._note(item, vector, keys[i], states[i], located.get(key))
                items.append(item)
                if vector is not None:
                    vectors.append(vector)
            yield items, (np.stack(vectors) if vectors else None)
            if progress is not None:
                progress(chunk.stop, len(paths))

    def _note(self, item: BatchItem, vector, key: str, state, replaces) -> None:
        """Count a freshly encoded (or failed) item and queue it to the store."""
        if item.error:
            self.report.failed += 1
            self.report.errors.append((display_path(item.path), item.error[1]))
        else:
            self.report.encoded += 1
        # a file that cannot be stat-ed (missing) has nothing to key a row on; a deadline missed (a busy machine)
        # is not the file's lasting state, so it is tried again next time
        if state is not None and not (item.error and item.error[0] in TRANSIENT):
            self.store.add(key, state, item.size, vector, item.error, replaces)

    def sync(self, paths: Sequence[str], progress: Progress | None = None) -> SyncReport:
        """Bring the store up to date with the inputs (`clip embed`): encode and add what it lacks."""
        for _ in self.batches(paths, progress):
            pass
        return self.report


def load_model_for(options: ModelOptions, store: str | Path | None = None):
    """The model the options name, on the backend they choose; with a store and no model named, the store's."""
    from . import config
    from .backends import load_backend_model
    from .store import store_model_of

    name, pretrained = options.name, options.pretrained
    if name is None and store is not None:
        stored = store_model_of(store)
        if stored is not None:
            name, pretrained = stored.name, pretrained or stored.pretrained
    name = name or config.default_model()
    return load_backend_model(name, pretrained or config.default_pretrained(name), device=options.device,
                              precision=options.precision, weights_dir=config.weights_dir(options.weights_dir),
                              backend=options.backend, cache_root=options.cache_dir)


@contextmanager
def open_encoder(model: ModelOptions, decode: DecodeOptions = DecodeOptions(), engine: EngineOptions = EngineOptions(),
                 store: str | Path | None = None, dtype: str | None = None,
                 shard_rows: int = DEFAULT_SHARD_ROWS, images: int | None = None) -> Iterator[Encoder]:
    """The run's encoder: the model loaded once and, with a store, its writer (committed and unlocked on the
    way out, also on Ctrl-C).  images: how many the run names, if known; a local ONNX model then starts its
    image session at once, in the background, quick for a short run."""
    loaded = load_model_for(model, store)
    start = images is not None and engine.name != "ray"
    if store is None:
        if start:
            loaded.expect_images(images)
        yield Encoder(loaded, decode, engine)
        return
    with open_store_writer(store, loaded, dtype, shard_rows) as writer:  # a busy store is refused first
        if start:
            loaded.expect_images(images)
        yield Encoder(loaded, decode, engine, writer)
