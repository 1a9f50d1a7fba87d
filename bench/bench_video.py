"""Video sampling: clipcli.video.VideoReader against the ffmpeg command, side by side in one run.

A 1080p, 30 fps, 5-minute H.264 video (FFmpeg's testsrc2 pattern, moving; x264 ultrafast, a keyframe every
2 s like a phone's, no scene-cut keyframes) is made once into bench/data/video/, with a 2.5-minute copy.  Then:

  (a) VideoReader.frames at 1 frame a second (300 frames, upright RGB PIL images), in a child process;
  (b) /usr/bin/ffmpeg -i v.mp4 -vf fps=1 -f image2 out/%04d.png, and the same to BMP (no compression)
      and to raw RGB on /dev/null (decoding and the fps filter only: the fairest baseline);

and prints the ratios a/b (target <= 1.0); (a) against itself decoding forward only (no seeks), at 1 and
at 0.1 frames a second; and the peak RSS of (a) on the 5- and the 2.5-minute video (memory must not grow
with the length).

    python bench/bench_video.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "video"
FFMPEG = "/usr/bin/ffmpeg"
FPS, GOP, SIZE = 30, 60, (1920, 1080)

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from clipcli.video import Sampling, VideoReader
if {forward!r}:
    VideoReader._should_seek = lambda self, target: False
start = time.perf_counter()
with VideoReader({path!r}, deadline=None) as reader:
    count = sum(1 for frame in reader.frames(Sampling(every={every!r}).times(reader.info.duration)))
    decoded = reader.frames_decoded
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "frames": count, "decoded": decoded,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def make(seconds: int) -> Path:
    """The test video of that length (made once; kept in bench/data/video/)."""
    import av

    path = DATA / f"testsrc2-1080p30-{seconds}s.mp4"
    if path.is_file():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.mp4")
    source = av.open(f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate={FPS}:duration={seconds}", format="lavfi")
    with source, av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={
            "preset": "ultrafast", "g": str(GOP), "x264-params": "scenecut=0"})
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for index, frame in enumerate(source.decode(video=0)):
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            frame.pict_type = av.video.frame.PictureType.NONE  # lavfi marks every frame I: x264 would obey
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    partial.rename(path)
    return path


def ours(path: Path, every: float = 1, forward: bool = False) -> dict:
    """VideoReader in a child process (its own peak RSS); forward: never seek, decode every frame up to each time."""
    code = CHILD.format(root=str(ROOT), path=str(path), every=every, forward=forward)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def theirs(path: Path, output: str) -> float:
    """Seconds for the ffmpeg command at 1 frame a second to PNG, BMP files, or raw RGB on /dev/null."""
    folder = Path(tempfile.mkdtemp(prefix="bench-video-"))
    try:
        target = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-y", "/dev/null"] if output == "raw" \
            else ["-f", "image2", str(folder / f"%04d.{output}")]
        start = time.perf_counter()
        subprocess.run([FFMPEG, "-v", "error", "-nostdin", "-i", str(path), "-vf", "fps=1", *target], check=True)
        seconds = time.perf_counter() - start
        if output != "raw":
            assert len(list(folder.iterdir())) >= 299, "ffmpeg wrote fewer frames than expected"
        return seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side; the fastest is kept")
    args = parser.parse_args()
    import av

    print(f"{cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, PyAV {av.__version__} "
          f"(FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}); "
          f"{subprocess.run([FFMPEG, '-version'], check=False, capture_output=True, text=True).stdout.split(' Copyright')[0]}")
    made = time.perf_counter()
    long, short = make(300), make(150)
    print(f"videos: {long.name} {long.stat().st_size / 1e6:.0f} MB, {short.name} {short.stat().st_size / 1e6:.0f} MB"
          f" (made or found in {time.perf_counter() - made:.0f} s)")

    runs: dict[str, list[float]] = {"ours": [], "png": [], "bmp": [], "raw": []}
    result = {}
    for _ in range(args.repeats):  # interleaved, so load on the machine falls on both sides alike
        result = ours(long)
        runs["ours"].append(result["seconds"])
        for output in ("png", "bmp", "raw"):
            runs[output].append(theirs(long, output))
    best = {name: min(times) for name, times in runs.items()}
    print(f"(a) VideoReader.frames, every=1: {result['frames']} frames in {best['ours']:.1f} s "
          f"({result['decoded']} of {300 * FPS} frames decoded), peak RSS {result['rss_mb']:.0f} MB")
    for output, label in (("png", "PNG files"), ("bmp", "BMP files"), ("raw", "raw RGB to /dev/null")):
        print(f"(b) ffmpeg -vf fps=1 to {label}: {best[output]:.1f} s;  a/b = {best['ours'] / best[output]:.2f}")
    for every in (1, 10):
        alone = ours(long, every=every, forward=True)
        seeking = result if every == 1 else ours(long, every=every)
        print(f"seeking vs decoding forward only, every={every} ({seeking['frames']} frames): "
              f"{seeking['seconds']:.1f} s ({seeking['decoded']} decoded) vs {alone['seconds']:.1f} s "
              f"({alone['decoded']} decoded), ratio {seeking['seconds'] / alone['seconds']:.2f}")
    half = ours(short)
    print(f"peak RSS of (a): 5 min {result['rss_mb']:.0f} MB, 2.5 min {half['rss_mb']:.0f} MB "
          f"(ratio {result['rss_mb'] / half['rss_mb']:.2f}); 2.5 min took {half['seconds']:.1f} s")


if __name__ == "__main__":
    main()
