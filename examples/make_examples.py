"""Make the input folders of README's examples, so that every example can be run again.

    python examples/make_examples.py /tmp/clip-examples            # all but demo400 (a few seconds)
    python examples/make_examples.py /tmp/clip-examples --only photos,inbox
    python examples/make_examples.py /tmp --only shapes,demo400    # `clip compare`'s /tmp/shapes and /tmp/demo400

then `cd /tmp/clip-examples` and run README's commands there.  What it makes (all seeded, the same every run):

    shapes/         600 drawn shapes, 60 labels (`clip eval`, `clip compare`, calibration)
    outline/        the same labels in a style the demo model never saw (`--adapt`)
    few/            3 of the 24 labels of labels24.txt, 10 images each (`--adapt` on a folder with few labels)
    labels24.txt    24 labels, one per line
    inbox/          IMG_0001..5.png (shapes; IMG_0005 a purple heart, in no label of the example) and two
                    photos (`clip sort --other`, `clip classify --other`)
    photos/         scikit-learn's two sample photos, planted copies (recompressed, smaller, cropped) and another
                    framing of one scene (`clip dupes`)
    digits/         scikit-learn's 8x8 handwritten digits as train/ and test/ folders (`clip fit`)
    videos/         walk.mp4 and fade.mov, drawn scenes that change at known times (videos in classify, search)
    demo400/        the demo model's training stopped at 400 steps (only with --only demo400: about 4 minutes)

photos/, inbox/'s photos and digits/ need scikit-learn (`pip install scikit-learn`, or `pip install '.[bench]'`);
without it they are skipped with a note, and the rest is made.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

FEW = ("red circle", "green star", "yellow square")
INBOX = (("IMG_0001.png", "red", "circle"), ("IMG_0002.png", "blue", "square"), ("IMG_0003.png", "green", "star"),
         ("IMG_0004.png", "red", "circle"), ("IMG_0005.png", "purple", "heart"))
EVERYTHING = ("shapes", "outline", "few", "inbox", "photos", "digits", "videos")


def sample_photos() -> dict | None:
    """scikit-learn's sample photos (china.jpg, flower.jpg, 640x427) as PIL images, or None without it."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return None
    from PIL import Image

    data = load_sample_images()
    return {Path(name).name: Image.fromarray(image) for name, image in zip(data.filenames, data.images)}


def make_shapes(out: Path, style: str = "training") -> str:
    from draw_shapes import draw_dataset

    count = draw_dataset(out, per_label=10, style=style, which="seen", size=96, seed=2024)
    return f"{count} images"


def make_few(out: Path) -> str:
    import numpy as np

    from clipcli.demo import shapes

    seen = shapes.seen_labels()
    others = [label for label in seen if label not in FEW]
    chosen = set(FEW) | {others[i] for i in np.random.default_rng(24).choice(len(others), 21, replace=False)}
    labels = [label for label in seen if label in chosen]
    (out / "labels24.txt").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    for n, label in enumerate(FEW):
        colour, shape = label.split()
        folder = out / "few" / label.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(10):
            shapes.draw_pil(colour, shape, size=96, seed=1000 * (n + 1) + i).save(folder / f"{i:03d}.png")
    return "30 images and labels24.txt"


def make_inbox(out: Path) -> str:
    from clipcli.demo import shapes

    folder = out / "inbox"
    folder.mkdir(parents=True, exist_ok=True)
    for n, (name, colour, shape) in enumerate(INBOX):
        shapes.draw_pil(colour, shape, size=96, seed=500 + n).save(folder / name)
    photos = sample_photos()
    if photos is None:
        return "5 shapes (no photos: scikit-learn is not installed)"
    for name, image in photos.items():
        image.save(folder / name, quality=90)
    return "5 shapes and 2 photos"


def make_photos(out: Path) -> str:
    photos = sample_photos()
    if photos is None:
        return "skipped: needs scikit-learn (pip install scikit-learn)"
    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    china, flower = photos["china.jpg"], photos["flower.jpg"]
    china.save(folder / "china.jpg", quality=95)
    flower.save(folder / "flower.jpg", quality=95)
    china.save(folder / "china_recompressed.jpg", quality=30)  # the same picture, recompressed
    china.resize((213, 142)).save(folder / "china_small.jpg", quality=90)  # a thumbnail
    flower.crop((25, 17, 615, 410)).save(folder / "flower_cropped.jpg", quality=90)  # lightly cropped: 590x393
    china.crop((0, 0, 320, 427)).save(folder / "china_left_half.jpg", quality=90)  # another framing, not a copy
    return "6 photos"


def make_digits(out: Path) -> str:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "skipped: needs scikit-learn (pip install scikit-learn)"
    from digits_dataset import save_digits

    return f"{save_digits(out / 'digits')} images"


def make_videos(out: Path) -> str:
    from make_video import make_video

    folder = out / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    # a walk: 0-4 s a red circle, 4-9 s a blue square, 9-12 s a green star; a clip that starts black, like many
    make_video(folder / "walk.mp4", [(4, ("red", "circle")), (5, ("blue", "square")), (3, ("green", "star"))],
               size=(160, 120), fps=15, pan=True)
    make_video(folder / "fade.mov", [(1, "black"), (5, ("yellow", "triangle")), (2, ("red", "circle"))],
               size=(160, 120), fps=15, pan=True)
    return "walk.mp4 (12 s) and fade.mov (8 s)"


def make_demo400(out: Path) -> str:
    subprocess.run([sys.executable, str(ROOT / "tools" / "train_demo_model.py"), "--steps", "400", "--out",
                    str(out / "demo400")], check=True)
    return "trained"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where the folders go (made if missing)")
    parser.add_argument("--only", default=",".join(EVERYTHING),
                        help=f"comma-separated, of: {', '.join(EVERYTHING)}, demo400 (default: all but demo400)")
    args = parser.parse_args()
    makers = {"shapes": lambda out: make_shapes(out / "shapes"), "outline": lambda out: make_shapes(out / "outline",
                                                                                                    "outline"),
              "few": make_few, "inbox": make_inbox, "photos": make_photos, "digits": make_digits,
              "videos": make_videos, "demo400": make_demo400}
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in makers]
    if unknown:
        parser.error(f"unknown --only {', '.join(unknown)}; choose from {', '.join(makers)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        print(f"{name}: {makers[name](args.out)}")


if __name__ == "__main__":
    main()
