"""Videos as a source of frames: which times to sample, and decoding just those frames (PyAV).

A VideoReader probes a file on open (bad files raise VideoReadError, an ImageReadError, so batches report them
as one record and go on), then yields one upright RGB frame per requested time, seeking to the keyframe before a
time when that skips decoding and decoding forward otherwise.  Frames are made one at a time: memory does not grow
with the video's length.  Damage found while decoding (corrupt data, a cut file, the deadline) ends the frames
early with a line in `warnings`; the frames before it still count.
"""

from __future__ import annotations

import bisect
import io
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ImageReadError, VideoReadError, first_line
from .options import EVERY_DEFAULT, Sampling  # noqa: F401 (re-exported: how a video is sampled is an option)
from .paths import VIDEO_EXTENSIONS as VIDEO_SUFFIXES  # noqa: F401 (re-exported)
from .paths import clock
from .paths import is_video_name as is_video  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from PIL import Image

MAX_DURATION = 48 * 3600.0  # seconds: a longer declared duration is refused as absurd
MAX_SIDE = 16384  # pixels: a larger declared width or height is refused as absurd (no encoder makes it)
GAP = 1.0  # seconds: a longer jump between frames decoded one after another is reported (damage or a held frame)
DEFAULT_GOP = 2.0  # seconds between keyframes assumed until two keyframes were seen (phones: 0.5-2 s)
MP4_BOXES = (b"ftyp", b"wide", b"free", b"mdat")  # what an MP4/MOV file starts with (its 2nd 4 bytes)


__all__ = ["VIDEO_SUFFIXES", "Frame", "Sampling", "VideoInfo", "VideoReadError", "VideoReader", "is_video"]
_now = time.monotonic  # the clock deadlines are measured with (tests replace it)


@dataclass(frozen=True)
class VideoInfo:
    """What a video declares (width and height as shown, after `rotation`)."""

    duration: float
    width: int
    height: int
    rotation: int
    fps: float | None
    codec: str
    frame_count: int | None


@dataclass
class Frame:
    """One sampled frame: the requested `time`, the presentation time `shown` of the frame used, the picture."""

    time: float
    shown: float
    image: Image.Image


def _is_cover_art(stream) -> bool:
    """A music file's cover art: a video stream that is one attached picture."""
    import av

    flag = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    return flag is not None and bool(stream.disposition & flag)


def _rotation(frame, stream) -> int:
    """Degrees counter-clockwise to turn a frame to show it (0, 90, 180 or 270): the display matrix, which FFmpeg
    hands each frame (VideoFrame.rotation), or the older `rotate` tag (clockwise) where PyAV lacks it."""
    degrees = getattr(frame, "rotation", None)
    if degrees is None:
        try:
            degrees = -int(stream.metadata.get("rotate", 0))
        except ValueError:
            degrees = 0
    degrees = round(degrees) % 360
    return degrees if degrees in (90, 180, 270) else 0


def _tag_seconds(text: str | None) -> float | None:
    """Seconds from a "01:02:03.500000000" tag (Matroska's DURATION), None when there is none or it is not one."""
    try:
        hours, minutes, seconds = (text or "").split(":")
        value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for an error, without the errno and path PyAV adds."""
    return getattr(exc, "strerror", None) or type(exc).__name__


class VideoReader:
    """Frames of one video at chosen times.  `path` names it (in errors, and the file to read unless `source`,
    a file-like object, holds its bytes); s3:// and gs:// paths are read from object storage.

    max_megapixels: refuse videos whose declared frame size is larger, before decoding anything.
    deadline: wall-clock seconds for this file from opening; decoding stops there with a warning (or raises
        VideoReadError kind "timeout" when no frame was made yet).  None: no limit.
    header_only: read the header and decode nothing (the length of a video for its sampling times; `frames` is
        not for such a reader, and `info.rotation` is 0: it is learnt from a decoded frame).
    """

    def __init__(self, path: str, source=None, *, max_megapixels: float | None = None,
                 deadline: float | None = 60.0, header_only: bool = False) -> None:
        self.path = path = os.fspath(path)
        self.warnings: list[str] = []
        self.frames_decoded = 0  # frames the decoder made (most are skipped unconverted), for tests and stats
        self._ends = None if deadline is None else _now() + deadline
        self._container = None
        self._packets = None
        self._ahead = None  # a decoded frame not yet used (the probe's first frame, or one past a time)
        self._last_time = None  # time of the last frame decoded, None before any / after a seek
        self._last_key = 0.0  # time of the last keyframe decoded
        self._gop = None  # longest keyframe interval seen (seconds)
        self._back = 0.0  # seconds to seek before a time, once a seek landed past one (MPEG-TS, B-frame delay)
        self._ended = False
        self._timed_out = False
        self._damaged = False  # decoding ended at corrupt data
        self._served: float | None = None  # the last time a frame was given for
        self._pending: list = []
        try:
            self._open(source, max_megapixels, header_only)
        except ImageReadError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 (anything else PyAV raises on open is about this file)
            self.close()
            raise VideoReadError(path, f"cannot decode video ({first_line(exc)})", "decode_error") from None
        except BaseException:
            self.close()
            raise

    # opening and probing

    def _open(self, source, max_megapixels: float | None, header_only: bool = False) -> None:
        import av

        try:
            self._container = av.open(self._source(source), "r", metadata_errors="replace")
        except ImageReadError:
            raise
        except Exception as exc:  # noqa: BLE001 (PyAV and object storage raise many types; all mean this file)
            raise self._open_error(exc, source) from None
        container = self._container
        streams = [s for s in container.streams.video if not _is_cover_art(s)]
        if not streams:
            if not container.streams.audio and self._head(source)[4:8] in MP4_BOXES:
                raise self._incomplete()
            what = "audio only" if container.streams.audio else "no streams"
            raise VideoReadError(self.path, f"no video stream ({what})", "no_video_stream")
        stream = self._stream = streams[0]
        context = stream.codec_context
        if context is None:  # PyAV makes no context for a codec without a decoder here (or an unknown FourCC)
            raise VideoReadError(self.path, "video codec unknown to or not decodable by this FFmpeg build (PyAV); "
                                 "convert it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4", "unsupported_codec")
        width, height = context.width, context.height
        if not width or not height:
            raise VideoReadError(self.path, "video stream declares no frame size (damaged header)", "truncated")
        if width > MAX_SIDE or height > MAX_SIDE or (
                max_megapixels is not None and width * height > max_megapixels * 1e6):
            limit = f"the {max_megapixels:g} MP limit (raise it with --max-megapixels)" \
                if max_megapixels is not None and width <= MAX_SIDE and height <= MAX_SIDE \
                else f"{MAX_SIDE} pixels a side"
            megapixels = width * height / 1e6
            raise VideoReadError(self.path, f"video frames are {width}x{height} "
                                 f"({megapixels:.{2 if megapixels < 1 else 0}f} MP), above {limit}", "too_large")
        self._base = stream.time_base
        self._start = float(stream.start_time * self._base) if stream.start_time is not None else 0.0
        duration = self._declared_duration()
        if duration is not None and duration > MAX_DURATION:
            raise VideoReadError(self.path, f"declared duration {duration / 3600:.0f} h is above the "
                                 f"{MAX_DURATION / 3600:.0f} h limit (damaged or crafted header)", "too_large")
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self._fps = float(rate) if rate else None
        if duration is None:
            duration = self._measure_duration()
        if header_only:  # what the header says: no frame decoded, so the rotation is not known (0)
            self._rotation = 0
            self.info = VideoInfo(duration=duration, width=width, height=height, rotation=0, fps=self._fps,
                                  codec=context.name, frame_count=stream.frames or None)
            return
        self._keys = self._keyframes()
        self._packets = container.demux(stream)
        first = self._next_frame()
        if first is None:
            if self._timed_out:
                raise VideoReadError(self.path, "opening took longer than the per-file deadline", "timeout")
            if self._damaged:
                raise VideoReadError(self.path, "corrupt data before the first frame; no frame could be decoded",
                                     "decode_error")
            raise VideoReadError(self.path, "no frame could be decoded (empty or cut short)", "truncated")
        self._ahead = first
        if self._keys:  # the index times keyframes by decoding order (dts): shown that much later (B-frames)
            shift = max(0.0, self._time(first) - self._keys[0])
            self._keys = [k + shift for k in self._keys]
        self._rotation = _rotation(first, stream)
        if self._rotation in (90, 270):
            width, height = height, width
        self.info = VideoInfo(duration=duration, width=width, height=height, rotation=self._rotation,
                              fps=self._fps, codec=context.name,
                              frame_count=stream.frames or None)

    def _source(self, source):
        """What PyAV opens: the given file object, an object's bytes from storage, or a local regular file's path
        (never a FIFO or device, which could block; see check_regular)."""
        from . import remote
        from .fsutil import check_regular

        if source is not None:
            return source
        if remote.is_remote(self.path):
            data = remote.read_bytes(self.path)
            if not data:
                raise VideoReadError(self.path, "empty file (0 bytes), not a video", "not_a_video")
            return io.BytesIO(data)
        check_regular(self.path)
        if os.path.getsize(self.path) == 0:
            raise VideoReadError(self.path, "empty file (0 bytes), not a video", "not_a_video")
        return "file:" + self.path  # never another FFmpeg protocol: a file named pipe:0.mp4 is a file

    def _open_error(self, exc: BaseException, source) -> VideoReadError:
        """The VideoReadError for a file PyAV could not open (or that could not be read at all)."""
        import av

        from .images import _describe, _folder_error

        if isinstance(exc, IsADirectoryError):
            folder = _folder_error(self.path)
            return VideoReadError(self.path, folder.reason, folder.kind)
        if isinstance(exc, FileNotFoundError) and source is None:
            if os.path.islink(self.path) and not os.path.exists(self.path):
                return VideoReadError(self.path, f"broken symlink (points to {os.readlink(self.path)})",
                                      "broken_symlink")
            return VideoReadError(self.path, "file not found", "not_found")
        if isinstance(exc, av.error.FFmpegError) and not isinstance(exc, (PermissionError, IsADirectoryError)):
            head = self._head(source)
            if len(head) == 0:
                return VideoReadError(self.path, "empty file (0 bytes), not a video", "not_a_video")
            if head[4:8] in MP4_BOXES:
                return self._incomplete()
            return VideoReadError(self.path, "not a video FFmpeg can read", "not_a_video")
        if isinstance(exc, OSError):  # permission, a FIFO or device, a symlink loop, an I/O error
            kind, message = _describe(exc)
            return VideoReadError(self.path, message, kind)
        return VideoReadError(self.path, f"cannot read video ({first_line(exc)})", "unreadable")

    def _incomplete(self) -> VideoReadError:
        return VideoReadError(self.path, "MP4/MOV without its index (moov box): still being written, or cut short "
                              "before it was finished; try again when it is complete", "incomplete")

    def _head(self, source) -> bytes:
        try:
            if source is not None:
                source.seek(0)
                return source.read(16)
            from . import remote

            if remote.is_remote(self.path):
                return b"????"  # not fetched twice
            with open(self.path, "rb") as handle:  # checked regular above
                return handle.read(16)
        except (OSError, ValueError, AttributeError):
            return b"????"

    def _declared_duration(self) -> float | None:
        """The video stream's duration, else Matroska's per-stream DURATION tag, else the container's (which may
        be the sound's, a little longer)."""
        stream = self._stream
        if stream.duration:
            return float(stream.duration * self._base)
        tag = _tag_seconds(stream.metadata.get("DURATION") or stream.metadata.get("duration"))
        if tag:
            return tag
        if self._container.duration:
            return self._container.duration / 1e6
        return None

    def _keyframes(self) -> list[float] | None:
        """Keyframe times from the container's index when it lists every frame (MP4, MOV, AVI), else None."""
        stream = self._stream
        entries = getattr(stream, "index_entries", None)  # PyAV >= 15 or so
        if entries is None or not stream.frames or len(entries) < stream.frames:
            return None
        base, start = self._base, self._start
        return sorted(float(e.timestamp * base) - start for e in entries if e.is_keyframe)

    def _measure_duration(self) -> float:
        """The duration when none is declared (live-recorded WebM/MKV): the end of the last packet, found by
        reading the file's packets without decoding them; then back to the start."""
        import av

        end = 0.0
        try:
            for count, packet in enumerate(self._container.demux(self._stream)):
                if count % 256 == 255 and self._past_deadline():
                    raise VideoReadError(self.path, "no duration declared, and reading the file to measure it "
                                         "took longer than the per-file deadline", "timeout")
                if packet.pts is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * self._base) - self._start)
            self._container.seek(0, stream=self._stream)
        except av.error.FFmpegError:
            raise VideoReadError(self.path, "no duration declared and the file cannot be read to its end",
                                 "truncated") from None
        if end <= 0:
            raise VideoReadError(self.path, "no duration declared and no timed packets", "truncated")
        self._warn(f"duration not declared; {clock(end)} measured by reading the file")
        return end

    # decoding

    def _next_frame(self):
        """The next decoded frame, or None at the end: of the file, at damaged data, at the deadline (a warning
        says why when it ended early)."""
        import av

        while not self._pending:
            if self._ended:
                return None
            if self._past_deadline():
                self._ended = self._timed_out = True
                return None
            try:
                packet = next(self._packets)
                self._pending = packet.decode()  # 0-2 frames (0 while the decoder's threads fill up)
            except StopIteration:
                self._ended = True
            except av.error.FFmpegError as exc:
                self._ended = self._damaged = True
                where = clock(self._last_time) if self._last_time is not None else "0:00"
                self._warn(f"corrupt data at {where}; frames after it were skipped ({_reason(exc)})")
        frame = self._pending.pop(0)
        self.frames_decoded += 1
        now, before = self._time(frame), self._last_time
        if frame.is_corrupt or (before is not None and now < before - 1e-6):
            self._ended = self._damaged = True
            self._warn(f"corrupt data at {clock(before or now)}; frames after it were skipped")
            return None
        if before is not None and now - before > max(GAP, 10 / (self._fps or 30.0)):
            self._warn(f"no frames from {clock(before)} to {clock(now)} (damaged data, or a still picture "
                       "held that long)")
        if frame.key_frame:
            if before is not None and now > self._last_key:
                self._gop = max(self._gop or 0.0, now - self._last_key)
            self._last_key = now
        self._last_time = now
        return frame

    def frames(self, times: Sequence[float]) -> Iterator[Frame]:
        """One Frame per requested time that could be decoded, in time order: the frame shown nearest the time
        (the first at or after it, unless the one before is nearer; the last frame for a time just past it).
        Ends early, with a line in `warnings`, at damaged data or the deadline (VideoReadError kind "timeout"
        when the deadline comes before the first frame).  A later call may ask for earlier times (it seeks)."""
        if not all(math.isfinite(t) for t in times):
            raise ValueError("frame times must be finite numbers of seconds")
        made = 0
        times = sorted(times)
        if times and self._served is not None and times[0] < self._served:  # an earlier time than the last call's
            self._ended = self._damaged = False
            self._seek(times[0] - self._back)
        for target in times:
            frame = self._frame_at(target)
            if frame is None:
                if self._timed_out:
                    if made == 0:
                        raise VideoReadError(self.path, "decoding took longer than the deadline; no frame was read "
                                             "(a damaged or pathological file?)", "timeout")
                    self._warn(f"deadline reached at {clock(target)}; later frames were skipped")
                return
            made += 1
            self._served = target
            yield Frame(time=target, shown=round(self._time(frame), 6), image=self._picture(frame))

    def _frame_at(self, target: float):
        """The decoded frame for a time: seeking first when a keyframe lies between here and there, and again,
        further back, when a seek lands past the time."""
        retried = False
        seeked = self._should_seek(target) and self._seek(target - self._back)
        previous = None
        while True:
            frame = self._ahead if self._ahead is not None else self._next_frame()
            self._ahead = frame
            shown = None if frame is None else self._time(frame)
            if seeked and previous is None and not retried and not self._timed_out and not self._damaged \
                    and (frame is None or shown > target + 0.0005):
                # landed past the time (a keyframe shown after it, a coarse index, MPEG-TS): seek further back
                retried = True
                self._ended = False
                self._back = max(self._back, 2 * max(self._gop or 0.0, DEFAULT_GOP))
                if self._seek(target - self._back):
                    continue
            if frame is None:
                return self._at_end(target, previous)
            if shown >= target - 0.0005:
                if previous is not None and target - self._time(previous) < shown - target:
                    return previous  # nearer (a gap or a variable frame rate); the later one stays ahead
                return frame
            previous, self._ahead = frame, None

    def _at_end(self, target: float, previous):
        """A time past the last frame: that frame when the video really ends there, None when it was cut short."""
        if self._timed_out or self._damaged:
            return None
        if previous is None:
            self._warn(f"no frame could be decoded at or after {clock(target)} (cut short or damaged); "
                       "frames after it were skipped")
            return None
        last = self._time(previous)
        end = self.info.duration
        if end - last <= max(3 / (self.info.fps or 30.0), 0.1):
            self._ahead = previous
            return previous
        self._warn(f"video ends at {clock(last)} of {clock(end)} declared (cut short); frames after it were "
                   "skipped")
        return None

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def _time(self, frame) -> float:
        """A frame's presentation time in seconds from the stream's start."""
        if frame.pts is None:
            return self._last_time or 0.0
        return float(frame.pts * self._base) - self._start

    def _should_seek(self, target: float) -> bool:
        """Whether seeking saves decoding: a keyframe lies after here and at or before the time (exactly, from
        the index; else from the longest keyframe interval seen, or a guess)."""
        here, aim = self._last_time, target - self._back
        if self._ended or here is None or aim <= here:
            return False
        if self._keys is not None:
            i = bisect.bisect_right(self._keys, aim) - 1
            return i >= 0 and self._keys[i] > here + 1e-6
        # no index: a keyframe interval seen, else a guess that doubles with the stretch decoded without one
        return aim >= self._last_key + (self._gop or max(DEFAULT_GOP, 2 * (here - self._last_key)))

    def _seek(self, target: float) -> bool:
        """Seek to the keyframe at or before a time (decoder flushed); False where the file cannot seek."""
        import av

        try:
            self._container.seek(round((max(target, 0.0) + self._start) / self._base), backward=True,
                                 any_frame=False, stream=self._stream)
        except av.error.FFmpegError:
            return False
        self._packets = self._container.demux(self._stream)
        self._pending = []
        self._ahead = None
        self._last_time = None
        return True

    def _picture(self, frame) -> Image.Image:
        image = frame.to_image()
        if self._rotation:
            from PIL import Image

            image = image.transpose({90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
                                     270: Image.Transpose.ROTATE_270}[self._rotation])
        return image

    def _past_deadline(self) -> bool:
        return self._ends is not None and _now() >= self._ends

    def renew_deadline(self, seconds: float) -> None:
        """A new deadline, `seconds` from now, for the frames asked next (a reader kept open between calls: the
        time it waited between them does not count)."""
        self._ends = _now() + seconds
        if self._timed_out:
            self._timed_out = self._ended = False

    def close(self) -> None:
        self._ahead = None
        self._pending = []
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
