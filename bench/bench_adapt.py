"""Issue 20: --adapt (clipcli.adapt) against zero-shot, and the logistic probe against scikit-learn, side by side.

1. Drawn shapes, demo model, 24 of the 60 seen labels (fixed draw), 40 images per label, four styles:
   training (zero-shot near 100%), shifted, outline and noisy (styles the demo model never saw).
   - whole sets: zero-shot vs --adapt vs a plain Gaussian mixture (free means, no anchor: the issue's baseline);
   - few labels present: 30 draws of 2 or 3 of the 24 labels (40 and 10 images each), mean and worst change.
2. The logistic probe on scikit-learn's digits (demo features, every training image) vs LogisticRegressionCV.
3. Time: adapt over 100,000 synthetic 512-d embeddings x 1,000 labels.

    python bench/bench_adapt.py [sets] [logistic] [time]
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from common import DATA  # noqa: E402

STYLES = ("training", "shifted", "outline", "noisy")


def drawn_features() -> dict:
    target = DATA / "adapt-feats.npz"
    if target.is_file():
        return dict(np.load(target))
    import torch
    from PIL import Image

    from clipcli.api import zero_shot_classifier
    from clipcli.demo import shapes
    from clipcli.models import load_model

    loaded = load_model("demo")
    labels = shapes.seen_labels()
    chosen = sorted(np.random.default_rng(24).choice(len(labels), 24, replace=False).tolist())
    labels = [labels[i] for i in chosen]
    classifier = zero_shot_classifier(loaded, labels, "imagenet")
    out = {"labels": np.array(labels), "text": classifier.label_embeddings, "scale": np.float32(classifier.logit_scale)}
    for name in STYLES:
        style = {"training": shapes.TRAINING, "shifted": shapes.SHIFTED, "outline": shapes.OUTLINE,
                 "noisy": shapes.NOISY}[name]
        colours = [n.split()[0] for n in labels for _ in range(40)]
        kinds = [n.split()[1] for n in labels for _ in range(40)]
        images = shapes.draw(colours, kinds, size=96, style=style, generator=torch.Generator().manual_seed(7))
        pixels = torch.stack([loaded.preprocess(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images])
        with torch.no_grad():
            out[name + "_x"] = torch.nn.functional.normalize(loaded.model.encode_image(pixels), dim=-1).numpy()
        out[name + "_y"] = np.repeat(np.arange(24), 40)
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez(target, **out)
    return out


def plain_mixture(x, text, logits, iterations=10):
    """The issue's naive baseline: free class means, shared diagonal covariance, uniform prior, zero-shot start."""
    from scipy.special import log_softmax, softmax

    x = x.astype(np.float64)
    log_p = log_softmax(logits, axis=1)
    q = np.exp(log_p)
    for _ in range(iterations):
        counts = q.sum(0)
        mu = q.T @ x / np.maximum(counts, 1e-9)[:, None]
        var = np.maximum(((x ** 2).sum(0) - 2 * (mu * (q.T @ x)).sum(0) + counts @ mu ** 2) / len(x), 1e-6)
        q = softmax(log_p + x @ (mu / var).T - 0.5 * (mu ** 2 / var).sum(1), axis=1)
    return q


def accuracy(scores, y) -> float:
    return float((np.asarray(scores).argmax(1) == y).mean())


def adapt_sets() -> None:
    from clipcli.adapt import adapt_logits

    data = drawn_features()
    text, scale = data["text"], float(data["scale"])
    print("1. drawn shapes, 24 labels, demo model (top-1)")
    print(f"{'style':10s} {'zero-shot':>10s} {'--adapt':>10s} {'change':>8s} {'plain GMM':>10s}")
    for style in STYLES:
        x, y = data[style + "_x"], data[style + "_y"]
        logits = scale * x @ text.T
        zero, adapted = accuracy(logits, y), accuracy(adapt_logits(x, text, logits).logits, y)
        plain = accuracy(plain_mixture(x, text, logits), y)
        print(f"{style:10s} {zero:10.1%} {adapted:10.1%} {100 * (adapted - zero):+7.1f}p {plain:10.1%}")
    print("\n   only 2 or 3 of the 24 labels in the folder: 30 draws; change in points, mean (worst draw);"
          " zero-shot mean")
    for style in STYLES:
        x0, y0 = data[style + "_x"], data[style + "_y"]
        cells = []
        for per in (40, 10):
            rng = np.random.default_rng(1)
            ours, plain, zeros = [], [], []
            for draw in range(30):
                present = rng.choice(24, 2 + draw % 2, replace=False)
                rows = np.concatenate([rng.choice(np.flatnonzero(y0 == c), per, replace=False) for c in present])
                x, y = x0[rows], y0[rows]
                logits = scale * x @ text.T
                zero = accuracy(logits, y)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ours.append(accuracy(adapt_logits(x, text, logits).logits, y) - zero)
                plain.append(accuracy(plain_mixture(x, text, logits), y) - zero)
                zeros.append(zero)
            cells.append(f"{per}/label: zs {np.mean(zeros):.1%} adapt {100 * np.mean(ours):+.1f}p "
                         f"({100 * min(ours):+.1f}) plain {100 * np.mean(plain):+.1f}p ({100 * min(plain):+.1f})")
        print(f"   {style:10s} " + " | ".join(cells))


def logistic_digits() -> None:
    from sklearn.linear_model import LogisticRegressionCV

    from clipcli import fewshot
    from digits_dataset import demo_features

    (x, y), (test_x, test_y) = demo_features(DATA / "digits")
    text = np.eye(10, x.shape[1], dtype=np.float32)  # unused by the probe
    print(f"\n2. logistic probe, digits, demo features ({len(y)} train / {len(test_y)} test)")
    for label, grid, fine, patience, iterations in (
            ("before (1e-2..1e4, 100 it.)", tuple(10 ** (k / 2) for k in range(-4, 9)), (), None, 100),
            ("now (1e-6..1e6 coarse-to-fine)", fewshot.C_GRID, fewshot.C_FINE, fewshot.C_PATIENCE, 1000)):
        start = time.perf_counter()
        saved = fewshot.LOGISTIC_MAX_ITER
        fewshot.LOGISTIC_MAX_ITER = iterations
        try:
            params, tensors, _ = fewshot.fit_logistic(np.asarray(x), np.asarray(y), text, 100.0,
                                                      fewshot.make_folds(y, 0), grid, fine, patience)
        finally:
            fewshot.LOGISTIC_MAX_ITER = saved
        head = fewshot.FewShotHead([str(i) for i in range(10)], "logistic", text, 100.0, params, tensors)
        print(f"   {label:32s} {fewshot.accuracy(head, test_x, test_y):.1%}  C={params['C']:.3g}  "
              f"{time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = LogisticRegressionCV(max_iter=1000).fit(x, y)
    print(f"   {'LogisticRegressionCV (defaults)':32s} {reference.score(test_x, test_y):.1%}  C={reference.C_[0]:.3g}  "
          f"{time.perf_counter() - start:.1f} s")


def adapt_time() -> None:
    from clipcli.adapt import AdaptSettings, adapt_logits

    rng = np.random.default_rng(0)
    n, k, d = 100_000, 1_000, 512
    text = rng.standard_normal((k, d)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    gap = rng.standard_normal(d).astype(np.float32)  # a shared offset (modality gap) and noise: zero-shot far from 100%
    x = text[y] * 0.12 + gap * (0.3 / np.linalg.norm(gap)) + rng.standard_normal((n, d)).astype(np.float32) * 0.04
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    logits = 100 * x @ text.T
    print(f"\n3. adapt, {n:,} embeddings x {k:,} labels, {d}-d (synthetic, zero-shot top-1 {accuracy(logits, y):.1%}):")
    for name, settings in (("defaults (2 + 8 iterations at most)", AdaptSettings()),
                           ("5 + 10 iterations (the first choice)", AdaptSettings(5, 10))):
        start = time.perf_counter()
        result = adapt_logits(x, text, logits, settings)
        print(f"   {name:36s} {time.perf_counter() - start:6.1f} s, {result.steps} iterations, "
              f"top-1 {accuracy(result.logits, y):.1%}")


def main() -> None:
    import os

    print(f"{os.cpu_count()} cores")
    parts = sys.argv[1:] or ["sets", "logistic", "time"]
    if "sets" in parts:
        adapt_sets()
    if "logistic" in parts:
        logistic_digits()
    if "time" in parts:
        adapt_time()


if __name__ == "__main__":
    main()
