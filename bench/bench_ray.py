"""Issue 13: the Ray engine's overhead on one machine, side by side with the local engine in one run.

Marginal throughput of `clip classify DIR` (ViT-B-32 with random weights, real 1-4 MP JPEGs, defaults),
(large - small) / (T(large) - T(small)), so start-up is excluded; the Ray engine's start-up cost is
T_ray(small) - T_local(small) and `ray.init` alone.  Target: Ray >= 0.8x local.

    pip install '.[bench,ray]' && python bench/bench_ray.py [--small 96] [--large 288]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, clip_command, machine, photo_folder, timed_run, vit_b32_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=96)
    parser.add_argument("--large", type=int, default=288)
    args = parser.parse_args()
    print(machine())
    os.environ["CLIPCLI_CACHE_DIR"] = str(DATA / "backend-cache")
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(f"ray.init (local, {os.cpu_count()} CPUs): {time.perf_counter() - start:.2f} s")
    ray.shutdown()
    vit = vit_b32_dir()
    photos = photo_folder(args.large)
    small = DATA / f"photos-first-{args.small}"
    small.mkdir(exist_ok=True)
    for path in sorted(photos.glob("*.jpg"))[:args.small]:
        if not (small / path.name).exists():
            os.link(path, small / path.name)
    command = [*clip_command(), "classify", "--model", f"local-dir:{vit}", "--labels", "a photo of a cat,a photo of a dog",
               "--templates", "simple", "--format", "jsonl", "--quiet"]
    timed_run([*command, str(small)])  # export and labels cached
    rates, smalls = {}, {}
    for engine in ("local", "ray"):
        t_small, _ = timed_run([*command, "--engine", engine, str(small)])
        t_large, _ = timed_run([*command, "--engine", engine, str(photos)])
        rates[engine] = (args.large - args.small) / (t_large - t_small)
        smalls[engine] = t_small
        print(f"{engine}: {args.small} photos {t_small:.1f} s, {args.large} photos {t_large:.1f} s, "
              f"marginal {rates[engine]:.2f} images/s")
    print(f"ray / local marginal throughput: {rates['ray'] / rates['local']:.2f}x (target >= 0.8x); "
          f"ray start-up cost in the whole command: {smalls['ray'] - smalls['local'] - args.small / rates['local'] + args.small / rates['ray']:.1f} s")


if __name__ == "__main__":
    main()
