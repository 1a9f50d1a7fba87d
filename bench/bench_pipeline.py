"""Issue 4 benchmarks: the batch pipeline against the model-only bound and the naive loop; `clip --help`.

    python bench/bench_pipeline.py [--small 128] [--large 384] [--batch-size 32]

All numbers come from one run on one machine, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clip_command, machine, photo_folder, timed_run, vit_b32_dir  # noqa: E402

LABELS = "a photo of a cat,a photo of a dog"


def model_only_bound(model, preprocess, photos: list[Path], batch_size: int, batches: int = 6) -> float:
    """Images/s of encode_image on tensors that are already made (no decoding, no preprocessing)."""
    from clipcli.images import open_image

    pixels = torch.stack([preprocess(open_image(str(p))) for p in photos[:batch_size]])
    with torch.inference_mode():
        model.encode_image(pixels)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            model.encode_image(pixels)
    return batch_size * batches / (time.perf_counter() - start)


def naive_loop(model, preprocess, tokenizer, paths: list[Path]) -> float:
    """The CLIP README's loop: one image at a time, labels encoded again for every image. Images/s."""
    from PIL import Image

    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            image = preprocess(Image.open(path)).unsqueeze(0)
            text = tokenizer(LABELS.split(","))
            image_features = model.encode_image(image)
            text_features = model.encode_text(text)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            (100.0 * image_features @ text_features.T).softmax(dim=-1)
    return len(paths) / (time.perf_counter() - start)


def classify_args(model_dir: Path, folder: Path, batch_size: int, extra: list[str]) -> list[str]:
    return [*clip_command(), "classify", str(folder), "--model", f"local-dir:{model_dir}", "--labels", LABELS,
            "--templates", "simple", "--format", "jsonl", "--quiet", "--batch-size", str(batch_size), *extra]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=128)
    parser.add_argument("--large", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--naive-images", type=int, default=32)
    parser.add_argument("--extra", default="", help="extra options for clip classify, e.g. '--workers 0'")
    args = parser.parse_args()

    import open_clip

    model_dir = vit_b32_dir()
    small, large = photo_folder(args.small), photo_folder(args.large)
    print(f"machine: {machine()}")

    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    bound = model_only_bound(model, preprocess, sorted(small.glob("*.jpg")), args.batch_size)
    print(f"model-only bound (encode_image, batch {args.batch_size}): {bound:.2f} images/s")

    for variant in ([], ["--reduced-decode"]):
        extra = args.extra.split() + variant
        t_small, first_small = timed_run(classify_args(model_dir, small, args.batch_size, extra), first_line=True)
        t_large, _ = timed_run(classify_args(model_dir, large, args.batch_size, extra))
        marginal = (args.large - args.small) / (t_large - t_small)
        print(f"clip classify {' '.join(extra) or '(defaults: full decoding)'}: {args.small} photos {t_small:.1f} s, "
              f"{args.large} photos {t_large:.1f} s")
        print(f"  marginal throughput {marginal:.2f} images/s = {marginal / bound:.1%} of the model-only bound")
        print(f"  start-up (process start to first result): {first_small:.1f} s")

    naive = naive_loop(model, preprocess, tokenizer, sorted(small.glob("*.jpg"))[: args.naive_images])
    print(f"naive per-image loop: {naive:.2f} images/s; clip classify (last variant above) is "
          f"{marginal / naive:.1f}x faster")

    helps = [timed_run([*clip_command(), "--help"])[0] for _ in range(5)]
    print(f"clip --help: median {statistics.median(helps) * 1000:.0f} ms over 5 runs")


if __name__ == "__main__":
    main()
