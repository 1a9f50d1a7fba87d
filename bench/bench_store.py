"""Issue 10 targets for the image-embedding store, measured side by side in one run.

1. Scale: `clip classify --store S` over 1,000,000 stored 512-d float16 embeddings against 1,000 labels,
   JSON Lines to /dev/null: wall time (target <= 60 s) and peak RSS (target <= 2 GB).  The store is
   synthetic (random unit vectors) for a 512-d model with random weights saved as `local-dir:`.
2. Relabelling: 20,000 drawn images with the demo model: `clip classify DIR` (encodes every image)
   against `clip classify --store S` with a new label list (target: at least 10x faster).

    python bench/bench_store.py [--rows 1000000] [--images 20000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, clip_command, machine  # noqa: E402


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command in its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {err[-2000:]}")
    return wall, int(err.strip().splitlines()[-1]) / 1024


def model_512() -> Path:
    """A tiny ViT image tower with a 512-d embedding and a classic CLIP text tower, random weights."""
    target = DATA / "model-512"
    if (target / "open_clip_model.safetensors").is_file():
        return target
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = {"embed_dim": 512, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target / "open_clip_model.safetensors"))
    (target / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return target


def synthetic_store(rows: int, model: str, shard_rows: int = 65536) -> Path:
    import numpy as np

    from clipcli.embeddings import open_store_writer
    from clipcli.models import load_model
    from clipcli.store import open_store

    store = DATA / (f"store-{rows}" if shard_rows == 65536 else f"store-{rows}-shards-of-{shard_rows}")
    if (store / "_clip-store.json").is_file() and open_store(store).rows == rows:
        return store
    shutil.rmtree(store, ignore_errors=True)
    rng = np.random.default_rng(0)
    with open_store_writer(store, load_model(model), "float16", shard_rows=shard_rows) as writer:
        for start in range(0, rows, 65536):
            n = min(65536, rows - start)
            vectors = rng.standard_normal((n, 512), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            for i in range(n):
                writer.add(f"/photos/{(start + i) // 1000:04d}/img_{start + i:07d}.jpg", (100_000, 1_700_000_000 + i),
                           (640, 480), vectors[i], None)
    return store


def labels_file(count: int, name: str) -> Path:
    path = DATA / name
    path.write_text("\n".join(f"{name.split('.')[0]} label {i}" for i in range(count)) + "\n")
    return path


def shapes_folder(count: int) -> Path:
    from clipcli.demo import shapes

    folder = DATA / f"shapes-{count}"
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    colors, kinds = list(shapes.COLOURS), shapes.SHAPES
    for i in range(count):
        shapes.draw_pil(colors[i % len(colors)], kinds[(i // len(colors)) % len(kinds)], size=64,
                        seed=i).save(folder / f"shape_{i:05d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=20_000)
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    clip = clip_command()
    print(machine())

    model = f"local-dir:{model_512()}"
    start = time.perf_counter()
    store = synthetic_store(args.rows, model)
    print(f"synthetic store: {args.rows} rows, 512-d float16 ({time.perf_counter() - start:.1f} s to build or find)")
    thousand = labels_file(1000, "scale.txt")
    cache = str(DATA / "label-cache")
    command = [*clip, "classify", "--store", str(store), "-L", str(thousand), "-t", "simple", "-f", "jsonl",
               "-o", "/dev/null", "-q", "--cache-dir", cache]
    run(command)  # labels into the class-embedding cache, so the timed runs measure the store pass
    for _ in range(2):
        wall, rss = run(command)
        print(f"classify {args.rows} stored embeddings x 1000 labels: {wall:.1f} s wall, {rss:.0f} MB peak RSS "
              f"(targets: <= 60 s, <= 2048 MB)")

    folder = shapes_folder(args.images)
    demo_store = DATA / f"demo-store-{args.images}"
    first, second = labels_file(8, "first.txt"), labels_file(12, "second.txt")
    common = ["-m", "demo", "-t", "simple", "-f", "jsonl", "-o", "/dev/null", "-q", "--cache-dir", cache]
    encode_wall, _ = run([*clip, "classify", str(folder), "-L", str(first), *common])
    print(f"classify {args.images} images (encodes every image): {encode_wall:.1f} s "
          f"({args.images / encode_wall:.0f} images/s)")
    shutil.rmtree(demo_store, ignore_errors=True)  # "first time" means an empty store
    embed_wall, _ = run([*clip, "embed", str(folder), "--store", str(demo_store), "-m", "demo", "-q"])
    print(f"clip embed {args.images} images into a store (first time): {embed_wall:.1f} s")
    relabel_wall, relabel_rss = run([*clip, "classify", "--store", str(demo_store), "-L", str(second), *common])
    print(f"relabel the whole store with new labels: {relabel_wall:.2f} s, {relabel_rss:.0f} MB peak RSS")
    named_wall, _ = run([*clip, "classify", str(folder), "--store", str(demo_store), "-L", str(second), *common])
    print(f"relabel naming the folder (stat + lookup of every file): {named_wall:.2f} s")
    print(f"relabelling speed-up: {encode_wall / relabel_wall:.1f}x (whole store), "
          f"{encode_wall / named_wall:.1f}x (folder named) (target: >= 10x)")
    first, total = first_record([*clip, "classify", str(folder), "--store", str(DATA / "stream-store"), "-L",
                                 str(second), "-m", "demo", "-t", "simple", "-f", "jsonl", "-q", "--cache-dir", cache])
    print(f"classify {args.images} new images through a store: first record after {first:.2f} s of {total:.2f} s "
          f"({first / total:.2f} of the run; target: < 0.5)")


def first_record(command: list[str]) -> tuple[float, float]:
    """Seconds from process start to the first line on stdout, and to the end of the run."""
    shutil.rmtree(command[command.index("--store") + 1], ignore_errors=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    first = time.perf_counter() - start
    process.stdout.read()
    process.wait()
    return first, time.perf_counter() - start


if __name__ == "__main__":
    main()
