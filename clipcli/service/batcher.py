"""Dynamic batching: images from requests that arrive together are encoded in one model call (stdlib + numpy).

    batcher = Batcher(model.encode_pixels, max_batch=32, max_wait=0.005, max_queue=256)
    batcher.start()
    future = batcher.submit(pixels)          # [n, 3, H, W]; raises QueueFull when the queue holds max_queue images
    features = future.result()               # [n, dim], rows in the order given
    batcher.close()                          # encodes what is queued, then stops

One worker thread takes the oldest job, waits at most `max_wait` seconds for more, and encodes up to `max_batch`
images at once (a job larger than that is encoded alone).  A job whose deadline has passed, or whose future was
cancelled (its request gave up), is dropped before it is encoded: its work is never done.  The queue is bounded
in images, so a flood of requests meets QueueFull (HTTP 503 with Retry-After), never an unbounded backlog.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """The queue holds as many images as it may; try again after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int = 1) -> None:
        super().__init__(f"the service is busy ({depth} images queued); retry in {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """A job that waited past its deadline: dropped without being encoded."""


class BatcherClosed(Exception):
    """submit() after close(): the service is shutting down."""


@dataclass
class _Job:
    pixels: np.ndarray
    deadline: float | None  # time.monotonic() after which the job is dropped
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return len(self.pixels)


@dataclass
class BatchStats:
    """What the batcher did, for /metrics: batches and images encoded, and jobs dropped at their deadline."""

    batches: int = 0
    images: int = 0
    dropped: int = 0


class Batcher:
    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, max_wait: float = 0.005,
                 max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_wait at least 0")
        self.encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch  # (images, seconds) after each model call
        self.stats = BatchStats()
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # images in _jobs
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- the requests' side ------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Images waiting to be encoded."""
        return self._queued

    def submit(self, pixels, deadline: float | None = None) -> Future:
        """Queue images [n, ...] for encoding; the future gives their features [n, dim] in order (or
        DeadlineExceeded).  deadline: a time.monotonic() value."""
        job = _Job(np.asarray(pixels), deadline)
        if job.size == 0:
            raise ValueError("nothing to encode")
        with self._cond:
            if self._closed:
                raise BatcherClosed("the service is shutting down")
            if self._queued and self._queued + job.size > self.max_queue:  # one job is always let in when idle
                raise QueueFull(self._queued)
            self._jobs.append(job)
            self._queued += job.size
            self._cond.notify()
        return job.future

    # --- the worker ------------------------------------------------------------------------------------------
    def start(self) -> "Batcher":
        self._thread = threading.Thread(target=self._run, name="clipcli-batcher", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, encode those queued, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[_Job] | None:
        """The next batch: the oldest job, then whatever else arrives within max_wait, up to max_batch images.
        None once closed and empty."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._pop()]
            size = batch[0].size
            until = time.monotonic() + self.max_wait
            while size < self.max_batch:
                if not self._jobs:
                    left = until - time.monotonic()
                    if left <= 0 or self._closed:
                        break
                    self._cond.wait(left)
                    continue
                if size + self._jobs[0].size > self.max_batch:
                    break
                job = self._pop()
                batch.append(job)
                size += job.size
            return batch

    def _pop(self) -> _Job:
        job = self._jobs.popleft()
        self._queued -= job.size
        return job

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            now = time.monotonic()
            live = []
            for job in batch:
                if job.deadline is not None and now > job.deadline:
                    self.stats.dropped += 1
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(DeadlineExceeded("the request waited past its deadline"))
                elif job.future.set_running_or_notify_cancel():  # False: cancelled, its request is gone
                    live.append(job)
                else:
                    self.stats.dropped += 1
            if live:
                self._encode(live)

    def _encode(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            pixels = jobs[0].pixels if len(jobs) == 1 else np.concatenate([job.pixels for job in jobs])
            features = np.asarray(self.encode(pixels))
        except BaseException as exc:  # noqa: BLE001  (handed to every request of the batch)
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.images += len(pixels)
        if self.on_batch is not None:
            self.on_batch(len(pixels), time.perf_counter() - started)
        start = 0
        for job in jobs:
            job.future.set_result(features[start:start + job.size])
            start += job.size
