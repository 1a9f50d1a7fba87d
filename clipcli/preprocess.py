"""open_clip's inference preprocessing, without torch or torchvision (Pillow and numpy only).

open_clip builds its preprocess from the model's `preprocess_cfg` (size, mean, std, interpolation,
resize_mode, fill_color) out of torchvision transforms that, on PIL images, call Pillow themselves.
This module does the same steps with the same arithmetic (torchvision's size rounding, Pillow's
resampling, the same crop offsets, float32 division by 255, then (x - mean) / std), so its output
equals open_clip's preprocess to float rounding (tested to 1e-6 per pixel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "random": Image.Resampling.BICUBIC}  # open_clip: "random" means bicubic at inference


@dataclass(frozen=True)
class ImageTransform:
    size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> "ImageTransform":
        size = cfg.get("size", 224)
        size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        return cls(size, tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                   cfg.get("interpolation") or "bicubic", cfg.get("resize_mode") or "shortest",
                   int(cfg.get("fill_color") or 0))

    def to_config(self) -> dict:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode, "fill_color": self.fill_color}

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 [3, H, W]."""
        image = self.resize_and_crop(image)
        array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
        pixels = array.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((pixels - mean) / std)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        resample = INTERPOLATION.get(self.interpolation, Image.Resampling.BICUBIC)
        if self.resize_mode == "squash":
            return _resize(image, (height, width), resample)
        if self.resize_mode == "longest":
            return _crop_or_pad(_resize(image, _keep_ratio(image, self.size, longest=True), resample),
                                self.size, self.fill_color)
        if height == width:  # torchvision Resize(int): the shorter side becomes `height`
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = height, int(height * long / short)
            target = (new_long, new_short) if w <= h else (new_short, new_long)  # (h, w)
        else:
            target = _keep_ratio(image, self.size, longest=False)
        return _crop_or_pad(_resize(image, target, resample), self.size, self.fill_color)


def _keep_ratio(image: Image.Image, size: tuple[int, int], longest: bool) -> tuple[int, int]:
    """open_clip's ResizeKeepRatio (no randomness): (h, w)."""
    w, h = image.size
    ratio_h, ratio_w = h / size[0], w / size[1]
    ratio = max(ratio_h, ratio_w) if longest else min(ratio_h, ratio_w)
    return round(h / ratio), round(w / ratio)


def _resize(image: Image.Image, size_hw: tuple[int, int], resample) -> Image.Image:
    if (image.size[1], image.size[0]) == tuple(size_hw):
        return image  # torchvision returns the image untouched when it already has the size
    return image.resize((size_hw[1], size_hw[0]), resample)


def _crop_or_pad(image: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    """torchvision's CenterCrop (and open_clip's CenterCropOrPad): pad when smaller, then crop the middle."""
    crop_h, crop_w = size
    w, h = image.size
    if crop_w > w or crop_h > h:
        left, top = (crop_w - w) // 2 if crop_w > w else 0, (crop_h - h) // 2 if crop_h > h else 0
        padded = Image.new(image.mode, (max(w, crop_w), max(h, crop_h)),
                           (fill,) * len(image.getbands()) if len(image.getbands()) > 1 else fill)
        padded.paste(image, (left, top))
        image = padded
        w, h = image.size
        if w == crop_w and h == crop_h:
            return image
    top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))
