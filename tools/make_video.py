"""Videos of drawn scenes that change at known times (PyAV): README's examples and the tests make theirs here.

    make_video("walk.mp4", [(4, ("red", "circle")), (5, ("blue", "square")), (3, "black")], size=(160, 120))

A scene is (seconds, what): a colour (a name or an RGB triple) fills the frame; (colour, shape) is the demo model's
world (clipcli.demo.shapes); a PIL image is used as it is.  pan=True moves each scene's picture slowly, as a hand-held
camera would, so that no two frames of a scene are the same.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

FORMATS = {".mp4": "mp4", ".mov": "mov", ".m4v": "mp4", ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
           ".ts": "mpegts"}


def picture(what, size: tuple[int, int]):
    from PIL import Image, ImageColor

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
               audio: bool = False, pan: bool = False, container_options: dict | None = None) -> Path:
    """Encode `scenes` one after another into `path` (the container from its suffix), at `fps`, with a keyframe
    every `gop` frames (the encoder's own choice when None; libx264 adds none at scene cuts).  rotate: degrees
    counter-clockwise to show it turned by (display matrix), like a phone held upright.  audio: also a silent
    track.  container_options: the muxer's (e.g. {"live": "1"} for a WebM that declares no duration).  Returns the
    path."""
    import av

    path = Path(path)
    container = av.open(str(path), "w", format=FORMATS[path.suffix.lower()], options=container_options or {})
    options = {} if gop is None else {"g": str(gop)}
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
    sound = audio_stream(container) if audio else None
    index = 0
    for seconds, what in scenes:
        margin = max(4, size[0] // 8) if pan else 0
        big = picture(what, (size[0] + margin, size[1] + margin))
        for step in range(round(seconds * fps)):
            shift = margin * step // max(1, round(seconds * fps)) if pan else 0
            image = av.VideoFrame.from_image(big.crop((shift, shift // 2, shift + size[0], shift // 2 + size[1])))
            image = image.reformat(format="yuv420p")
            image.pts = index
            image.time_base = Fraction(1, fps)
            for packet in stream.encode(image):
                container.mux(packet)
            index += 1
    for packet in stream.encode():
        container.mux(packet)
    if sound is not None:
        write_silence(container, sound, index / fps)
    container.close()
    return path


def make_audio(path, seconds: float = 2.0) -> Path:
    """An audio-only file (silence) with a video suffix."""
    import av

    path = Path(path)
    container = av.open(str(path), "w", format=FORMATS[path.suffix.lower()])
    write_silence(container, audio_stream(container), seconds)
    container.close()
    return path


def audio_encoder() -> str:
    import av

    for name in ("aac", "mp2", "libopus"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001  (not in this FFmpeg build)
            continue
    raise RuntimeError("PyAV's FFmpeg has no audio encoder among aac, mp2, libopus")


def audio_stream(container):
    stream = container.add_stream(audio_encoder(), rate=48000)
    stream.layout = "mono"
    return stream


def write_silence(container, stream, seconds: float) -> None:
    import av
    import numpy as np

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
