"""transformers models in clipcli: what the optional extra costs, and one image from process start, side by side.

1. The extra: transformers' installed size; `import transformers` + `transformers.CLIPModel` against
   `import tokenizers` (all the warm ONNX path needs), fresh processes, interleaved, medians.
2. One image from process start, a tiny Chinese-CLIP built here (tests/tiny_hf_models.py; random weights, so
   the times are start-up and framework cost, not model size): transformers' own zero-shot pipeline; clipcli on
   torch; clipcli's first ONNX run (exports the towers); clipcli's warm ONNX run. Fresh processes, medians.

    python bench/bench_transformers.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from common import REPO, machine  # noqa: E402

PIPELINE = """
import sys
from transformers import AutoImageProcessor, AutoTokenizer, pipeline
folder, image = sys.argv[1], sys.argv[2]
classify = pipeline("zero-shot-image-classification", model=folder, tokenizer=AutoTokenizer.from_pretrained(folder),
                    image_processor=AutoImageProcessor.from_pretrained(folder, backend="pil"))
print(classify(image, candidate_labels=["馄饨", "小笼包", "饺子"], hypothesis_template="一张{}的照片。")[0])
"""


def wall(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return time.perf_counter() - start


def size_mb(package: str) -> float:
    import importlib.util

    folder = Path(importlib.util.find_spec(package).origin).parent
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    print(machine())

    print(f"1. installed size: transformers {size_mb('transformers'):.0f} MB, "
          f"tokenizers {size_mb('tokenizers'):.0f} MB")
    imports = {"import transformers; transformers.CLIPModel": [], "import tokenizers": []}
    for _ in range(options.repeats):
        for code, times in imports.items():
            times.append(wall([sys.executable, "-c", code], env))
    for code, times in imports.items():
        print(f"   {code:<45} {statistics.median(times):6.2f} s (median of {len(times)})")

    import tiny_hf_models

    work = Path(tempfile.mkdtemp(prefix="bench-hf-"))
    folder = tiny_hf_models.save("chinese_clip", work / "chinese_clip")
    from clipcli.demo import shapes

    image = work / "red_circle.png"
    shapes.draw_pil("red", "circle", size=512, seed=1).save(image)
    clip = [sys.executable, "-m", "clipcli", "classify", str(image), "-m", f"local-dir:{folder}", "-l",
            "馄饨,小笼包,饺子", "--templates", "zh-simple", "-f", "json"]
    runs = {"transformers pipeline": [], "clipcli --backend torch": [], "clipcli ONNX, first run (export)": [],
            "clipcli ONNX, warm": []}
    for repeat in range(options.repeats):
        cache = work / f"cache{repeat}"
        runs["transformers pipeline"].append(wall([sys.executable, "-c", PIPELINE, str(folder), str(image)], env))
        runs["clipcli --backend torch"].append(wall([*clip, "--backend", "torch", "--no-cache"], env))
        cached = {**env, "CLIPCLI_CACHE_DIR": str(cache)}
        runs["clipcli ONNX, first run (export)"].append(wall([*clip, "--backend", "onnx"], cached))
        runs["clipcli ONNX, warm"].append(wall([*clip, "--backend", "onnx"], cached))
    base = statistics.median(runs["transformers pipeline"])
    print("2. one image from process start (tiny Chinese-CLIP, wall)")
    for name, times in runs.items():
        median = statistics.median(times)
        print(f"   {name:<35} {median:6.2f} s  ({base / median:4.2f}x the pipeline's speed)")


if __name__ == "__main__":
    main()
