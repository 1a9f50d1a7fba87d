"""Issue 4: does reduced-size JPEG decoding (Pillow's draft mode) change the answers?

    python bench/bench_decode.py

Three measurements, full decoding vs reduced decoding, side by side:
1. the preprocessed model input on real photos (1-4 MP JPEGs), mean and max absolute pixel difference;
2. the demo model on large JPEGs of drawn shapes: top-1 agreement and the largest probability change;
3. ViT-B-32 (random weights) on real photos: largest probability change over 10 labels.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from common import PHOTO_LABELS, drawn_shapes, machine, photo_folder, vit_b32_dir  # noqa: E402

from clipcli.api import DecodeOptions, Encoder, ScoreOptions, classify_paths, zero_shot_classifier  # noqa: E402
from clipcli.demo import shapes  # noqa: E402
from clipcli.images import open_image  # noqa: E402
from clipcli.models import load_model  # noqa: E402


def compare(loaded, paths, labels, templates) -> tuple[float, float, float, float]:
    """(top-1 agreement, max |probability change|, seconds full, seconds reduced)."""
    classifier = zero_shot_classifier(loaded, labels, templates, use_cache=False)
    runs = {}
    for reduced in (False, True):
        start = time.perf_counter()
        encoder = Encoder(loaded, DecodeOptions(workers=0, reduced_decode=reduced))
        records = list(classify_paths(encoder, classifier, paths, ScoreOptions(top_k=0)))
        runs[reduced] = (records, time.perf_counter() - start)
    full, reduced = runs[False][0], runs[True][0]
    agree = sum(a["predictions"][0]["label"] == b["predictions"][0]["label"] for a, b in zip(full, reduced))
    diff = max(abs(pa["score"] - {p["label"]: p["score"] for p in b["predictions"]}[pa["label"]])
               for a, b in zip(full, reduced) for pa in a["predictions"])
    return agree / len(full), diff, runs[False][1], runs[True][1]


def pixel_difference(loaded, paths) -> tuple[float, float]:
    worst, total = 0.0, 0.0
    for path in paths:
        full = loaded.preprocess(open_image(str(path)))
        reduced = loaded.preprocess(open_image(str(path), min_size=loaded.image_size))
        delta = (full - reduced).abs() * torch.tensor(loaded.preprocess.transforms[-1].std).view(3, 1, 1) * 255
        worst, total = max(worst, delta.max().item()), total + delta.mean().item()
    return total / len(paths), worst


def main() -> None:
    print(f"machine: {machine()}")
    photos = sorted(photo_folder(128).glob("*.jpg"))
    vit = load_model(f"local-dir:{vit_b32_dir()}")
    mean, worst = pixel_difference(vit, photos[:48])
    print(f"1. ViT-B-32 input (224 px) from 48 real 1-4 MP photos: mean |difference| {mean:.2f} / 255, "
          f"max {worst:.0f} / 255")

    labels = shapes.seen_labels()
    paths = [str(p) for p in drawn_shapes()]
    demo = load_model("demo")
    agree, diff, t_full, t_reduced = compare(demo, paths, labels, "imagenet")
    print(f"2. demo model, {len(paths)} drawn shapes as 1024 px JPEGs, 60 labels: top-1 agreement {agree:.1%}, "
          f"max probability change {diff:.4f}; decode+classify {t_full:.1f} s full vs {t_reduced:.1f} s reduced")

    agree, diff, t_full, t_reduced = compare(vit, [str(p) for p in photos[:48]], PHOTO_LABELS, "simple")
    print(f"3. ViT-B-32 (random weights), 48 real photos, 10 labels: top-1 agreement {agree:.1%}, max probability "
          f"change {diff:.4f}; {t_full:.1f} s full vs {t_reduced:.1f} s reduced")


if __name__ == "__main__":
    main()
