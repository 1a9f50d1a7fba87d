"""Issue 20: `--other` (open set) on the demo model, measured side by side in one run.

Labels: 24 of the demo model's 60 seen labels (two draws).  Sets, each drawn fresh with the project's tools:
  - in-label images: shapes of the 24 labels, in 4 styles (training, shifted, outline, noisy: tools/draw_shapes.py);
  - near misses: shapes of the other 36 labels, same style (a colour/shape pair that is not among the labels);
  - unrelated: scikit-learn's digits (tools/digits_dataset.py, test half) and crops of the sample photos that
    scikit-image and scikit-learn ship (bench/common.py).
1. Methods, threshold-free (AUROC of "not in the labels", near misses and unrelated vs in-label images): the
   softmax maximum (MSP), the raw best cosine, NegLabel's score (label mass over label + negative mass) and the
   margin to the best negative label (clipcli's rule).
2. clipcli's rule at the default operating point and a sweep of thresholds: share of in-label images still right
   (and of those zero-shot got right), share of near misses and of unrelated images sent to `other`.
3. Variants of the rule at one operating point (the margin that keeps 94% of right answers in the shifted style):
   the share of the vocabulary kept as negatives, and the best negative vs the mean of the best 5.

    python bench/bench_openset.py
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from common import DATA, machine, sample_photos  # noqa: E402

STYLES = ("training", "shifted", "outline", "noisy")
DRAWS = 4
THRESHOLDS = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)


def draw_sets() -> dict[str, Path]:
    from digits_dataset import save_digits
    from draw_shapes import draw_dataset

    folders = {}
    for style in STYLES:
        folder = DATA / f"openset-{style}"
        if not folder.is_dir():
            draw_dataset(folder, 10, style, "seen", 96, seed=505)
        folders[style] = folder
    digits = DATA / "digits"
    if not digits.is_dir():
        save_digits(digits)
    folders["digits"] = digits / "test"
    photos = DATA / "openset-photos"
    if not photos.is_dir():
        photos.mkdir(parents=True)
        rng = random.Random(0)
        for i, photo in enumerate(sample_photos() * 16):
            width, height = photo.size
            share = rng.uniform(0.25, 1.0)
            w, h = int(width * share), int(height * share)
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            photo.crop((x, y, x + w, y + h)).resize((160, 160)).save(photos / f"photo_{i:03d}.jpg", quality=90)
    folders["photos"] = photos
    return folders


def encode(folders: dict[str, Path]):
    from clipcli.api import ModelOptions, open_encoder
    from clipcli.evaluate import encode_dataset, load_dataset
    from clipcli.images import walk_images

    features, targets = {}, {}
    with open_encoder(ModelOptions("demo")) as encoder:
        for name, folder in folders.items():
            if name in STYLES:
                data = load_dataset(str(folder))
                kept, features[name], _ = encode_dataset(encoder, data.paths)
                targets[name] = np.asarray(data.targets)[kept]
                class_names = data.class_names
            else:
                features[name] = encode_dataset(encoder, list(walk_images(str(folder))))[1]
        model = encoder.model
        from clipcli.classifier import zero_shot_classifier
        from clipcli.openset import vocabulary_scorer

        everything = zero_shot_classifier(model, class_names, "imagenet")
        words = vocabulary_scorer(model)
    return features, targets, class_names, everything, words


def method_scores(clf, wrapped, x) -> dict[str, np.ndarray]:
    """Higher: more likely none of the labels."""
    cos = x @ clf.label_embeddings.T
    neg = x @ wrapped.negative_embeddings.T
    s = clf.logit_scale
    label_mass = np.exp(s * cos).sum(axis=1)
    return {"MSP": -clf.scores(x).max(axis=1), "raw best cosine": -cos.max(axis=1),
            "NegLabel score": -label_mass / (label_mass + np.exp(s * neg).sum(axis=1)),
            "margin to best negative (clipcli)": wrapped.other_scores(x)}


def main() -> None:
    from clipcli.calibration import auroc
    from clipcli.classifier import ZeroShotClassifier
    from clipcli.openset import default_threshold, wrap
    from clipcli.options import OpenSetOptions

    print(f"machine: {machine()}")
    features, targets, names, everything, words = encode(draw_sets())
    encoded = (features, targets, names, everything, words)
    print(f"unrelated: {len(features['digits'])} digits, {len(features['photos'])} photo crops; "
          f"{len(words.labels)} vocabulary words")
    rows: dict[tuple[str, str], list] = {}
    sweep: dict[tuple[str, float], list] = {}
    default = default_threshold("softmax")
    for draw in range(DRAWS):
        chosen = sorted(random.Random(draw).sample(range(len(names)), 24))
        clf = ZeroShotClassifier([names[i] for i in chosen], everything.label_embeddings[chosen],
                                 everything.logit_scale)
        wrapped = wrap(clf, words, OpenSetOptions(True))
        for style in STYLES:
            x, y = features[style], targets[style]
            inside = np.isin(y, chosen)
            known, near = x[inside], x[~inside]
            truth = np.searchsorted(chosen, y[inside])
            right = clf.scores(known).argmax(axis=1) == truth
            known_scores = method_scores(clf, wrapped, known)
            for method, score in known_scores.items():
                for other_name, other in (("near", near), ("digits", features["digits"]),
                                          ("photos", features["photos"])):
                    rows.setdefault((style, method), []).append(
                        (other_name, auroc(method_scores(clf, wrapped, other)[method], score)))
            for threshold in sorted({default, *THRESHOLDS}, reverse=True):
                s_known = wrapped.other_scores(known)
                kept_right = right & (s_known < threshold)
                sweep.setdefault((style, threshold), []).append((
                    right.mean(), kept_right.mean(), kept_right.sum() / max(1, right.sum()),
                    np.mean(wrapped.other_scores(near) >= threshold),
                    np.mean(wrapped.other_scores(features["digits"]) >= threshold),
                    np.mean(wrapped.other_scores(features["photos"]) >= threshold)))
    print(f"\n1. AUROC of 'none of the labels' (mean of {DRAWS} label draws; 1.0 = perfect, 0.5 = chance)")
    print(f"{'style':9s} {'method':34s} {'near':>6s} {'digits':>7s} {'photos':>7s}")
    for (style, method), values in rows.items():
        mean = {k: np.mean([v for name, v in values if name == k]) for k in ("near", "digits", "photos")}
        print(f"{style:9s} {method:34s} {mean['near']:6.3f} {mean['digits']:7.3f} {mean['photos']:7.3f}")
    print("\nper draw at the default threshold: digits / photos to other")
    for draw in range(DRAWS):
        values = sweep[("training", default)][draw]
        print(f"  draw {draw}: {values[4]:.1%} / {values[5]:.1%}")
    print(f"\n2. clipcli's rule by threshold (default {default}; mean of {DRAWS} label draws). Targets: in-label right "
          ">= 93% (of those zero-shot gets right), near misses >= 40%, digits and photos >= 90% to other")
    print(f"{'style':9s} {'thr':>6s} {'zero-shot':>9s} {'right w/ other':>14s} {'kept right':>10s} "
          f"{'near':>6s} {'digits':>6s} {'photos':>6s}")
    for (style, threshold), values in sweep.items():
        m = np.mean(values, axis=0)
        print(f"{style:9s} {threshold:6.3f} {m[0]:9.1%} {m[1]:14.1%} {m[2]:10.1%} {m[3]:6.1%} {m[4]:6.1%} "
              f"{m[5]:6.1%}")
    variants(*encoded)


def variants(features, targets, names, everything, words) -> None:
    from clipcli.openset import mine_negatives

    print("\n3. variants at the margin that keeps 94% of right answers (shifted style, 4 label draws pooled)")
    print(f"{'keep':>5s} {'best':>5s} {'training kept':>13s} {'near tr':>8s} {'near sh':>8s} {'digits':>7s} "
          f"{'photos':>7s}")
    for keep in (0.1, 0.25, 0.5, 1.0):
        for best in (1, 5):
            draws = []
            for draw in range(DRAWS):
                chosen = sorted(random.Random(draw).sample(range(len(names)), 24))
                labels = everything.label_embeddings[chosen]
                negatives = mine_negatives(words.labels, words.label_embeddings, labels, keep)[1]

                def margin(x):
                    top = np.sort(x @ negatives.T, axis=1)[:, -best:].mean(axis=1)
                    return everything.logit_scale * ((x @ labels.T).max(axis=1) - top)

                sets = {}
                for style in ("training", "shifted"):
                    x, y = features[style], targets[style]
                    inside = np.isin(y, chosen)
                    right = (x[inside] @ labels.T).argmax(axis=1) == np.searchsorted(chosen, y[inside])
                    sets[style] = (margin(x[inside][right]), margin(x[~inside]))
                sets["digits"], sets["photos"] = margin(features["digits"]), margin(features["photos"])
                draws.append(sets)
            cut = np.quantile(np.concatenate([d["shifted"][0] for d in draws]), 0.06)
            share = lambda pick: np.mean([np.mean(pick(d) < cut) for d in draws])  # noqa: E731
            print(f"{keep:5.2f} {best:5d} {1 - share(lambda d: d['training'][0]):13.1%} "
                  f"{share(lambda d: d['training'][1]):8.1%} {share(lambda d: d['shifted'][1]):8.1%} "
                  f"{share(lambda d: d['digits']):7.1%} {share(lambda d: d['photos']):7.1%}")


if __name__ == "__main__":
    main()
