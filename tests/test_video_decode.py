"""clipcli.video: sample times, frames at those times (scene, rotation), bad files, deadlines, decoding only what
is needed, and memory that does not grow with a video's length.  Every video is made here, with PyAV."""

import gc
import io
import math
import os
import random
import threading
import tracemalloc
import weakref
from fractions import Fraction

import numpy as np
import pytest
from video_helpers import encoder, make_audio, make_music_with_cover, make_video, picture

from clipcli import errors, remote, video
from clipcli.errors import ImageReadError, UsageError
from clipcli.video import VIDEO_SUFFIXES, Sampling, VideoReader, VideoReadError, is_video

RGB = {"red": (255, 0, 0), "blue": (0, 0, 255), "lime": (0, 255, 0), "yellow": (255, 255, 0)}
SCENES = [(2, "red"), (2, "blue"), (2, "lime")]  # 0-2 s red, 2-4 s blue, 4-6 s lime


def colour_at(image, xy=None) -> str:
    """The name of the RGB colour nearest the pixel (the middle by default)."""
    x, y = xy or (image.width // 2, image.height // 2)
    pixel = np.asarray(image.getpixel((x, y)), float)
    return min(RGB, key=lambda name: np.abs(pixel - RGB[name]).sum())


def read_all(path, every=0.5, **kwargs):
    with VideoReader(str(path), **kwargs) as reader:
        frames = list(reader.frames(Sampling(every=every).times(reader.info.duration)))
        return reader, frames


# names and sample times

def test_is_video_by_suffix_in_any_case():
    assert VIDEO_SUFFIXES == {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
    assert [is_video(p) for p in ["a.mp4", "b/C.MOV", "x.m4v", "y.MkV", "z.webm", "w.avi"]] == [True] * 6
    assert [is_video(p) for p in ["a.png", "mp4", "a.mp4.txt", "a.gif", "s3://b/clip.ts"]] == [False] * 5
    assert is_video("s3://bucket/trip/clip.MOV?region=eu-west-1") and is_video("gs://b/v.webm")
    assert not is_video("s3://bucket/clip.jpg?x=.mp4")


@pytest.mark.parametrize("every, duration, expected", [
    (2, 10.0, [0.0, 2.0, 4.0, 6.0, 8.0]),  # the end itself is not a time
    (2, 10.001, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]),
    (2.5, 10.0, [0.0, 2.5, 5.0, 7.5]),
    (0.1, 0.3, [0.0, 0.1, 0.2]),  # 3 * 0.1 is 0.30000000000000004, still not a time
    (0.1, 0.7, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
    (1 / 3, 1.0, [0.0, 0.333, 0.667]),  # rounded to milliseconds
    (5, 3.0, [0.0]),
    (2, 0.0, []),
    (2, -1.0, []),
    (2, math.nan, []),
    (2, math.inf, []),
])
def test_times_every(every, duration, expected):
    assert Sampling(every=every).times(duration) == expected


@pytest.mark.parametrize("frames, duration, expected", [
    (4, 10.0, [1.25, 3.75, 6.25, 8.75]),  # the middles of 4 equal parts
    (1, 7.0, [3.5]),
    (3, 1.0, [0.167, 0.5, 0.833]),
    (8, 0.002, [0.0, 0.001]),  # rounding makes duplicates: kept once; 0.002 is the end
])
def test_times_frames(frames, duration, expected):
    sampling = Sampling(frames=frames)
    assert sampling.every is None
    assert sampling.times(duration) == expected


@pytest.mark.parametrize("sampling, duration, expected", [
    (Sampling(every=1, max_frames=4), 10.0, [0.0, 2.5, 5.0, 7.5]),  # 10 times capped to 4, evenly
    (Sampling(every=2, max_frames=5), 10.0, [0.0, 2.0, 4.0, 6.0, 8.0]),  # exactly the cap: as it is
    (Sampling(every=2, max_frames=5), 10.5, [0.0, 2.1, 4.2, 6.3, 8.4]),  # one over the cap
    (Sampling(frames=10, max_frames=3), 6.0, [1.0, 3.0, 5.0]),
    (Sampling(every=1, max_frames=1), 100.0, [0.0]),
    (Sampling(every=0.001, max_frames=4), 48 * 3600.0, [0.0, 43200.0, 86400.0, 129600.0]),  # no huge list first
])
def test_times_max_frames_spreads_a_long_video_evenly(sampling, duration, expected):
    assert sampling.times(duration) == expected


def test_times_of_a_long_video_never_exceed_the_cap():
    times = Sampling(every=2).times(48 * 3600.0)
    assert len(times) == 300 and times[0] == 0.0 and times[-1] < 48 * 3600.0
    assert times == sorted(set(times)) and max(np.diff(times)) - min(np.diff(times)) <= 0.002


@pytest.mark.parametrize("kwargs, option", [
    ({"every": 0}, "--every"), ({"every": -1.0}, "--every"), ({"every": math.nan}, "--every"),
    ({"every": math.inf}, "--every"), ({"every": 0.0001}, "--every"), ({"every": "2"}, "--every"),
    ({"every": None}, "--every"), ({"frames": 0}, "--frames"), ({"frames": 2.5}, "--frames"),
    ({"frames": True}, "--frames"), ({"every": 3, "frames": 4}, "--every and --frames"),
    ({"max_frames": 0}, "--max-frames"), ({"max_frames": 1.5}, "--max-frames"),
])
def test_sampling_rejects_bad_values_naming_the_option(kwargs, option):
    with pytest.raises(UsageError) as caught:
        Sampling(**kwargs)
    message = str(caught.value)
    assert option in message and "\n" not in message


def test_sampling_key():
    assert Sampling().key() == "every=2"
    assert Sampling(every=0.5).key() == "every=0.5"
    assert Sampling(frames=8).key() == "frames=8"
    assert Sampling(every=1, max_frames=50).key() == "every=1,max=50"
    assert Sampling(every=2.0) == Sampling() and hash(Sampling(frames=8)) == hash(Sampling(frames=8))


# frames at the sample times

DECODERS = {"libx264": "h264", "h264": "h264", "mpeg4": "mpeg4", "libvpx-vp9": "vp9", "libvpx": "vp8",
            "libx265": "hevc"}
CODECS = [(".mp4", ("libx264", "h264", "mpeg4")), (".mkv", ("libx264", "mpeg4")), (".webm", ("libvpx-vp9", "libvpx")),
          (".avi", ("mpeg4",)), (".mov", ("libx265",))]


@pytest.mark.parametrize("suffix, encoders", CODECS, ids=[f"{s}-{e[0]}" for s, e in CODECS])
def test_each_frame_shows_the_scene_of_its_time(tmp_path, suffix, encoders):
    name = encoder(*encoders)
    path = make_video(tmp_path / f"v{suffix}", SCENES, size=(80, 64), fps=10, gop=10, codec=name)
    reader, frames = read_all(path)
    info = reader.info
    assert info.duration == pytest.approx(6.0, abs=0.01)
    assert (info.width, info.height, info.rotation, info.fps) == (80, 64, 0, 10.0)
    assert info.codec == DECODERS[name]
    assert info.frame_count == (None if suffix in (".mkv", ".webm") else 60)  # Matroska does not count frames
    assert [f.time for f in frames] == [i / 2 for i in range(12)]
    assert [f.shown for f in frames] == pytest.approx([i / 2 for i in range(12)], abs=1e-6)
    assert [colour_at(f.image) for f in frames] == ["red"] * 4 + ["blue"] * 4 + ["lime"] * 4
    assert all(f.image.mode == "RGB" and f.image.size == (80, 64) for f in frames)
    assert reader.warnings == []


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_video_with_sound_reads_like_one_without(tmp_path, suffix):
    path = make_video(tmp_path / f"phone{suffix}", SCENES, fps=10, gop=10, audio=True)
    import av

    with av.open(str(path)) as container:
        assert len(container.streams.audio) == 1
    reader, frames = read_all(path, every=1)
    assert reader.info.duration == pytest.approx(6.0, abs=0.05) and reader.warnings == []
    assert [(f.shown, colour_at(f.image)) for f in frames] == [
        (0.0, "red"), (1.0, "red"), (2.0, "blue"), (3.0, "blue"), (4.0, "lime"), (5.0, "lime")]


def test_drawn_scenes_come_back_as_drawn(tmp_path):
    drawings = [("red", "circle"), ("blue", "square"), ("green", "triangle")]
    path = make_video(tmp_path / "shapes.mp4", [(1, d) for d in drawings], size=(96, 96), fps=10)
    _, frames = read_all(path, every=1)
    assert len(frames) == 3
    truth = [np.asarray(picture(d, (96, 96)), float) for d in drawings]
    for i, frame in enumerate(frames):
        errors = [np.abs(np.asarray(frame.image, float) - t).mean() for t in truth]
        assert int(np.argmin(errors)) == i and errors[i] < 12, errors


def test_a_time_between_frames_gets_the_nearest_frame(tmp_path):
    path = make_video(tmp_path / "v.mp4", SCENES, fps=4, gop=8)  # frames at 0, 0.25, 0.5, ...
    with VideoReader(str(path)) as reader:
        frames = list(reader.frames([2.3, 0.1, 1.99, 5.9]))
    assert [f.time for f in frames] == [0.1, 1.99, 2.3, 5.9]  # in time order
    assert [f.shown for f in frames] == [0.0, 2.0, 2.25, 5.75]  # the last frame for a time past it
    assert [colour_at(f.image) for f in frames] == ["red", "blue", "blue", "lime"]


def test_a_held_frame_is_the_nearest_and_the_gap_is_reported(tmp_path):
    """Variable frame rate (a screen recording): frames every 0.1 s to 1.0 s, the 1.0 s frame held until 4.0 s."""
    import av

    path = tmp_path / "screen.mkv"
    stamps = [i / 10 for i in range(11)] + [4 + i / 10 for i in range(10)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for stamp in stamps:
            frame = av.VideoFrame.from_image(picture("red" if stamp < 4 else "blue", (64, 48))).reformat(
                format="yuv420p")
            frame.pts, frame.time_base = round(stamp * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with VideoReader(str(path)) as reader:
        frames = [(f.time, f.shown, colour_at(f.image)) for f in reader.frames([0.5, 2.0, 3.9, 4.5])]
    assert frames == [(0.5, 0.5, "red"), (2.0, 1.0, "red"), (3.9, 4.0, "blue"), (4.5, 4.5, "blue")]
    assert reader.warnings == ["no frames from 0:01 to 0:04 (damaged data, or a still picture held that long)"]


def test_a_file_named_like_an_ffmpeg_protocol_is_read_as_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_video(tmp_path / "pipe:0.mp4", SCENES, fps=10)
    with VideoReader("pipe:0.mp4") as reader:
        assert [colour_at(f.image) for f in reader.frames([1.0, 3.0])] == ["red", "blue"]
    with VideoReader(tmp_path / "pipe:0.mp4") as reader:  # a Path is taken too
        assert reader.path == str(tmp_path / "pipe:0.mp4") and reader.info.duration == pytest.approx(6.0, abs=0.01)


def test_a_second_call_may_go_back_in_time(tmp_path):
    path = make_video(tmp_path / "v.mkv", SCENES, fps=10, gop=10)
    with VideoReader(str(path)) as reader:
        later = [colour_at(f.image) for f in reader.frames([4.5, 5.5])]
        earlier = [(f.time, f.shown, colour_at(f.image)) for f in reader.frames([0.5, 2.5])]
    assert later == ["lime", "lime"]
    assert earlier == [(0.5, 0.5, "red"), (2.5, 2.5, "blue")]


def test_bytes_in_memory_read_like_the_file(tmp_path):
    path = make_video(tmp_path / "v.mp4", SCENES, fps=10, gop=10)
    with VideoReader("s3://bucket/v.mp4", io.BytesIO(path.read_bytes())) as reader:
        frames = list(reader.frames([0.5, 2.5, 4.5]))
    assert [colour_at(f.image) for f in frames] == ["red", "blue", "lime"]
    with pytest.raises(VideoReadError) as caught:
        VideoReader("upload.mp4", io.BytesIO(b"not a video at all" * 10))
    assert (caught.value.kind, str(caught.value)) == ("not_a_video", "upload.mp4: not a video FFmpeg can read")


def test_object_storage_paths_are_read_through_remote(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.webm", SCENES, fps=10, codec=encoder("libvpx-vp9", "libvpx"))
    stored = {"s3://b/v.webm": path.read_bytes()}

    def read_bytes(uri):
        if uri not in stored:
            raise FileNotFoundError(uri)
        return stored[uri]

    monkeypatch.setattr(remote, "read_bytes", read_bytes)
    with VideoReader("s3://b/v.webm") as reader:
        assert [colour_at(f.image) for f in reader.frames([3.0])] == ["blue"]
    with pytest.raises(VideoReadError) as caught:
        VideoReader("s3://b/gone.mp4")
    assert caught.value.kind == "not_found"


@pytest.mark.parametrize("rotate, width, height, corner", [
    (90, 48, 64, "bottom-left"), (180, 64, 48, "bottom-right"), (270, 48, 64, "top-right"), (-90, 48, 64, "top-right")])
def test_rotation_is_applied_like_ffmpeg(tmp_path, rotate, width, height, corner):
    """A 64x48 picture with a red top-left quarter, stored with a display rotation (counter-clockwise)."""
    from PIL import Image

    stored = Image.new("RGB", (64, 48), RGB["blue"])
    stored.paste(Image.new("RGB", (32, 24), RGB["red"]), (0, 0))
    path = make_video(tmp_path / "phone.mp4", [(1, stored)], fps=10, rotate=rotate)
    reader, frames = read_all(path, every=0.5)
    assert (reader.info.width, reader.info.height, reader.info.rotation) == (width, height, rotate % 360)
    image = frames[0].image
    assert image.size == (width, height)
    spots = {"top-left": (3, 3), "top-right": (width - 4, 3), "bottom-left": (3, height - 4),
             "bottom-right": (width - 4, height - 4)}
    assert {name: colour_at(image, xy) for name, xy in spots.items()} == {
        name: "red" if name == corner else "blue" for name in spots}


def test_rotation_from_the_older_rotate_tag_where_pyav_gives_none():
    """Before VideoFrame.rotation, FFmpeg gave the turn as a `rotate` tag, in degrees clockwise."""
    from types import SimpleNamespace

    def stream(tag):
        return SimpleNamespace(metadata={"rotate": tag} if tag is not None else {})

    no_rotation = SimpleNamespace()
    assert [video._rotation(no_rotation, stream(t)) for t in ["90", "180", "270", None, "x", "45"]] == \
        [270, 180, 90, 0, 0, 0]
    assert [video._rotation(SimpleNamespace(rotation=r), stream("90")) for r in [90, -90, 180, -180, 0]] == \
        [90, 270, 180, 180, 0]  # the frame's display matrix wins


@pytest.mark.skipif(not os.path.exists("/usr/bin/ffmpeg"), reason="needs the ffmpeg command")
def test_rotation_matches_the_ffmpeg_command(tmp_path):
    import subprocess

    from PIL import Image

    stored = Image.new("RGB", (64, 48), RGB["blue"])
    stored.paste(Image.new("RGB", (32, 24), RGB["red"]), (0, 0))
    path = make_video(tmp_path / "phone.mp4", [(1, stored)], fps=10, rotate=90)
    subprocess.run(["/usr/bin/ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", str(tmp_path / "f.png")],
                   check=True, timeout=30)
    theirs = np.asarray(Image.open(tmp_path / "f.png").convert("RGB"), float)
    _, frames = read_all(path)
    assert np.abs(np.asarray(frames[0].image, float) - theirs).mean() < 3


# bad files: each one VideoReadError (an ImageReadError) on open, one line, the right kind

def _cut(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def _patch_fourcc(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))
    return path


def _bad(kind, folder):
    if kind == "zero_bytes":
        (folder / "empty.mp4").write_bytes(b"")
        return folder / "empty.mp4", "not_a_video"
    if kind == "text_as_mp4":
        (folder / "notes.mp4").write_text("shopping list: dumplings\n" * 20)
        return folder / "notes.mp4", "not_a_video"
    if kind == "random_bytes":
        (folder / "noise.mkv").write_bytes(random.Random(1).randbytes(5000))
        return folder / "noise.mkv", "not_a_video"
    if kind == "audio_only_mp4":
        return make_audio(folder / "voice.mp4"), "no_video_stream"
    if kind == "audio_only_mkv":
        return make_audio(folder / "voice.mkv"), "no_video_stream"
    if kind == "music_with_cover_art":
        return make_music_with_cover(folder / "song.mp4"), "no_video_stream"
    if kind == "no_moov_yet":  # an MP4 still being written: its index comes last
        return _cut(make_video(folder / "recording.mp4", SCENES, codec="mpeg4"), 0.6), "incomplete"
    if kind == "unknown_codec":  # a FourCC no decoder knows
        path = make_video(folder / "odd.avi", SCENES, codec="mpeg4")
        return _patch_fourcc(path, b"FMP4", b"QQ9Z"), "unsupported_codec"
    if kind == "too_many_megapixels":
        return make_video(folder / "big.mp4", SCENES[:1], size=(320, 240), codec="mpeg4"), "too_large"
    if kind == "absurd_duration":  # two frames 49 hours apart
        return _long_gap(folder / "forever.mkv", 49 * 3600), "too_large"
    if kind == "missing":
        return folder / "gone.mp4", "not_found"
    if kind == "folder":
        (folder / "album.mp4").mkdir()
        return folder / "album.mp4", "not_a_file"
    if kind == "broken_symlink":
        os.symlink(folder / "nowhere.mp4", folder / "link.mp4")
        return folder / "link.mp4", "broken_symlink"
    raise ValueError(kind)


def _long_gap(path, seconds):
    """Two frames, the second stamped `seconds` after the first."""
    import av

    container = av.open(str(path), "w", format="matroska")
    stream = container.add_stream("mpeg4", rate=1)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    frame = av.VideoFrame.from_image(picture("red", (32, 32))).reformat(format="yuv420p")
    packets = []
    for pts in (0, 1):
        frame.pts = pts
        packets += stream.encode(frame)
    packets += stream.encode()
    for packet in packets:
        if packet.pts:
            packet.pts = packet.dts = int(seconds / packet.time_base)
        container.mux(packet)
    container.close()
    return path


BAD = ["zero_bytes", "text_as_mp4", "random_bytes", "audio_only_mp4", "audio_only_mkv", "music_with_cover_art",
       "no_moov_yet",
       "unknown_codec", "too_many_megapixels", "absurd_duration", "missing", "folder", "broken_symlink"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_file_raises_one_line_error_of_its_kind(tmp_path, kind):
    path, expected = _bad(kind, tmp_path)
    with pytest.raises(VideoReadError) as caught:
        VideoReader(str(path), max_megapixels=0.05)
    error = caught.value
    assert isinstance(error, ImageReadError) and error.kind == expected, (error.kind, str(error))
    assert type(error) is errors.VideoReadError
    text = str(error)
    assert text.startswith(f"{path}: ") and "\n" not in text and len(text) < 250 and "Errno" not in text
    assert error.path == str(path) and error.reason == text[len(f"{path}: "):]


def test_messages_say_what_to_do(tmp_path):
    messages = {}
    for kind in ["no_moov_yet", "unknown_codec", "too_many_megapixels", "audio_only_mp4"]:
        path, _ = _bad(kind, tmp_path)
        with pytest.raises(VideoReadError) as caught:
            VideoReader(str(path), max_megapixels=0.05)
        messages[kind] = caught.value.reason
    assert "still being written" in messages["no_moov_yet"]
    assert "not decodable" in messages["unknown_codec"] and "ffmpeg -i" in messages["unknown_codec"]
    assert messages["too_many_megapixels"] == \
        "video frames are 320x240 (0.08 MP), above the 0.05 MP limit (raise it with --max-megapixels)"
    assert messages["audio_only_mp4"] == "no video stream (audio only)"


def test_a_fifo_named_like_a_video_never_blocks(tmp_path):
    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)
    outcome = []

    def open_it():
        try:
            VideoReader(str(fifo))
        except VideoReadError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=open_it, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the thread before failing: open the FIFO's writing end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening a FIFO blocked")
    assert outcome and outcome[0].kind == "not_a_file" and "FIFO" in outcome[0].reason


# damage found while decoding: the frames before it, and a warning saying where

def _noisy_scenes(count, seconds=0.5, size=(64, 48)):
    """Scenes of random noise (so each frame's data is large and damage hits real picture data)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    return [(seconds, Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)))
            for _ in range(count)]


def test_a_cut_file_gives_the_frames_before_the_cut_and_a_warning(tmp_path):
    path = _cut(make_video(tmp_path / "cut.mkv", _noisy_scenes(12), fps=10, gop=10), 0.6)
    reader, frames = read_all(path)
    assert reader.info.duration == pytest.approx(6.0, abs=0.01)  # as declared
    times = [f.time for f in frames]
    assert 2.0 <= times[-1] < 4.0 and times == [i / 2 for i in range(len(times))]
    assert all(abs(f.shown - f.time) < 1e-6 for f in frames)
    assert len(reader.warnings) == 1 and "cut short" in reader.warnings[0], reader.warnings
    assert reader.warnings[0].endswith("frames after it were skipped")


def test_a_cut_fast_start_mp4_gives_the_frames_before_the_cut(tmp_path):
    import av

    source = make_video(tmp_path / "src.mkv", _noisy_scenes(12), fps=10, gop=10)
    path = tmp_path / "phone.mp4"  # the index first (as phones write it), then the data, cut at 60%
    with av.open(str(source)) as src, av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    reader, frames = read_all(_cut(path, 0.6))
    assert 2.0 <= frames[-1].time < 4.0 and len(frames) == frames[-1].time * 2 + 1
    assert len(reader.warnings) == 1 and "cut short" in reader.warnings[0]


@pytest.mark.parametrize("suffix, codec", [(".mkv", "libx264"), (".ts", "libx264"), (".avi", "mpeg4")])
def test_corrupt_bytes_in_the_middle_keep_the_frames_before_with_a_warning(tmp_path, suffix, codec):
    import av

    path = make_video(tmp_path / f"damaged{suffix}", _noisy_scenes(16), fps=10, gop=20, codec=encoder(codec))
    clean = [(f.time, f.shown) for f in read_all(path)[1]]
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    with av.open(str(path)) as container:  # the time of the first frame whose data the damage hits
        stream = container.streams.video[0]
        hit = min(float(p.pts * p.time_base) - float((stream.start_time or 0) * stream.time_base)
                  for p in container.demux(stream) if p.pts is not None and p.pos is not None
                  and p.pos + p.size > middle)
    data[middle:middle + 3000] = random.Random(7).randbytes(3000)
    path.write_bytes(bytes(data))
    reader, frames = read_all(path)
    assert reader.warnings and reader.warnings[0].startswith(("corrupt data at", "no frames from")), reader.warnings
    got = [(f.time, f.shown) for f in frames]
    before = [c for c in clean if c[0] < hit - 0.2]
    assert len(before) >= 2 and got[:len(before)] == before  # every frame before the damage, as before it
    assert got != clean


def test_corrupt_data_stops_decoding_with_where_it_was(tmp_path):
    """A frame going back in time (garbage after damage) ends the frames: those before it count."""
    path = make_video(tmp_path / "v.mkv", SCENES, fps=10, gop=60, codec="mpeg4")  # no B-frames: pts pass through
    with VideoReader(str(path)) as reader:
        def damaged(packets):
            for packet in packets:
                if packet.pts == 2400:  # the frame of 2.4 s says it is shown at 0.003 s
                    packet.pts = 3
                yield packet

        reader._packets = damaged(reader._packets)
        frames = list(reader.frames(Sampling(every=0.1).times(6.0)))
    assert [f.time for f in frames] == [i / 10 for i in range(24)]
    assert reader.warnings == ["corrupt data at 0:02.3; frames after it were skipped"]


# deadlines

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_deadline_of_zero_raises_timeout(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", SCENES, fps=10)
    monkeypatch.setattr(video, "_now", Clock())
    with pytest.raises(VideoReadError) as caught:
        VideoReader(str(path), deadline=0)
    assert caught.value.kind == "timeout" and "\n" not in str(caught.value)


def test_a_deadline_before_the_first_frame_raises_timeout_from_frames(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", SCENES, fps=10)
    clock = Clock()
    monkeypatch.setattr(video, "_now", clock)
    with VideoReader(str(path), deadline=5) as reader:
        clock.now += 6
        with pytest.raises(VideoReadError) as caught:
            list(reader.frames([1.0, 2.0]))
    assert caught.value.kind == "timeout"


def test_a_deadline_midway_keeps_the_frames_so_far_with_a_warning(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", SCENES, fps=10, gop=10)
    clock = Clock()
    monkeypatch.setattr(video, "_now", clock)
    with VideoReader(str(path), deadline=5) as reader:
        made = []
        for frame in reader.frames([0.0, 1.0, 2.5, 3.5, 5.0]):
            made.append(frame.time)
            if len(made) == 2:
                clock.now += 6  # the rest of the file would take too long
    assert made == [0.0, 1.0]
    assert reader.warnings == ["deadline reached at 0:02.5; later frames were skipped"]


def test_no_deadline_reads_everything(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", SCENES, fps=10)
    clock = Clock()
    monkeypatch.setattr(video, "_now", clock)
    with VideoReader(str(path), deadline=None) as reader:
        clock.now += 1e9
        assert len(list(reader.frames([0.0, 5.9]))) == 2


# decoding only what sampling needs

class Pictures:
    """Counts frames converted to pictures (VideoReader._picture)."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = VideoReader._picture

        def counted(reader, frame):
            self.count += 1
            return real(reader, frame)

        monkeypatch.setattr(VideoReader, "_picture", counted)


@pytest.mark.parametrize("suffix, codec", [(".mp4", "libx264"), (".mkv", "libx264"), (".webm", "libvpx-vp9")])
def test_sparse_samples_seek_instead_of_decoding_everything(tmp_path, monkeypatch, suffix, codec):
    """A 60 s video at 10 fps (600 frames, a keyframe a second), sampled every 10 s: seeking decodes one frame
    per sample (MP4 by its index; Matroska and WebM, which have none here, by a guessed keyframe interval);
    decoding through would make 600."""
    path = make_video(tmp_path / f"long{suffix}", [(10, c) for c in ["red", "blue"] * 3], size=(32, 32), fps=10,
                      gop=10, codec=encoder(codec))
    pictures = Pictures(monkeypatch)
    with VideoReader(str(path)) as reader:
        frames = list(reader.frames(Sampling(every=10).times(reader.info.duration)))
    assert [f.time for f in frames] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert [f.shown for f in frames] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert [colour_at(f.image) for f in frames] == ["red", "blue"] * 3
    assert pictures.count == 6  # only the frames used become pictures
    assert reader.frames_decoded == 6


def test_dense_samples_decode_forward_once(tmp_path, monkeypatch):
    """Samples closer than the keyframe interval (3 s): each frame decoded at most once, none twice by seeking
    back; the one seek, to the keyframe at 3 s, skips the frame at 2.9 s."""
    path = make_video(tmp_path / "v.mp4", SCENES, fps=10, gop=30)
    pictures = Pictures(monkeypatch)
    with VideoReader(str(path)) as reader:
        frames = list(reader.frames(Sampling(every=0.2).times(6.0)))
    assert len(frames) == 30 and pictures.count == 30
    assert reader.frames_decoded == 58  # 0-2.8 s and 3-5.8 s, each once


def test_samples_inside_each_keyframe_interval_decode_from_its_keyframe(tmp_path):
    """Keyframes every 2 s, samples at 1.5 s into each: from each keyframe, 16 frames, not all 60."""
    path = make_video(tmp_path / "v.mp4", SCENES, fps=10, gop=20)
    with VideoReader(str(path)) as reader:
        frames = list(reader.frames([1.5, 3.5, 5.5]))
    assert [colour_at(f.image) for f in frames] == ["red", "blue", "lime"]
    assert reader.frames_decoded == 16 + 16 + 16


# memory does not grow with the length

def _peak_while_sampling(path) -> tuple[int, int]:
    """(tracemalloc peak in bytes, most pictures alive at once) while sampling a video at 1 frame a second."""
    alive: list = []
    most = 0
    gc.collect()
    tracemalloc.start()
    try:
        with VideoReader(str(path)) as reader:
            for frame in reader.frames(Sampling(every=1, max_frames=10_000).times(reader.info.duration)):
                alive = [ref for ref in alive if ref() is not None] + [weakref.ref(frame.image)]
                most = max(most, len(alive))
                del frame
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, most


def test_memory_does_not_grow_with_the_length(tmp_path):
    short = make_video(tmp_path / "10min.mp4", [(600, "red")], size=(64, 64), fps=1, gop=10)
    long = make_video(tmp_path / "20min.mp4", [(1200, "red")], size=(64, 64), fps=1, gop=10)
    short_peak, short_alive = _peak_while_sampling(short)
    long_peak, long_alive = _peak_while_sampling(long)
    assert short_alive == 1 and long_alive == 1  # one picture at a time: a generator, no list of frames
    assert long_peak < short_peak * 1.25 + 64 * 1024, (short_peak, long_peak)


# durations

def test_a_webm_without_a_declared_duration_is_measured_with_a_warning(tmp_path):
    """A live-recorded WebM (MediaRecorder) declares no duration."""
    path = make_video(tmp_path / "live.webm", SCENES, fps=10, codec=encoder("libvpx-vp9", "libvpx"),
                      container_options={"live": "1"})
    reader, frames = read_all(path, every=2)
    assert reader.info.duration == pytest.approx(6.0, abs=0.11)
    assert reader.warnings == ["duration not declared; 0:06 measured by reading the file"]
    assert [colour_at(f.image) for f in frames] == ["red", "blue", "lime"]


def test_clock_text():
    assert [video.clock(s) for s in [0, 41, 2.4, 59.96, 725, 3723.4]] == \
        ["0:00", "0:41", "0:02.4", "1:00", "12:05", "1:02:03"]


# any times, any container: the frame a seek-and-decode gives is the one decoding everything would give

def _numbered(count: int) -> list:
    """One scene per frame (10 fps), each a barcode of its frame number: 6 stripes, white for a 1 bit."""
    from PIL import Image

    scenes = []
    for number in range(count):
        stripes = np.array([255 if number >> bit & 1 else 0 for bit in range(6)], np.uint8)
        scenes.append((0.1, Image.fromarray(np.repeat(np.repeat(stripes, 8)[None, :], 48, axis=0)).convert("RGB")))
    return scenes


def _number(image) -> int:
    grey = np.asarray(image.convert("L").resize((48, 48)), float)
    return sum(1 << bit for bit in range(6) if grey[:, bit * 8 + 2:bit * 8 + 6].mean() > 128)


SEEKING = [(".mp4", "libx264", 12), (".mkv", "libx264", 12), (".webm", "libvpx-vp9", 12), (".ts", "libx264", 12),
           (".avi", "mpeg4", 12), (".mov", "libx265", 12), (".mp4", "libx264", 30)]


@pytest.mark.parametrize("suffix, codec, gop", SEEKING, ids=[f"{s}-{c}-gop{g}" for s, c, g in SEEKING])
def test_any_times_give_the_frames_decoding_everything_gives(tmp_path, suffix, codec, gop):
    path = make_video(tmp_path / f"n{suffix}", _numbered(60), size=(64, 64), fps=10, gop=gop, codec=encoder(codec))
    with VideoReader(str(path)) as reader:
        frames_all = list(reader.frames([i / 10 for i in range(60)]))
    shown = [round(f.shown, 6) for f in frames_all]
    assert shown == [i / 10 for i in range(60)]  # every frame, in order: the ground truth
    assert [_number(f.image) for f in frames_all] == list(range(60))
    rng = random.Random(f"{suffix}{codec}{gop}")
    for _ in range(4):
        times = sorted(t for t in (round(rng.uniform(0, 6.0), 3) for _ in range(rng.randint(2, 9)))
                       if abs(t * 10 % 1 - 0.5) > 0.02)  # no time halfway between two frames: either is nearest
        with VideoReader(str(path)) as reader:
            frames = list(reader.frames(times))
        expected = [min(5.9, max(0.0, math.floor(t * 10 + 0.5) / 10)) for t in times]  # nearest, ties later
        assert [f.time for f in frames] == times
        assert [round(f.shown, 6) for f in frames] == expected, times
        assert [_number(f.image) for f in frames] == [round(e * 10) for e in expected], times
