"""Issue 4: memory stays flat as the number of images grows (streaming output).

    python bench/bench_memory.py

Peak RSS of `clip classify DIR --format jsonl` for 1,000 and 10,000 small images, side by side.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, clip_command, machine  # noqa: E402


def small_images(count: int) -> Path:
    from clipcli.demo import shapes

    folder = DATA / f"small-{count}"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    import torch
    from PIL import Image

    labels = shapes.all_labels()
    generator = torch.Generator().manual_seed(count)
    for start in range(0, count, 256):
        names = [labels[i % len(labels)].split(" ", 1) for i in range(start, min(count, start + 256))]
        drawn = shapes.draw([c for c, _ in names], [s for _, s in names], size=48, generator=generator)
        for offset, image in enumerate(drawn):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{start + offset:05d}.png")
    return folder


def peak_rss_mb(folder: Path) -> tuple[float, float]:
    """Run in a fresh child through a tiny wrapper so RUSAGE_CHILDREN sees only that run."""
    args = [*clip_command(), "classify", str(folder), "--model", "demo", "--labels", "red circle,blue square",
            "--templates", "simple", "--format", "jsonl", "--quiet", "-o", "/dev/null"]
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=False); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    print(f"machine: {machine()}")
    results = {n: peak_rss_mb(small_images(n)) for n in (1000, 10000)}
    for n, (rss, seconds) in results.items():
        print(f"{n:6d} images: peak RSS {rss:.0f} MB (largest process), {seconds:.1f} s")
    print(f"ratio 10,000 / 1,000: {results[10000][0] / results[1000][0]:.2f}")


if __name__ == "__main__":
    main()
