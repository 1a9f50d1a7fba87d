"""Issue 12 targets, measured side by side in one run.

1. Start-up: `clip classify one.jpg` wall time from process start, weights in the page cache, labels
   cached, ONNX export made: ONNX Runtime backend vs torch backend, for the demo model (target <= 1.0 s)
   and a ViT-B-32 (random weights, target <= 2.0 s), each also as a ratio to `python -c "import torch"`.
2. Throughput: `clip classify DIR` on real 1-4 MP JPEGs, marginal images/s
   ((large - small) / (T(large) - T(small))), ONNX fp32 (the default), torch, and ONNX `--precision int8`,
   against the PyTorch eager fp32 model-only bound (encode_image on preprocessed tensors, batch 32)
   measured in the same run (target >= 1.0x with defaults).
3. The fp32 ceiling on this machine: the image tower's multiply-adds at the machine's own matmul speed,
   plus full decoding's CPU time per image, shared by all cores: the best any fp32 backend could reach.
4. int8 against fp32: top-1 agreement and the largest probability change (demo model on drawn shapes,
   ViT-B-32 with random weights on the photos), and model-only speed.

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

from common import (DATA, PHOTO_LABELS, clip_command, drawn_shapes, machine, photo_folder, timed_run,  # noqa: E402
                    vit_b32_dir)

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


def image_tower_flops(model_dir: Path) -> float:
    """Floating-point operations of one image through the tower (torch's counter; MHA's fast path off so that
    its projections are counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from clipcli.models import load_model

    loaded = load_model(f"local-dir:{model_dir}")
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            loaded.model.encode_image(torch.zeros(1, 3, loaded.image_size, loaded.image_size))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return float(counter.get_total_flops())


def matmul_peak(width: int) -> float:
    """FLOP/s of torch's fp32 matmul on the tower's largest shape (batch 32 x 50 tokens), all torch threads."""
    import torch

    a, b = torch.randn(1600, width), torch.randn(width, 4 * width)
    a @ b
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    return 20 * 2 * 1600 * width * 4 * width / (time.perf_counter() - start)


def decode_seconds(photos: list[Path], preprocess) -> float:
    """CPU seconds per image of the default decoding (one thread): read, full JPEG decode, resize, crop, normalise."""
    from clipcli.batches import DecodeLimits, decode_one

    start = time.process_time()
    for path in photos:
        decode_one(str(path), preprocess, DecodeLimits(max_megapixels=178.0))
    return (time.process_time() - start) / len(photos)


def int8_agreement(cache: Path, vit: Path, photos: list[Path]) -> None:
    import numpy as np

    from clipcli.api import zero_shot_classifier
    from clipcli.backends import load_backend_model
    from clipcli.batches import DecodeLimits, decode_one
    from clipcli.demo import shapes

    drawn = drawn_shapes()
    for name, model, files, labels, templates in (
            ("demo", "demo", drawn, shapes.seen_labels(), "imagenet"),
            ("ViT-B-32 (random weights)", f"local-dir:{vit}", photos[:96], PHOTO_LABELS, "simple")):
        fp32 = load_backend_model(model, backend="onnx", cache_root=cache)
        int8 = load_backend_model(model, precision="int8", cache_root=cache)
        classifier = zero_shot_classifier(fp32, labels, templates, use_cache=False)
        pixels = np.stack([decode_one(str(f), fp32.preprocess, DecodeLimits(178.0))[1] for f in files])
        full, quantised = classifier.scores(fp32.encode_pixels(pixels)), classifier.scores(int8.encode_pixels(pixels))
        speeds = []
        for loaded in (fp32, int8):
            batch = np.ascontiguousarray(pixels[:32])
            loaded.encode_pixels(batch)
            start = time.perf_counter()
            for _ in range(3):
                loaded.encode_pixels(batch)
            speeds.append(96 / (time.perf_counter() - start))
        print(f"   {name}, {len(files)} images, {len(labels)} labels: top-1 agreement "
              f"{(full.argmax(1) == quantised.argmax(1)).mean():.1%}, largest probability change "
              f"{np.abs(full - quantised).max():.4f}; model-only {speeds[1]:.1f} vs {speeds[0]:.1f} images/s "
              f"({speeds[1] / speeds[0]:.2f}x fp32)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=96)
    parser.add_argument("--large", type=int, default=288)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    print(machine())
    cache = DATA / "backend-cache"
    env = {**os.environ, "CLIPCLI_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
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

    print(f"\n2. clip classify DIR, real 1-4 MP JPEGs ({args.small} and {args.large} photos, full decoding)")
    paths = sorted(photos.glob("*.jpg"))
    bound = model_only_bound(vit, paths)
    print(f"   model-only bound (torch eager fp32 encode_image, batch 32): {bound:.2f} images/s")
    small = DATA / f"photos-first-{args.small}"
    small.mkdir(exist_ok=True)
    for path in paths[:args.small]:
        if not (small / path.name).exists():
            os.link(path, small / path.name)
    for variant, extra in (("onnx fp32 (default)", ["--backend", "onnx"]), ("torch", ["--backend", "torch"]),
                           ("onnx --precision int8", ["--precision", "int8"])):
        command = [*clip, "classify", "--model", f"local-dir:{vit}", "--labels", LABELS, "--templates", "simple",
                   "--format", "jsonl", "--quiet", *extra]
        timed_run([*command, str(one)], env=env)  # export, quantisation and labels done before timing
        t_small, _ = timed_run([*command, str(small)], env=env)
        t_large, _ = timed_run([*command, str(photos)], env=env)
        rate = (args.large - args.small) / (t_large - t_small)
        print(f"   {variant}: {args.small} photos {t_small:.1f} s, {args.large} photos {t_large:.1f} s, marginal "
              f"{rate:.2f} images/s = {rate / bound:.2f}x the model-only bound")

    print("\n3. the fp32 ceiling with full decoding on this machine")
    import torch

    from clipcli.backends import load_backend_model

    cores = torch.get_num_threads()
    flops = image_tower_flops(vit)
    peak = matmul_peak(768)
    decode = decode_seconds(paths[:96], load_backend_model(f"local-dir:{vit}", backend="onnx", cache_root=cache).preprocess)
    model_seconds = flops / peak  # wall seconds per image with every core on it, at matmul speed, nothing else
    ceiling = 1 / (model_seconds + decode / cores)
    print(f"   image tower {flops / 1e9:.2f} GFLOP per image; fp32 matmul at {cores} threads {peak / 1e9:.0f} GFLOP/s "
          f"-> at best {1 / model_seconds:.1f} images/s for the model alone\n"
          f"   eager torch reaches {bound * flops / peak:.0%} of that matmul speed\n"
          f"   full decoding: {decode * 1000:.1f} ms of one core per image\n"
          f"   ceiling = 1 / (model at matmul speed + decoding / {cores} cores) = {ceiling:.1f} images/s = "
          f"{ceiling / bound:.2f}x the model-only bound")

    print("\n4. --precision int8 against fp32 (ONNX Runtime)")
    int8_agreement(cache, vit, paths)


if __name__ == "__main__":
    main()
