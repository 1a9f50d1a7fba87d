"""Classifying a video against classifying the same frames saved as image files, side by side in one run.

The 1080p, 30 fps, 5-minute H.264 video of bench_video.py (made once into bench/data/video/), sampled at 1 frame a
second (300 frames):

  (a) `clip classify v.mp4 --every 1` (a ClassifyRun: frames decoded from the video, encoded, grouped into shots);
  (b) the same 300 frames, written beforehand as JPEG files (quality 95, not timed), classified as a folder;

each in a fresh child process, alternating, and prints the ratio a/b (target <= 1.3) for a ViT-B-32 with random
weights (the product's reference shape; speed does not depend on the weights), at 1 frame a second and at the
default (every 2 s, a keyframe each in this video), and for the demo model (tiny: the decoding is nearly all of
it).  Then the peak RSS of (a) for the 5- and the 2.5-minute video: memory must not grow
with the video's length.

    python bench/bench_video_classify.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from clipcli.options import DecodeOptions, LabelOptions, ModelOptions, Sampling, ScoreOptions
from clipcli.run import ClassifyRun
from clipcli.images import find_images
run = ClassifyRun(LabelOptions(("a red circle", "a blue square", "a test pattern", "a clock")),
                  ModelOptions({model!r}), DecodeOptions(video=Sampling(every={every})), score=ScoreOptions(top_k=1))
paths = find_images([{inputs!r}])
start = time.perf_counter()
with run.open(paths):
    count = sum(1 for _ in run.records())
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "records": count,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def child(model: str, inputs: str, every: float = 1.0) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), model=model, inputs=inputs, every=every)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def frames_as_jpegs(video: Path, folder: Path, every: float) -> int:
    from clipcli.options import Sampling
    from clipcli.video import VideoReader

    folder.mkdir(parents=True, exist_ok=True)
    with VideoReader(str(video), deadline=None) as reader:
        count = 0
        for frame in reader.frames(Sampling(every=every).times(reader.info.duration)):
            frame.image.save(folder / f"{count:04d}.jpg", quality=95)
            count += 1
    return count


def main() -> None:
    from bench_video import make
    from common import machine, vit_b32_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    video, half = make(300), make(150)
    print(machine())
    models = {"ViT-B-32 (random weights)": f"local-dir:{vit_b32_dir()}", "demo": "demo"}
    runs = [("ViT-B-32 (random weights)", 1.0), ("ViT-B-32 (random weights)", 2.0), ("demo", 1.0)]
    with tempfile.TemporaryDirectory() as tmp:
        for every in sorted({every for _, every in runs}):
            count = frames_as_jpegs(video, Path(tmp) / f"every{every:g}", every)
            print(f"every {every:g} s: {count} frames of {video.name} saved as JPEG files")
        for name, every in runs:
            model, folder = models[name], str(Path(tmp) / f"every{every:g}")
            child(model, folder, every)  # warm: ONNX export, file cache
            a, b = [], []
            for _ in range(args.repeats):
                a.append(child(model, str(video), every)["seconds"])
                b.append(child(model, folder, every)["seconds"])
            ratio = statistics.median(a) / statistics.median(b)
            print(f"{name}, every {every:g} s: video {statistics.median(a):.2f} s, frames as files "
                  f"{statistics.median(b):.2f} s (medians of {args.repeats}); ratio {ratio:.2f} (target <= 1.3)")
    full, short = child("demo", str(video)), child("demo", str(half))
    print(f"peak RSS, demo model: 5-minute video {full['rss_mb']:.0f} MB, 2.5-minute video {short['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
