"""Issue 11: few-shot curves and fit times, measured side by side in one run.

1. Curves (`clip fit TRAIN --eval TEST`), demo model, 3 repeats, shots 0,1,2,4,8,16, methods gda (default),
   logistic (the CLIP paper's probe) and tip-adapter, on:
   - shapes in the demo model's own style (zero-shot strong),
   - outlined shapes (a clean style the demo model never saw: zero-shot weak),
   - tiny noisy shapes (zero-shot weak, and one image says little),
   - scikit-learn's digits, a real dataset (zero-shot at chance: the demo model knows no digits).
2. Fit time: 16 shots x 100 classes of 512-d features through the library (as from a store: no encoding),
   cross-validation included, per method (target for the default: <= 10 s).

    python bench/bench_fewshot.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from common import DATA, clip_command, machine  # noqa: E402


def datasets() -> dict[str, tuple[Path, Path]]:
    from digits_dataset import save_digits
    from draw_shapes import draw_dataset

    sets = {}
    for style in ("training", "outline", "noisy"):
        train, test = DATA / f"fewshot-{style}-train", DATA / f"fewshot-{style}-test"
        if not train.is_dir():
            draw_dataset(train, 20, style, "seen", 96, seed=101)
            draw_dataset(test, 10, style, "seen", 96, seed=202)
        sets[f"shapes, {style} style"] = (train, test)
    digits = DATA / "digits"
    if not digits.is_dir():
        save_digits(digits)
    sets["digits (scikit-learn)"] = (digits / "train", digits / "test")
    return sets


def curves(clip: list[str]) -> None:
    cache = DATA / "label-cache"
    for name, (train, test) in datasets().items():
        start = time.perf_counter()
        result = subprocess.run([*clip, "fit", str(train), "--eval", str(test), "-m", "demo", "--method",
                                 "gda,logistic,tip-adapter", "--repeats", "3", "-f", "json", "-q", "--cache-dir",
                                 str(cache)], capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(result.stderr)
        rows = json.loads(result.stdout)["results"]
        wall = time.perf_counter() - start
        shots = sorted({r["shots"] for r in rows})
        zero = next(r for r in rows if r["shots"] == 0)
        print(f"\n{name}: train {train.name}, test {test.name} ({wall:.0f} s in all)")
        print("method       " + "".join(f"{k:>14}" for k in shots))
        for method in ("gda", "logistic", "tip-adapter"):
            cells = []
            for k in shots:
                row = zero if k == 0 else next(r for r in rows if r["method"] == method and r["shots"] == k)
                cells.append(f"{row['mean']:.1%}" + (f" ±{row['std']:.1%}" if k else "       "))
            print(f"{method:12s} " + "".join(f"{c:>14}" for c in cells))


def fit_times() -> None:
    import torch

    from clipcli import fewshot

    generator = torch.Generator().manual_seed(0)
    classes, shots, dim = 100, 16, 512
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    x = torch.nn.functional.normalize(centres.repeat_interleave(shots, 0) * 0.3 +
                                      torch.randn(classes * shots, dim, generator=generator) * 0.05, dim=-1)
    y = torch.arange(classes).repeat_interleave(shots).tolist()
    text = torch.nn.functional.normalize(centres + torch.randn(classes, dim, generator=generator) * 0.1, dim=-1)
    print(f"\nfit {shots} shots x {classes} classes, {dim}-d features (cross-validation included):")
    for method in ("gda", "logistic", "tip-adapter"):
        start = time.perf_counter()
        head = fewshot.fit_head(x, y, [str(c) for c in range(classes)], text, 100.0, method)
        print(f"  {method:12s} {time.perf_counter() - start:6.2f} s  (cv accuracy {head.meta['cv_accuracy']:.1%}, "
              f"{head.params})")


def main() -> None:
    print(machine())
    fit_times()
    curves(clip_command())


if __name__ == "__main__":
    main()
