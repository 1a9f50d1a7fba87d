"""Draw a labelled folder of coloured shapes (one subfolder per label) for `clip eval --model demo`.

    python tools/draw_shapes.py /tmp/shapes --per-label 10
    python tools/draw_shapes.py /tmp/shapes-shifted --style shifted
    python tools/draw_shapes.py /tmp/shapes-held-out --which held-out
    python tools/draw_shapes.py /tmp/shapes-outline --style outline  # clean, but a style the demo model never saw
    python tools/draw_shapes.py /tmp/shapes-noisy --style noisy      # tiny shapes under heavy noise

Images are drawn fresh (seeded, but with other seeds than training uses).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipcli.demo import shapes  # noqa: E402


def draw_dataset(out: Path, per_label: int, style: str, which: str, size: int, seed: int) -> int:
    labels = {"seen": shapes.seen_labels, "held-out": shapes.held_out_labels, "all": shapes.all_labels}[which]()
    chosen_style = {"training": shapes.TRAINING, "shifted": shapes.SHIFTED, "noisy": shapes.NOISY,
                    "outline": shapes.OUTLINE}[style]
    generator = torch.Generator().manual_seed(seed)
    for name in labels:
        colour, shape = name.split(" ", 1)
        folder = out / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        images = shapes.draw([colour] * per_label, [shape] * per_label, size=size, style=chosen_style,
                             generator=generator)
        for i, image in enumerate(images):
            from PIL import Image

            Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(folder / f"{i:03d}.png")
    return len(labels) * per_label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-label", type=int, default=10)
    parser.add_argument("--style", choices=["training", "shifted", "noisy", "outline"], default="training")
    parser.add_argument("--which", choices=["seen", "held-out", "all"], default="seen")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    count = draw_dataset(args.out, args.per_label, args.style, args.which, args.size, args.seed)
    print(f"drew {count} images into {args.out}")


if __name__ == "__main__":
    main()
