"""Making small test videos with PyAV: drawn scenes that change at known times (shared by the video tests; the
videos themselves are made by tools/make_video.py, as README's examples are)."""

from __future__ import annotations

import sys
from pathlib import Path

import av
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from make_video import FORMATS, audio_stream, make_audio, make_video, picture, write_silence  # noqa: E402,F401


def encoder(*names: str) -> str:
    """The first of the named encoders this PyAV's FFmpeg has; the test is skipped (saying which) when none is."""
    for name in names:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
            except av.codec.codec.UnknownCodecError:  # a decoder only
                continue
            return name
    pytest.skip(f"PyAV's FFmpeg has none of the encoders {', '.join(names)}")


def make_music_with_cover(path, seconds: float = 1.0) -> Path:
    """An audio file with cover art: its only video stream is one attached picture (disposition attached_pic)."""
    path = Path(path)
    container = av.open(str(path), "w", format=FORMATS[path.suffix.lower()])
    sound = audio_stream(container)
    cover = container.add_stream("mjpeg", rate=1)
    cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
    cover.disposition = av.stream.Disposition.attached_pic
    frame = av.VideoFrame.from_image(picture("red", (32, 32))).reformat(format="yuvj420p")
    frame.pts = 0
    for packet in cover.encode(frame) + cover.encode():
        container.mux(packet)
    write_silence(container, sound, seconds)
    container.close()
    return path
