"""Save scikit-learn's `load_digits` (1,797 real 8x8 handwritten digits, UCI) as labelled image folders.

    python tools/digits_dataset.py /tmp/digits      # /tmp/digits/train/<0..9>/*.png, /tmp/digits/test/<0..9>/*.png

Each digit is scaled to 48x48 (nearest neighbour, black on white, as a person would draw it) and the set is
split in half per class with a fixed seed, so `clip fit /tmp/digits/train --eval /tmp/digits/test` measures on
images that no head was fitted on.  Needs scikit-learn (`pip install '.[bench]'`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def save_digits(out: Path, size: int = 48, seed: int = 0) -> int:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    count = 0
    for target in range(10):
        indexes = np.flatnonzero(digits.target == target)
        rng.shuffle(indexes)
        half = len(indexes) // 2
        for split, chosen in (("train", indexes[:half]), ("test", indexes[half:])):
            folder = out / split / f"{target}_{NAMES[target]}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                pixels = (255 - digits.images[index] * (255 / 16)).astype("uint8")
                Image.fromarray(pixels, "L").resize((size, size), Image.NEAREST).save(folder / f"{index:04d}.png")
                count += 1
    return count


def demo_features(root: Path):
    """((train features, targets), (test features, targets)) of the digits under `root` (saved there first if
    missing) through the demo model, as `clip fit` sees them: what the few-shot benches and tests start from."""
    import numpy as np

    from clipcli.api import ModelOptions, open_encoder
    from clipcli.evaluate import encode_dataset, load_dataset

    if not (root / "train").is_dir():
        save_digits(root)
    split = {}
    with open_encoder(ModelOptions("demo")) as encoder:
        for name in ("train", "test"):
            data = load_dataset(str(root / name))
            kept, x, _ = encode_dataset(encoder, data.paths)
            split[name] = np.asarray(x), [data.targets[i] for i in kept]
    return split["train"], split["test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(f"saved {save_digits(args.out)} digits into {args.out}/train and {args.out}/test")


if __name__ == "__main__":
    main()
