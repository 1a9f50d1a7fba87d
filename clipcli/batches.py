"""What flows between sources, encoders and scorers: run options, per-file items, and the one decode step
(Pillow and numpy; no torch).

`decode_one` is the only place a file becomes pixels: the torch DataLoader pipeline (`pipeline`), the
threaded pipeline of the ONNX backend (`thread_batches`) and the Ray engine all call it, so a bad file
becomes the same error item whichever engine runs.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from .errors import ImageReadError
from .images import read_image
from .paths import is_video_name, split_frame


@dataclass(frozen=True)
class DecodeLimits:
    """What the decode step of one file needs to know."""

    max_megapixels: float | None = None
    reduced_decode_size: int | None = None  # JPEG draft: decode at >= this shorter side


@dataclass
class BatchItem:
    path: str
    error: tuple[str, str] | None = None  # (kind, message)
    size: tuple[int, int] | None = None  # (width, height) of the upright image, when decoded
    extra: dict | None = None  # what its record adds after "path": a video shot's start, end (see shots)


@dataclass
class ImageBatch:
    items: list[BatchItem]
    pixels: Any  # [decoded items, 3, H, W] (torch or numpy), in item order; None when nothing decoded
    decoded: list[int] = field(default_factory=list)  # indexes into items that have pixels


def flat_items(batches) -> Iterator[tuple[BatchItem, Any]]:
    """(items, features of the readable items) batches flattened to (item, its feature row or None), in order."""
    for items, features in batches:
        rows = iter(features if features is not None else [])
        for item in items:
            yield item, (None if item.error else next(rows))


def default_workers(threads: bool = False) -> int:
    """Decoding processes (torch): one core is left to the model.  Decoding threads (ONNX Runtime): one per
    core, as ORT's threads do not spin and the scheduler interleaves them (2 cores, 1-4 MP JPEGs: 2 threads
    decode 10% more images/s than 1 with fp32, 30% more with int8; see bench/RESULTS.md)."""
    cores = os.cpu_count() or 2
    return max(1, min(8, cores if threads else cores - 1))


def decode_one(path: str, preprocess: Callable, options: DecodeLimits):
    """(path, pixels or None, (kind, message) or None, (width, height) or None) for one file, or one frame of a
    video (a key `video#t=seconds`, see frames)."""
    try:
        if is_video_name(split_frame(path)[0]):
            from .frames import read_frame

            image, size = read_frame(path, options)
        else:
            image, size = read_image(path, options.max_megapixels, options.reduced_decode_size)
        return path, preprocess(image), None, size
    except ImageReadError as exc:
        return path, None, (exc.kind, exc.reason), None
    except Exception as exc:  # a preprocess failure is still this file's problem only
        return path, None, ("decode_error", f"cannot preprocess image ({exc})"), None


def make_batch(samples: Sequence, stack: Callable) -> ImageBatch:
    items = [BatchItem(path, error, size) for path, _, error, size in samples]
    decoded = [i for i, sample in enumerate(samples) if sample[1] is not None]
    pixels = stack([samples[i][1] for i in decoded]) if decoded else None
    return ImageBatch(items, pixels, decoded)


def thread_batches(paths: Sequence[str], preprocess: Callable, batch_size: int = 32, workers: int | None = None,
                   options: DecodeLimits = DecodeLimits()) -> Iterator[ImageBatch]:
    """Numpy batches in input order, decoded on a thread pool a few batches ahead (Pillow's decoding and
    resampling release the GIL, so threads decode while the model runs)."""
    import numpy as np

    workers = default_workers(threads=True) if workers is None else workers
    if workers <= 0 or len(paths) <= batch_size:
        for start in range(0, len(paths), batch_size):
            yield make_batch([decode_one(p, preprocess, options) for p in paths[start:start + batch_size]], np.stack)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clipcli-decode") as pool:
        pending: deque = deque()
        feed = iter(paths)
        ahead = batch_size * 4
        for path in feed:
            pending.append(pool.submit(decode_one, path, preprocess, options))
            if len(pending) >= ahead:
                break
        samples = []
        while pending:
            samples.append(pending.popleft().result())
            next_path = next(feed, None)
            if next_path is not None:
                pending.append(pool.submit(decode_one, next_path, preprocess, options))
            if len(samples) == batch_size:
                yield make_batch(samples, np.stack)
                samples = []
        if samples:
            yield make_batch(samples, np.stack)
