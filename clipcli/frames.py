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
    """The end of a run: the videos this thread holds open are closed (see _Readers)."""
    _READERS.close()


class _Readers:
    """Open VideoReaders, each used and closed only by the thread that opened it (a decoder is never shared
    between threads, nor closed under one that decodes): a few per thread, the least recently used closed.  A
    thread's frames of one video come in time order, so its reader decodes forward, seeking past what sampling
    skips.  The end of a run closes the calling thread's readers and makes every other thread close its own at
    its next frame; a decoding pool's threads end with the run, and their readers with them."""

    def __init__(self, size: int = OPEN_READERS) -> None:
        self.size = size
        self._local = threading.local()
        self._generation = 0  # bumped by close(): a thread's readers from before are closed by that thread

    def frame(self, video: str, at: float, max_megapixels: float | None):
        reader = self._reader(video, max_megapixels)
        reader.renew_deadline(FRAME_DEADLINE)  # the time the reader sat open, the model busy, does not count
        found = next(iter(reader.frames([at])), None)
        if found is None:
            said = reader.warnings[-1] if reader.warnings else "the video ends before it"
            raise ImageReadError(video, f"no frame at {clock(at)}: {said}", "truncated")
        return found.image, found.image.size

    def _mine(self) -> OrderedDict:
        """This thread's open readers (video -> (reader, file state)), those of an ended run closed first."""
        mine = getattr(self._local, "open", None)
        if mine is not None and self._local.generation == self._generation:
            return mine
        self._close_mine()
        self._local.open, self._local.failed, self._local.generation = OrderedDict(), {}, self._generation
        return self._local.open

    def _reader(self, video: str, max_megapixels: float | None):
        from .store import file_state
        from .video import VideoReader

        mine = self._mine()
        state = file_state(video)
        entry = mine.pop(video, None)
        if entry is not None and entry[1] == state:
            mine[video] = entry
            return entry[0]
        if entry is not None:
            entry[0].close()  # the file changed: open it again
        failed = self._local.failed.get(video)
        if failed is not None and failed[0] == state:
            raise failed[1]  # each of its frames fails as opening it did, without trying again
        try:
            reader = VideoReader(video, max_megapixels=max_megapixels, deadline=FRAME_DEADLINE)
        except ImageReadError as exc:
            self._local.failed[video] = (state, exc)
            raise
        mine[video] = (reader, state)
        while len(mine) > self.size:
            mine.popitem(last=False)[1][0].close()
        return reader

    def _close_mine(self) -> None:
        for reader, _ in (getattr(self._local, "open", None) or {}).values():
            reader.close()
        self._local.open = None

    def close(self) -> None:
        """The end of a run: this thread's readers closed, every other thread's closed by it when it next asks."""
        self._generation += 1
        self._close_mine()


_READERS = _Readers()
