"""Videos as inputs: each video becomes the frames its sampling picks, named `video#t=seconds` (see paths), and
those keys flow through the same batches, engines and store as images do.

`expand` turns input paths into keys: an image stays itself, a video becomes its frame keys (a video that cannot
be opened stays itself, and decoding it gives its one error record).  `read_frame` is what `batches.decode_one`
calls for a frame key: each decoding thread keeps its own open readers (PyAV's decoders are not to be shared
between threads), a few at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from .errors import ImageReadError
from .paths import clock, frame_key, is_video_name, split_frame

OPEN_READERS = 4  # open videos kept per decoding thread
# Seconds a video may take to open, and to decode one sampled frame (a keyframe interval of a 4K video takes a
# second or two; a 1080p one's 300 frames take 12-23 s in all, bench/RESULTS.md): an end for a file that would
# hold a batch up, never for a slow but sound one.
OPEN_DEADLINE, FRAME_DEADLINE = 60.0, 60.0
FILMSTRIP = 5  # frames a page shows of a whole video


@dataclass
class Expanded:
    """Input paths as keys to encode, and what was learnt of each video on the way."""

    keys: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)  # video path -> seconds
    warnings: dict[str, list[str]] = field(default_factory=dict)  # video path -> what opening it said


def expand(paths: Sequence[str], sampling) -> Expanded:
    """The keys to encode for these inputs, in order: each video replaced by its sampled frames' keys."""
    out = Expanded()
    for path in paths:
        if not is_video_name(path) or split_frame(path)[1] is not None:
            out.keys.append(path)
            continue
        try:
            info, said = probe(path)
        except ImageReadError:
            out.keys.append(path)  # read again when decoded, which gives its error record
            continue
        times = sampling.times(info.duration)
        out.durations[path] = info.duration
        if said:
            out.warnings[path] = said
        out.keys.extend(frame_key(path, t) for t in times) if times else out.keys.append(path)
    return out


def probe(video: str):
    """(VideoInfo, warnings) of a video, read from its header: nothing is decoded (a stored video that has not
    changed is not decoded again)."""
    from .video import VideoReader

    with VideoReader(video, deadline=OPEN_DEADLINE, header_only=True) as reader:
        return reader.info, list(reader.warnings)


def fold_errors(errors: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(path, message) errors with a video's failed frames told once, as the video's, in the order first met."""
    folded: dict[str, list] = {}
    for key, message in errors:
        video, at = split_frame(key)
        entry = folded.setdefault(video, [0, message, at is None])
        entry[0] += 1
    return [(video, message if whole or count == 1 else f"{count} sampled frames could not be decoded ({message})")
            for video, (count, message, whole) in folded.items()]


def read_frame(key: str, limits) -> tuple[object, tuple[int, int]]:
    """(upright RGB image, (width, height)) of a frame key; a video named without a time is opened for its
    error (ImageReadError either way, naming the video)."""
    from .video import VideoReader

    video, at = split_frame(key)
    if at is None:  # sampling found no time: opening it says why, if it can
        with VideoReader(video, max_megapixels=limits.max_megapixels):
            raise ImageReadError(video, "no frame could be sampled (the video is empty or too short)", "no_frames")
    return _READERS.frame(video, at, limits.max_megapixels)


def picture(key: str, height: int, frames: int = FILMSTRIP):
    """What a page shows of a video: the frame of a frame key, or a filmstrip of `frames` frames evenly spaced
    (side by side, `height` pixels high) for the whole video.  ImageReadError when it cannot be read."""
    from PIL import Image

    from .options import Sampling
    from .video import VideoReader

    video, at = split_frame(key)
    with VideoReader(video) as reader:
        times = [at] if at is not None else Sampling(frames=frames).times(reader.info.duration)
        shots = [frame.image for frame in reader.frames(times)]
    if not shots:
        raise ImageReadError(video, "no frame could be read", "no_frames")
    for image in shots:
        image.thumbnail((height * 4, height))
    strip = Image.new("RGB", (sum(i.width for i in shots) + 2 * (len(shots) - 1), max(i.height for i in shots)))
    left = 0
    for image in shots:
        strip.paste(image, (left, 0))
        left += image.width + 2
    return strip


def close_readers() -> None:
    """Close the videos this process holds open (the end of a run)."""
    _READERS.close()


class _Readers:
    """Open VideoReaders, each used only by the thread that opened it (a decoder is never shared between threads):
    a few per thread, the least recently used closed, and every one closed at the end of a run.  A thread's
    frames of one video come in time order, so its reader decodes forward, seeking past what sampling skips."""

    def __init__(self, size: int = OPEN_READERS) -> None:
        self.size = size
        self._local = threading.local()
        self._lock = threading.Lock()
        self._every: set = set()  # every reader open in this process, for close()
        self._generation = 0  # bumped by close(): a thread's readers from before are closed

    def frame(self, video: str, at: float, max_megapixels: float | None):
        reader = self._reader(video, max_megapixels)
        reader.renew_deadline(FRAME_DEADLINE)  # the time the reader sat open, the model busy, does not count
        found = next(iter(reader.frames([at])), None)
        if found is None:
            said = reader.warnings[-1] if reader.warnings else "the video ends before it"
            raise ImageReadError(video, f"no frame at {clock(at)}: {said}", "truncated")
        return found.image, found.image.size

    def _reader(self, video: str, max_megapixels: float | None):
        from .store import file_state
        from .video import VideoReader

        mine = getattr(self._local, "open", None)
        if mine is None or self._local.generation != self._generation:
            mine = self._local.open = OrderedDict()
            self._local.failed = {}
            self._local.generation = self._generation
        state = file_state(video)
        entry = mine.pop(video, None)
        if entry is not None and entry[1] == state:
            mine[video] = entry
            return entry[0]
        if entry is not None:
            self._close(entry[0])  # the file changed: open it again
        failed = self._local.failed.get(video)
        if failed is not None and failed[0] == state:
            raise failed[1]  # each of its frames fails as opening it did, without trying again
        try:
            reader = VideoReader(video, max_megapixels=max_megapixels, deadline=FRAME_DEADLINE)
        except ImageReadError as exc:
            self._local.failed[video] = (state, exc)
            raise
        with self._lock:
            self._every.add(reader)
        mine[video] = (reader, state)
        while len(mine) > self.size:
            self._close(mine.popitem(last=False)[1][0])
        return reader

    def _close(self, reader) -> None:
        with self._lock:
            self._every.discard(reader)
        reader.close()

    def close(self) -> None:
        """Close every reader (when no thread decodes any more: the end of a run)."""
        with self._lock:
            readers, self._every = list(self._every), set()
            self._generation += 1
        for reader in readers:
            reader.close()


_READERS = _Readers()
