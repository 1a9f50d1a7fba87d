"""Making small test videos with PyAV: drawn scenes that change at known times (shared by the video tests)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageColor

FORMATS = {".mp4": "mp4", ".mov": "mov", ".m4v": "mp4", ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
           ".ts": "mpegts"}


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


def picture(what, size: tuple[int, int]) -> Image.Image:
    """A scene's picture: a colour (a name or an RGB triple) fills the frame; (colour, shape) is the demo world's
    drawing (clipcli.demo.shapes) stretched to the frame; a PIL image is resized to it."""
    if isinstance(what, Image.Image):
        return what.convert("RGB").resize(size)
    if isinstance(what, str):
        return Image.new("RGB", size, ImageColor.getrgb(what))
    if len(what) == 3 and all(isinstance(v, int) for v in what):
        return Image.new("RGB", size, tuple(what))
    from clipcli.demo import shapes

    colour, shape = what
    return shapes.draw_pil(colour, shape, size=max(size), seed=0).resize(size)


def make_video(path, scenes, size=(64, 48), fps=10, codec="libx264", rotate=None, gop=None,
               audio: bool = False, container_options: dict | None = None) -> Path:
    """Encode `scenes`, [(seconds, colour_or_drawing), ...] one after another, into `path` (the container from its
    suffix), at `fps` with a keyframe every `gop` frames (the encoder's own choice when None; scene cuts add none
    for libx264).  rotate: degrees counter-clockwise to show it turned by (display matrix), like a phone held
    upright.  audio: also a silent audio track.  container_options: the muxer's (e.g. {"live": "1"} for a WebM
    that declares no duration).  Returns the path."""
    path = Path(path)
    container = av.open(str(path), "w", format=FORMATS[path.suffix.lower()], options=container_options or {})
    options = {}
    if gop is not None:
        options["g"] = str(gop)
    if codec == "libx264":
        options.update({"preset": "veryfast", "x264-params": "scenecut=0"})
    if codec == "libx265":
        if min(size) < 64:  # x265 (in PyAV's wheels) corrupts the heap for a side under 64: the process aborts
            raise ValueError(f"libx265 needs at least 64x64 here, not {size[0]}x{size[1]}")
        options.update({"preset": "ultrafast", "x265-params": "scenecut=0:log-level=error"})
    stream = container.add_stream(codec, rate=fps, options=options)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    if rotate:
        stream.set_display_rotation(rotate)
    sound = _audio_stream(container) if audio else None
    index = 0
    for seconds, what in scenes:
        image = av.VideoFrame.from_image(picture(what, size)).reformat(format="yuv420p")
        for _ in range(round(seconds * fps)):
            image.pts = index
            image.time_base = Fraction(1, fps)
            for packet in stream.encode(image):
                container.mux(packet)
            index += 1
    for packet in stream.encode():
        container.mux(packet)
    if sound is not None:
        _write_silence(container, sound, index / fps)
    container.close()
    return path


def make_audio(path, seconds: float = 2.0) -> Path:
    """An audio-only file (silence) with a video suffix."""
    path = Path(path)
    container = av.open(str(path), "w", format=FORMATS[path.suffix.lower()])
    _write_silence(container, _audio_stream(container), seconds)
    container.close()
    return path


def make_music_with_cover(path, seconds: float = 1.0) -> Path:
    """An audio file with cover art: its only video stream is one attached picture (disposition attached_pic)."""
    path = Path(path)
    container = av.open(str(path), "w", format=FORMATS[path.suffix.lower()])
    sound = _audio_stream(container)
    cover = container.add_stream("mjpeg", rate=1)
    cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
    cover.disposition = av.stream.Disposition.attached_pic
    frame = av.VideoFrame.from_image(picture("red", (32, 32))).reformat(format="yuvj420p")
    frame.pts = 0
    for packet in cover.encode(frame) + cover.encode():
        container.mux(packet)
    _write_silence(container, sound, seconds)
    container.close()
    return path


def _audio_stream(container):
    name = encoder("aac", "mp2", "libopus")
    stream = container.add_stream(name, rate=48000)
    stream.layout = "mono"
    return stream


def _write_silence(container, stream, seconds: float) -> None:
    size = stream.codec_context.frame_size or 1024
    for i in range(int(seconds * 48000) // size):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, size), np.float32 if "flt" in stream.format.name else
                                                    np.int16), format=stream.format.name, layout="mono")
        frame.sample_rate = 48000
        frame.pts = i * size
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
