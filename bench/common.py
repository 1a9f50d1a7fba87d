"""Shared set-up for the benchmarks: a ViT-B-32 with random weights, real photos, timing."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def vit_b32_dir() -> Path:
    """ViT-B-32 with seeded random weights in open_clip's local-dir layout (speed does not depend on weights)."""
    target = DATA / "vit-b-32-random"
    if (target / "open_clip_model.safetensors").is_file():
        return target
    import open_clip
    import torch
    from open_clip.factory import get_model_config
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target / "open_clip_model.safetensors"))
    (target / "open_clip_config.json").write_text(json.dumps({"model_cfg": get_model_config("ViT-B-32")}))
    return target


def sample_photos():
    """The real photos that scikit-image and scikit-learn ship."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
              for name in ("astronaut", "chelsea", "coffee", "rocket", "horse", "motorcycle_left", "immunohistochemistry")
              if hasattr(skimage.data, name)]
    photos += [Image.fromarray(array) for array in load_sample_images().images]
    return photos


def photo_folder(count: int, seed: int = 0) -> Path:
    """`count` JPEGs of 1-4 megapixels, made from the sample photos (resized, cropped, flipped)."""
    folder = DATA / f"photos-{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    photos = sample_photos()
    for i in range(count):
        photo = photos[i % len(photos)]
        megapixels = rng.uniform(1.0, 4.0)
        aspect = rng.uniform(0.66, 1.5)
        width = int((megapixels * 1e6 * aspect) ** 0.5)
        height = int(megapixels * 1e6 / width)
        image = photo.resize((width, height))
        if rng.random() < 0.5:
            image = image.transpose(0)
        image.save(folder / f"photo_{i:04d}.jpg", quality=rng.randint(80, 95))
    return folder


PHOTO_LABELS = ["wonton", "shanghai dumpling", "steamed bun", "cat", "dog", "rocket", "coffee", "astronaut", "horse",
                "flower"]


def drawn_shapes() -> list[Path]:
    """240 drawn shapes (the demo model's 60 seen labels, 4 each) as 1024 px JPEGs."""
    from clipcli.demo import shapes

    folder = DATA / "big-shapes"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(shapes.seen_labels() * 4):
        colour, shape = name.split(" ", 1)
        path = folder / f"{i:03d}.jpg"
        if not path.exists():
            shapes.draw_pil(colour, shape, size=1024, seed=5000 + i).save(path, quality=90)
        paths.append(path)
    return paths


def clip_command() -> list[str]:
    return [str(Path(sys.executable).parent / "clip")]


def timed_run(args: list[str], first_line: bool = False, env: dict | None = None) -> tuple[float, float | None]:
    """Wall time of a whole command, and (optionally) the time until its first line of output."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = None
    if first_line:
        proc.stdout.readline()
        first = time.perf_counter() - start
    proc.communicate()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args)} failed with {proc.returncode}")
    return time.perf_counter() - start, first
