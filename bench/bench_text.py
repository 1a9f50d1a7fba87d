"""Issue 5 benchmarks: cold class-embedding build vs open_clip, warm cache load, second-run speed-up.

    python bench/bench_text.py [--labels 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, clip_command, machine, timed_run, vit_b32_dir  # noqa: E402

from clipcli.classifier import build_class_embeddings, open_cache  # noqa: E402
from clipcli.labels import Label  # noqa: E402
from clipcli.models import load_model  # noqa: E402
from clipcli.templates import load_template_set  # noqa: E402

FOOD = ["wonton", "shanghai dumpling", "steamed bun", "spring roll", "fried rice", "peking duck", "mapo tofu",
        "hot pot", "char siu", "egg tart", "congee", "dim sum"]


def cold_build(labels: list[str]) -> None:
    import open_clip

    model_dir = vit_b32_dir()
    loaded = load_model(f"local-dir:{model_dir}")
    templates = load_template_set("imagenet")
    start = time.perf_counter()
    ours = build_class_embeddings(loaded, [Label.plain(x) for x in labels], templates, cache=None)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        theirs = open_clip.build_zero_shot_classifier(loaded.model, loaded.tokenizer, labels, templates.templates).T
    t_theirs = time.perf_counter() - start
    prompts = len(labels) * len(templates.templates)
    print(f"cold build, {len(labels)} labels x 80 templates = {prompts} prompts, ViT-B-32 text tower:")
    print(f"  open_clip build_zero_shot_classifier {t_theirs:.1f} s ({t_theirs / prompts * 1000:.1f} ms/prompt)")
    print(f"  clipcli (trimmed, length-sorted)     {t_ours:.1f} s ({t_ours / prompts * 1000:.1f} ms/prompt)")
    print(f"  speed-up {t_theirs / t_ours:.1f}x; max |difference| {(ours - theirs).abs().max().item():.2e}")


def warm_load(count: int = 1000) -> None:
    model_dir = vit_b32_dir()
    loaded = load_model(f"local-dir:{model_dir}")
    templates = load_template_set("imagenet")
    labels = [Label.plain(f"class number {i}") for i in range(count)]
    with tempfile.TemporaryDirectory() as root:
        cache = open_cache(loaded, templates, root)
        for label in labels:  # fill the cache directly; encoding 80,000 prompts is not what is measured here
            cache.put(label.texts, torch.randn(512))
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            embeddings = build_class_embeddings(loaded, labels, templates, open_cache(loaded, templates, root))
            timings.append(time.perf_counter() - start)
        assert embeddings.shape == (count, 512)
    print(f"warm: {count} cached class embeddings: first load {timings[0] * 1000:.0f} ms (one file per label; "
          f"it writes the label-list pack), then {min(timings[1:]) * 1000:.1f} ms (best of 4 from the pack; "
          f"worst {max(timings[1:]) * 1000:.1f} ms)")


def second_run() -> None:
    model_dir = vit_b32_dir()
    image = REPO / "examples" / "red_circle.png"
    with tempfile.TemporaryDirectory() as root:
        args = [*clip_command(), "classify", str(image), "--model", f"local-dir:{model_dir}",
                "--labels", "wonton,shanghai dumpling", "--cache-dir", root, "--quiet"]
        first, _ = timed_run(args)
        second, _ = timed_run(args)
    print(f"clip classify one image, 2 labels x 80 templates: first run {first:.1f} s, second run {second:.1f} s "
          f"({first / second:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    cold_build(FOOD[: args.labels])
    warm_load()
    second_run()


if __name__ == "__main__":
    main()
