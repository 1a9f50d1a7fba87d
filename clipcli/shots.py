"""A video's sampled frames grouped into shots, between the embeddings and the scorers (numpy only).

`group` turns the frame items of each video (consecutive in a run's batches, keyed `video#t=seconds`) into items
a scorer scores like images: first the whole video (the mean of its frames' embeddings), then each shot (the mean
of its own frames).  A shot ends where the picture changes: where two sampled frames in a row are less alike
(cosine of their embeddings) than SAME_SHOT, which costs nothing beyond the embeddings the run has anyway.
`summarise` then adds to each video's record how long each label was a shot's answer.

So a video gives its own record, then one record per shot, each with the video's path (results.py); scorers,
heads, --other and --adapt work on them unchanged.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .batches import BatchItem, flat_items
from .paths import split_frame
from .vectors import l2_normalize

# Measured with the demo model on videos of drawn scenes, the camera panning (examples/make_examples.py videos/):
# frames 0.5-1 s apart in one scene are 0.82-1.00 alike, across a change of scene 0.09-0.13.  Not measured on
# pretrained models (no model hub here): CLIP's frames of one shot are commonly above 0.9, and unrelated pictures
# below 0.7, so 0.8 sits between them there too.
SAME_SHOT = 0.8


def group(batches, durations: Mapping[str, float], warnings: Mapping[str, list[str]] | None = None,
          same_shot: float = SAME_SHOT, size: int = 32) -> Iterator[tuple[list[BatchItem], np.ndarray | None]]:
    """(items, features) batches with each video's frames replaced by the video's item and its shots' items."""
    out: list[tuple[BatchItem, np.ndarray | None]] = []
    video, frames = None, []
    warnings = warnings or {}

    def flush() -> None:
        if video is not None:
            out.extend(video_items(video, frames, durations.get(video), warnings.get(video, []), same_shot))

    for item, vector in flat_items(batches):
        name, at = split_frame(item.path)
        if at is None or name != video:
            flush()
            video, frames = (name, []) if at is not None else (None, [])
        if at is None:
            out.append((item, vector))
        else:
            frames.append((at, item, vector))
        if len(out) >= size:
            yield _batch(out)
            out = []
    flush()
    if out:
        yield _batch(out)


def _batch(pairs: list[tuple[BatchItem, np.ndarray | None]]) -> tuple[list[BatchItem], np.ndarray | None]:
    vectors = [v for _, v in pairs if v is not None]
    return [item for item, _ in pairs], (np.stack(vectors) if vectors else None)


def video_items(video: str, frames: list[tuple[float, BatchItem, np.ndarray | None]], duration: float | None,
                said: list[str], same_shot: float = SAME_SHOT) -> list[tuple[BatchItem, np.ndarray | None]]:
    """The video's item (first) and its shots' items, from its sampled frames (time, item, embedding)."""
    good = [(at, vector) for at, item, vector in frames if not item.error]
    bad = [(at, item.error) for at, item, _ in frames if item.error]
    if not good:
        kind, message = bad[0][1] if bad else ("no_frames", "no frame could be sampled")
        return [(BatchItem(video, (kind, message)), None)]
    times = [at for at, _ in good]
    vectors = np.stack([v for _, v in good]).astype(np.float32)
    cut_short = any(at > times[-1] for at, _ in bad)  # decoding stopped: the video ends, for us, where it did
    end = duration if duration is not None and duration > times[-1] and not cut_short \
        else times[-1] + (sampling_interval(times) or 0.0)
    starts = cut(vectors, same_shot)
    notes = list(said)
    if bad:
        notes.append(f"{len(bad)} of {len(frames)} sampled frames could not be decoded ({bad[0][1][1]})")
    head = {"start": 0.0, "end": round(end, 3), "shots": len(starts)}
    if notes:
        head["warnings"] = notes
    items = [(BatchItem(video, extra=head), l2_normalize(vectors.mean(axis=0)))]
    # a change of picture lies between the last frame of a shot and the first of the next: halfway is never more
    # than half a sampling interval from it
    edges = [0.0] + [round((times[i - 1] + times[i]) / 2, 3) for i in starts[1:]] + [round(end, 3)]
    bounds = starts + [len(times)]
    for number, (first, stop) in enumerate(zip(bounds, bounds[1:]), start=1):
        span = {"shot": number, "start": edges[number - 1], "end": edges[number]}
        items.append((BatchItem(video, extra=span), l2_normalize(vectors[first:stop].mean(axis=0))))
    return items


def cut(vectors: np.ndarray, same_shot: float = SAME_SHOT) -> list[int]:
    """Indexes of the frames that start a shot (the first always): where a frame is less like the one before than
    same_shot."""
    alike = np.einsum("ij,ij->i", vectors[1:], vectors[:-1]) if len(vectors) > 1 else np.zeros(0)
    return [0] + [i + 1 for i in np.flatnonzero(alike < same_shot).tolist()]


def sampling_interval(times: Sequence[float]) -> float | None:
    """The median step between a video's sorted sampled times (None for fewer than two): what a sampling was,
    where only its times are known (a store's rows)."""
    if len(times) < 2:
        return None
    return float(np.median(np.diff(np.asarray(times, dtype=np.float64))))


def summarise(records: Iterable[dict]) -> Iterator[dict]:
    """The records with each video's record given `time`: seconds per label, from its shots' top labels (the
    shots' records follow it; they are held until the last of them is in)."""
    held: list[dict] = []
    for record in records:
        if held:
            held.append(record)
        elif "shots" in record:
            held = [record]
        else:
            yield record
        if held and len(held) == held[0]["shots"] + 1:
            yield from _with_time(held)
            held = []
    yield from held


def _with_time(records: list[dict]) -> list[dict]:
    video, shots = records[0], records[1:]
    seconds: dict[str, float] = {}
    for shot in shots:
        if shot.get("predictions"):
            label = shot["predictions"][0]["label"]
            seconds[label] = seconds.get(label, 0.0) + shot["end"] - shot["start"]
    video["time"] = {label: round(s, 3) for label, s in sorted(seconds.items(), key=lambda kv: -kv[1])}
    predictions = video.pop("predictions")
    video["predictions"] = predictions  # predictions stay last, as in every record
    return records
