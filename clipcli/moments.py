"""Moments: a search's matching frames of one video merged into stretches of time, and those stretches cut out.

    from clipcli.moments import merge_moments, cut_moment
    found = merge_moments([("clip.mp4#t=4.000", 0.91), ("clip.mp4#t=4.500", 0.90), ...])  # [Moment], best first
    cut = cut_moment(found[0], "clips/")                      # Cut(path, start, end): a stream copy, no re-encode

The rule (one video at a time, its sampled frames in time order):

- **Which frames match.**  A video's frame scores are split in two by Otsu's rule (the cut that maximises the
  variance between the two sides); the frames on the high side match when the split is clear, i.e. explains at
  least SPLIT_CLEAR of the scores' variance (one scene that matches among others that do not: near 1; a video
  that matches or misses all along, whose scores are noise around one level: at most about 0.75).  Without a
  clear split, or with fewer than SPLIT_MIN_FRAMES frames, every frame matches: the video is one moment.  With
  --min-score, a frame must also score at least that.  The rule uses no cosine constant, so it holds for any
  model's range of scores.
- **Which frames join.**  Matching frames are one moment while each follows the previous one by at most
  JOIN_GAPS times the video's sampling interval (the median step between its sampled times): neighbours in the
  sampling; one non-matching (or unreadable) sampled frame between two matching ones parts them.
- **Score and extent.**  A moment's score is its best frame's (`best` is that frame's time); it extends half a
  sampling interval before its first frame and after its last, clipped to [0, the video's duration] when that
  is known (a one-frame video: HALF_DEFAULT seconds either side).

Cutting (`cut_moment`) copies the packets of the moment's stretch into a new file of the source's container with
PyAV, decoding nothing: it starts at the keyframe at or before `start` (so up to a keyframe interval early) and
ends after the last frame that starts before `end`.  The file is written beside its final name and linked into
place (never over an existing file: a taken name gets -2, -3, ...), so no partial file is left on any error or
Ctrl-C.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .paths import split_frame
from .shots import sampling_interval  # noqa: F401 (re-exported)

SPLIT_CLEAR = 0.8  # share of a video's score variance Otsu's split must explain for only one side to match
SPLIT_MIN_FRAMES = 4  # fewer frames are too few to tell a matching stretch from noise: the video is one moment
JOIN_GAPS = 1.5  # matching frames at most this many sampling intervals apart are one moment
HALF_DEFAULT = 1.0  # seconds either side of a one-frame video's frame (half the default --every 2)
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}


@dataclass(frozen=True)
class Moment:
    """A stretch of a video that matches: [start, end] in seconds, scored by its best frame (at `best`)."""

    path: str  # the video
    start: float
    end: float
    score: float
    best: float  # the time of its best frame
    frames: int = 1  # sampled frames in it

    def record(self) -> dict:
        """Its JSON shape: {"path", "start", "end", "score", "best"} (times in seconds, 3 decimals)."""
        return {"path": self.path, "start": round(self.start, 3), "end": round(self.end, 3),
                "score": round(self.score, 6), "best": round(self.best, 3)}




def matching(scores: Sequence[float], min_score: float | None = None) -> np.ndarray:
    """Which of a video's frames match (a boolean per frame), by the rule in the module's doc."""
    values = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(values)
    if min_score is not None:
        keep &= values >= min_score
    finite = np.sort(values[np.isfinite(values)])
    if len(finite) >= SPLIT_MIN_FRAMES:
        cut = otsu_cut(finite)
        if cut is not None:
            keep &= values >= cut
    return keep


def otsu_cut(ordered: np.ndarray) -> float | None:
    """The lowest score of the high side of Otsu's split of sorted scores, when that split explains at least
    SPLIT_CLEAR of their variance; None when there is no clear split (or all are equal)."""
    n = len(ordered)
    total = float(np.var(ordered))
    if n < 2 or total <= 0:
        return None
    sums = np.cumsum(ordered)[:-1]
    low = np.arange(1, n)  # frames on the low side, for a cut after each position
    mean_low, mean_high = sums / low, (sums[-1] + ordered[-1] - sums) / (n - low)
    between = low * (n - low) / n ** 2 * (mean_high - mean_low) ** 2
    between[ordered[1:] == ordered[:-1]] = -1  # never split equal scores
    best = int(np.argmax(between))
    if between[best] < SPLIT_CLEAR * total:
        return None
    return float(ordered[best + 1])


def video_moments(video: str, times: Sequence[float], scores: Sequence[float], duration: float | None = None,
                  min_score: float | None = None) -> list[Moment]:
    """The moments of one video from its frames' (time, score), best first."""
    order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
    times = np.asarray(times, dtype=np.float64)[order]
    scores = np.asarray(scores, dtype=np.float64)[order]
    interval = sampling_interval(times)
    half = HALF_DEFAULT if interval is None else interval / 2
    keep = np.flatnonzero(matching(scores, min_score))
    runs: list[list[int]] = []
    for index in keep.tolist():
        if runs and interval is not None and times[index] - times[runs[-1][-1]] <= JOIN_GAPS * interval + 1e-6:
            runs[-1].append(index)
        else:
            runs.append([index])
    found = []
    for run in runs:
        top = max(run, key=lambda i: (scores[i], -times[i]))
        start, end = max(0.0, times[run[0]] - half), times[run[-1]] + half
        if duration is not None and math.isfinite(duration) and duration > 0:
            end = min(end, duration)
        found.append(Moment(video, float(start), float(max(end, start)), float(scores[top]), float(times[top]),
                            len(run)))
    found.sort(key=lambda m: (-m.score, m.start))
    return found


def group_frames(scored: Iterable[tuple[str, float]]) -> dict[str, tuple[list[float], list[float]]]:
    """video -> (times, scores) of scored frame keys (keys that are not frames are left out)."""
    videos: dict[str, tuple[list[float], list[float]]] = {}
    for key, score in scored:
        video, at = split_frame(key)
        if at is not None:
            times, scores = videos.setdefault(video, ([], []))
            times.append(at)
            scores.append(float(score))
    return videos


def merge_moments(scored: Iterable[tuple[str, float]] | Mapping[str, tuple[Sequence[float], Sequence[float]]],
                  durations: Mapping[str, float | None] | None = None,
                  min_score: float | None = None) -> list[Moment]:
    """Every video's moments from its scored frames — (frame key, score) pairs, or video -> (times, scores) —
    best first (then by video and start).  durations: video -> seconds, to clip the last moment's end."""
    videos = scored if isinstance(scored, Mapping) else group_frames(scored)
    durations = durations or {}
    found = [moment for video, (times, scores) in videos.items()
             for moment in video_moments(video, times, scores, durations.get(video), min_score)]
    found.sort(key=lambda m: (-m.score, m.path, m.start))
    return found


def local_duration(video: str) -> float | None:
    """A local video's duration from its header (None for object storage, a missing or unreadable file)."""
    from . import remote
    from .errors import ImageReadError

    if remote.is_remote(video):
        return None
    from .store import key_path

    path = key_path(video)
    if not os.path.isfile(path):
        return None
    from .frames import probe

    try:
        return probe(path)[0].duration
    except ImageReadError:
        return None


def clip_ends(moments: Sequence[Moment]) -> list[Moment]:
    """The moments with their ends clipped to their videos' durations, read from the local files' headers."""
    durations: dict[str, float | None] = {}
    out = []
    for moment in moments:
        if moment.path not in durations:
            durations[moment.path] = local_duration(moment.path)
        duration = durations[moment.path]
        if duration is not None and moment.end > duration:
            moment = Moment(moment.path, moment.start, max(moment.start, duration), moment.score, moment.best,
                            moment.frames)
        out.append(moment)
    return out


# --- cutting ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cut:
    """A moment written as its own file: it holds [start, end] of the source (start: the keyframe it begins at)."""

    path: Path
    start: float
    end: float
    early: float  # seconds it starts before the moment's start (0 when a keyframe falls on it)


def _stamp(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}m{whole % 60:02d}s"


def cut_name(moment: Moment) -> str:
    """`video_0m12s-0m18s.mp4`: the source's name, the moment's start (rounded down) and end (rounded up)."""
    stem, ext = os.path.splitext(os.path.basename(split_frame(moment.path)[0]))
    return f"{stem}_{_stamp(math.floor(moment.start))}-{_stamp(math.ceil(moment.end - 1e-6))}{ext}"


def numbered(name: str, n: int) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem}-{n}{ext}"


def cut_moment(moment: Moment, into: str | os.PathLike) -> Cut:
    """Copy the moment's packets (video and audio, no re-encode) into a new file in `into` named by cut_name
    (a taken name gets -2, -3, ...; nothing is overwritten), written beside it and linked into place.  Raises
    VideoReadError when the source cannot be read, WriteError when the file cannot be written."""
    from . import remote
    from .errors import WriteError
    from .fsutil import disk_error, reason, temp_beside
    from .store import key_path
    from .video import VideoReadError

    video = split_frame(moment.path)[0]
    if remote.is_remote(video):
        raise VideoReadError(video, "is on object storage; --cut cuts local files (copy it here first)", "remote")
    source = key_path(video)
    ext = os.path.splitext(source)[1].lower()
    if ext not in MUXERS:
        raise VideoReadError(video, f"no container to cut {ext or 'a file without a suffix'} into", "format")
    into = Path(into)
    try:
        into.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, into) or WriteError(f"--cut {into}: {reason(exc)}") from None
    name = cut_name(moment)
    fd, temp = temp_beside(into / name, ".part")
    os.close(fd)
    try:
        first, last = _remux(source, video, temp, MUXERS[ext], moment.start, moment.end)
        target, n = into / name, 1
        while True:
            try:
                os.link(temp, target)  # fails instead of replacing a file that is there
                break
            except FileExistsError:
                n += 1
                target = into / numbered(name, n)
    except OSError as exc:
        raise disk_error(exc, into / name) or WriteError(f"cannot write {into / name}: {reason(exc)}") from None
    finally:
        Path(temp).unlink(missing_ok=True)
    return Cut(target, first, last, max(0.0, moment.start - first))


def _remux(source: str, name: str, temp: str, muxer: str, start: float, end: float) -> tuple[float, float]:
    """Stream-copy [keyframe at or before start, end) of the source's first video stream, with its audio, into
    temp; (the copy's start, its end) in the source's seconds."""
    import av

    from .video import VideoReadError

    from .fsutil import NotRegularFileError, check_regular

    try:
        check_regular(source)  # never a FIFO or a device (it could block)
        source_file = av.open("file:" + source)  # a file named pipe:x.mp4 is a file, not FFmpeg's stdin
    except NotRegularFileError as exc:
        raise VideoReadError(name, f"cannot be cut: {exc}", "not_a_file") from None
    except (OSError, av.FFmpegError) as exc:
        raise VideoReadError(name, f"cannot be opened to cut: {getattr(exc, 'strerror', None) or exc}",
                             "unreadable") from None
    try:
        if not source_file.streams.video:
            raise VideoReadError(name, "has no video stream to cut", "no_video")
        picture = source_file.streams.video[0]
        kept = [picture] + list(source_file.streams.audio)
        try:
            output = av.open(temp, "w", format=muxer)
        except (OSError, av.FFmpegError) as exc:
            raise OSError(getattr(exc, "errno", None), getattr(exc, "strerror", None) or str(exc)) from None
        try:
            streams = {}
            for stream in kept:
                try:
                    streams[stream.index] = output.add_stream_from_template(stream)
                except (ValueError, av.FFmpegError):
                    if stream is picture:
                        raise VideoReadError(name, f"its {stream.codec_context.name} video cannot be put in a "
                                             f"{muxer} file", "format") from None
            return _copy_packets(source_file, picture, streams, output, start, end, name)
        finally:
            output.close()
    except av.FFmpegError as exc:
        from .fsutil import DISK_ERRNOS

        if getattr(exc, "errno", None) in DISK_ERRNOS:  # the clip's disk, not the source: a WriteError
            raise OSError(exc.errno, os.strerror(exc.errno)) from None
        raise VideoReadError(name, f"cannot be cut: {getattr(exc, 'strerror', None) or exc}", "unreadable") from None
    finally:
        source_file.close()


def _copy_packets(source_file, picture, streams: dict, output, start: float, end: float,
                  name: str) -> tuple[float, float]:
    from .video import VideoReadError

    base = float(picture.time_base)
    origin = float(picture.start_time * picture.time_base) if picture.start_time is not None else 0.0
    source_file.seek(int((start + origin) / base), stream=picture, backward=True, any_frame=False)
    first = None  # the source time (s) of the keyframe the copy starts at
    last = start
    for packet in source_file.demux([source_file.streams[i] for i in streams]):
        if packet.dts is None and packet.pts is None:
            continue  # the flush packet at the end
        unit = float(packet.time_base)
        stamp = packet.dts if packet.dts is not None else packet.pts
        at = stamp * unit - origin
        if packet.stream.index == picture.index:
            if first is None:
                if not packet.is_keyframe or packet.pts is None:
                    continue
                first = packet.pts * unit - origin  # after start only when the source has no earlier keyframe
            if at >= end - 1e-6:
                break
            if packet.pts is not None:
                last = max(last, packet.pts * unit - origin + float((packet.duration or 0) * unit))
        elif first is None or at < first - 1e-6 or at >= end - 1e-6:
            continue
        shift = round((first + origin) / unit)
        packet.pts = None if packet.pts is None else packet.pts - shift
        packet.dts = None if packet.dts is None else packet.dts - shift
        packet.stream = streams[packet.stream.index]
        output.mux(packet)
    if first is None:
        raise VideoReadError(name, f"no keyframe found before {start:.3f} s to cut from", "truncated")
    return first, min(end, last) if last > first else end
