"""Issue 12 targets, measured side by side in one run.

1. Start-up: `clip classify one.jpg` wall time from process start, weights in the page cache, labels
   cached, ONNX export made: ONNX Runtime backend vs torch backend, for the demo model (target <= 1.0 s)
   and a ViT-B-32 (random weights, target <= 2.0 s), each also as a ratio to `python -c "import torch"`.
2. Throughput: `clip classify DIR` on real 1-4 MP JPEGs with defaults, marginal images/s
   ((large - small) / (T(large) - T(small))), ONNX and torch backends, against the PyTorch eager fp32
   model-only bound (encode_image on preprocessed tensors, batch 32) measured in the same run (target >= 1.0x).

    pip install '.[bench]' && python bench/bench_backend.py [--small 96] [--large 288] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, clip_command, machine, photo_folder, timed_run, vit_b32_dir  # noqa: E402

LABELS = "a photo of a cat,a photo of a dog"


def wall(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - start


def median_wall(args: list[str], env: dict, repeats: int) -> float:
    return statistics.median(wall(args, env) for _ in range(repeats))


def model_only_bound(model_dir: Path, photos: list[Path], batch_size: int = 32, batches: int = 6) -> float:
    import torch

    from clipcli.images import open_image
    from clipcli.models import load_model

    loaded = load_model(f"local-dir:{model_dir}")
    pixels = torch.stack([loaded.preprocess(open_image(str(p))) for p in photos[:batch_size]])
    with torch.inference_mode():
        loaded.model.encode_image(pixels)
        start = time.perf_counter()
        for _ in range(batches):
            loaded.model.encode_image(pixels)
    return batch_size * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=96)
    parser.add_argument("--large", type=int, default=288)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    print(machine())
    env = {**os.environ, "CLIPCLI_CACHE_DIR": str(DATA / "backend-cache"), "HF_HUB_OFFLINE": "1"}
    clip = clip_command()
    vit = vit_b32_dir()
    photos = photo_folder(args.large)
    one = sorted(photos.glob("*.jpg"))[0]

    print("\n1. one image, labels cached, export made (median of", args.repeats, "runs)")
    torch_import = median_wall([sys.executable, "-c", "import torch"], env, args.repeats)
    print(f"   python -c 'import torch': {torch_import:.2f} s")
    for name, model in (("demo", "demo"), ("ViT-B-32", f"local-dir:{vit}")):
        command = [*clip, "classify", str(one), "-m", model, "-l", LABELS, "-f", "json"]
        for backend in ("onnx", "torch"):
            wall([*command, "--backend", backend], env)  # export (first time) and cache the labels
        onnx = median_wall([*command, "--backend", "onnx"], env, args.repeats)
        torch_ = median_wall([*command, "--backend", "torch"], env, args.repeats)
        print(f"   {name}: onnx {onnx:.2f} s ({onnx / torch_import:.2f}x import torch), "
              f"torch {torch_:.2f} s ({torch_ / torch_import:.2f}x import torch); onnx is {torch_ / onnx:.1f}x faster")

    print(f"\n2. clip classify DIR, real 1-4 MP JPEGs, defaults ({args.small} and {args.large} photos)")
    paths = sorted(photos.glob("*.jpg"))
    bound = model_only_bound(vit, paths)
    print(f"   model-only bound (torch eager fp32 encode_image, batch 32): {bound:.2f} images/s")
    small = DATA / f"photos-first-{args.small}"
    small.mkdir(exist_ok=True)
    for path in paths[:args.small]:
        if not (small / path.name).exists():
            os.link(path, small / path.name)
    for backend in ("onnx", "torch"):
        command = [*clip, "classify", "--model", f"local-dir:{vit}", "--labels", LABELS, "--templates", "simple",
                   "--format", "jsonl", "--quiet", "--backend", backend]
        t_small, _ = timed_run([*command, str(small)])
        t_large, _ = timed_run([*command, str(photos)])
        rate = (args.large - args.small) / (t_large - t_small)
        print(f"   {backend}: {args.small} photos {t_small:.1f} s, {args.large} photos {t_large:.1f} s, marginal "
              f"{rate:.2f} images/s = {rate / bound:.2f}x the model-only bound")


if __name__ == "__main__":
    main()
