"""Names and keys: path names as clipcli shows and stores them, model identity hashes (stdlib only; a leaf)."""

from __future__ import annotations

import os
import re

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".avif", ".heic",
})


# Containers phones and cameras write (decoded with PyAV, see video.py)
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
# A sampled frame of a video is named by the video and its time, as a W3C Media Fragment (`clip.mp4#t=12.500`):
# the frame's key in batches and in the store, and a link a browser opens at that time.
_FRAME = re.compile(r"#t=(\d+\.\d{3})$")


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_video_name(name: str) -> bool:
    """Named like a video (any case); an object-storage URI by its object's name, without its ?options."""
    if "://" in name:
        name = name.split("?", 1)[0]
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def is_input_name(name: str) -> bool:
    """A name a folder walk, a glob or a storage listing picks up: an image or a video."""
    return is_image_name(name) or is_video_name(name)


def frame_key(video: str, time: float) -> str:
    """The key of a video's frame at `time` seconds (millisecond steps)."""
    return f"{video}#t={time:.3f}"


def clock(seconds: float) -> str:
    """A time as people read it: 0:41, 0:02.4 (tenths when there are), 12:05, 1:02:03."""
    whole, tenth = divmod(round(seconds * 10), 10)
    hours, rest = divmod(whole, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
    return f"{text}.{tenth}" if tenth and not hours else text


def split_frame(key: str) -> tuple[str, float | None]:
    """(video, time) for a frame key; (key, None) for anything else (a file whose own name ends in `#t=1.000` is
    taken for a frame only when what comes before is named like a video)."""
    found = _FRAME.search(key)
    if found is None or not is_video_name(key[:found.start()]):
        return key, None
    return key[:found.start()], float(found.group(1))


def display_path(path: str) -> str:
    """The path as text, for output and as the store's key: undecodable bytes kept as \\x escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def identity_hash(identity: dict, leave_out: tuple[str, ...] = ()) -> str:
    """A short stable hash of a model's identity (what determines its embeddings)."""
    import hashlib
    import json

    kept = {k: v for k, v in identity.items() if k not in leave_out}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:20]
