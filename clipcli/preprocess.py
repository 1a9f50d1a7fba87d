"""open_clip's inference preprocessing, without torch or torchvision (Pillow and numpy only).

open_clip builds its preprocess from the model's `preprocess_cfg` (size, mean, std, interpolation,
resize_mode, fill_color) out of torchvision transforms that, on PIL images, call Pillow themselves.
This module does the same steps with the same arithmetic (torchvision's size rounding, Pillow's
resampling, the same crop offsets, float32 division by 255, then (x - mean) / std), so its output
equals open_clip's preprocess to float rounding (tested to 1e-6 per pixel).
"""

from __future__ import annotations

import math
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


PIL_RESAMPLE = {0: Image.Resampling.NEAREST, 1: Image.Resampling.LANCZOS, 2: Image.Resampling.BILINEAR,
                3: Image.Resampling.BICUBIC, 4: Image.Resampling.BOX, 5: Image.Resampling.HAMMING}


@dataclass(frozen=True)
class HFImageTransform:
    """A Hugging Face CLIP-family image processor (`preprocessor_config.json`) as its Pillow backend computes it,
    without torch or transformers: resize (the shortest edge to N, keeping the ratio with transformers' int()
    rounding, or to a fixed height x width), centre crop (offsets rounded down; zero padding when the image is
    smaller, centred with the extra pixel on top/left), rescale (uint8 * factor in float64, then float32),
    normalise ((x - mean) / std in float32).  Checked against the processor itself when a model loads."""

    resize: tuple[int, ...] | None  # (shortest_edge,) or (height, width); None: no resize
    crop: tuple[int, int] | None  # (height, width); None: no crop
    resample: int = 3
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_processor_config(cls, cfg: dict) -> "HFImageTransform":
        """From the fields of preprocessor_config.json; ValueError for settings it does not reproduce."""
        def hw(value, name):
            if isinstance(value, (int, float)):
                return int(value), int(value)
            if isinstance(value, dict) and value.get("height") and value.get("width"):
                return int(value["height"]), int(value["width"])
            raise ValueError(f"{name} {value!r} is not a size this preprocessing reproduces")

        for unsupported in ("do_pad", "do_image_splitting", "max_num_patches"):
            if cfg.get(unsupported):
                raise ValueError(f"the image processor's {unsupported} is not reproduced here")
        resize = None
        if cfg.get("do_resize", True):
            size = cfg.get("size")
            if isinstance(size, dict) and size.get("shortest_edge") and not size.get("longest_edge"):
                resize = (int(size["shortest_edge"]),)
            elif isinstance(size, int) and not cfg.get("default_to_square", True):
                resize = (int(size),)
            else:
                resize = hw(size, "size")
        crop = hw(cfg.get("crop_size"), "crop_size") if cfg.get("do_center_crop") else None
        normalize = cfg.get("do_normalize", True)
        return cls(resize, crop, int(cfg.get("resample", 3) if cfg.get("resample") is not None else 2),
                   float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None,
                   tuple(float(v) for v in cfg["image_mean"]) if normalize else None,
                   tuple(float(v) for v in cfg["image_std"]) if normalize else None)

    @property
    def size(self) -> tuple[int, int]:
        """The output (height, width)."""
        if self.crop is not None:
            return self.crop
        if self.resize is not None and len(self.resize) == 2:
            return self.resize
        raise ValueError("this image processor's output size depends on the image")

    def to_config(self) -> dict:
        return {"kind": "transformers", "resize": list(self.resize) if self.resize else None,
                "crop": list(self.crop) if self.crop else None, "resample": self.resample, "rescale": self.rescale,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None}

    @classmethod
    def from_config(cls, cfg: dict) -> "HFImageTransform":
        def tup(value, kind):
            return None if value is None else tuple(kind(v) for v in value)

        return cls(tup(cfg["resize"], int), tup(cfg["crop"], int), int(cfg["resample"]), cfg["rescale"],
                   tup(cfg["mean"], float), tup(cfg["std"], float))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 [3, H, W]."""
        image = image.convert("RGB") if image.mode != "RGB" else image
        if self.resize is not None:
            w, h = image.size
            if len(self.resize) == 1:
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = self.resize[0], int(self.resize[0] * long / short)
                target_h, target_w = (new_long, new_short) if w <= h else (new_short, new_long)
            else:
                target_h, target_w = self.resize
            image = image.resize((target_w, target_h), resample=PIL_RESAMPLE.get(self.resample, Image.BILINEAR))
        array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        if self.crop is not None:
            array = _hf_center_crop(array, self.crop)
        pixels = (array.astype(np.float64) * self.rescale).astype(np.float32) if self.rescale is not None \
            else array.astype(np.float32)
        if self.mean is not None:
            mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.std, dtype=np.float32)[:, None, None]
            pixels = (pixels - mean) / std
        return np.ascontiguousarray(pixels, dtype=np.float32)


def _hf_center_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """transformers' numpy center_crop on [C, H, W]."""
    import math

    _, h, w = array.shape
    crop_h, crop_w = size
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return array[:, top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((array.shape[0], new_h, new_w), dtype=array.dtype)
    top_pad, left_pad = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    padded[:, top_pad:top_pad + h, left_pad:left_pad + w] = array
    top, left = top + top_pad, left + left_pad
    return padded[:, max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def naflex_size(height: int, width: int, patch: int, max_patches: int) -> tuple[int, int]:
    """The (height, width) SigLIP 2's NaFlex processor resizes an image to: the largest scale (found by bisection
    between 1e-6 and 100 to a width under 1e-5, as transformers' processor searches it) at which both sides,
    rounded up to whole patches (at least one), make no more than `max_patches` patches."""
    def sides(scale: float) -> tuple[int, int]:
        return tuple(int(max(patch, math.ceil(side * scale / patch) * patch)) for side in (height, width))

    low, high = 1e-6, 100.0
    while high - low >= 1e-5:
        middle = (low + high) / 2
        h, w = sides(middle)
        if (h / patch) * (w / patch) <= max_patches:
            low = middle
        else:
            high = middle
    return sides(low)


@dataclass(frozen=True)
class NaFlexImageTransform:
    """SigLIP 2's NaFlex image processor (`Siglip2ImageProcessor`) as its Pillow backend computes it: resize keeping
    the aspect ratio to at most `max_patches` patches of `patch` x `patch` pixels (`naflex_size`), rescale and
    normalise as `HFImageTransform`, then cut into patches in row-major order, each flattened as (row, column,
    channel), and zero-padded to `max_patches` patches.

    Every image gives one fixed-shape float32 array [3, max_patches + 1, patch * patch], so images batch like any
    other [B, C, H, W] pixels: channel c of row i is entry (k, c) of the model's `pixel_values` row i, whose
    entries are ordered (pixel k, channel c); the last row holds the image's `spatial_shapes` (patch rows in
    [0, -1, 0], patch columns in [1, -1, 0]); `pixel_attention_mask` is 1 for the first rows * columns patches
    (see `hf_models.unpack_naflex`)."""

    patch: int
    max_patches: int
    resample: int = 2
    rescale: float | None = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_processor_config(cls, cfg: dict) -> "NaFlexImageTransform":
        if not cfg.get("do_resize", True):
            raise ValueError("a NaFlex processor without do_resize is not reproduced here")
        normalize = cfg.get("do_normalize", True)
        return cls(int(cfg.get("patch_size", 16)), int(cfg.get("max_num_patches", 256)),
                   int(cfg.get("resample", 2) if cfg.get("resample") is not None else 2),
                   float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None,
                   tuple(float(v) for v in cfg["image_mean"]) if normalize else None,
                   tuple(float(v) for v in cfg["image_std"]) if normalize else None)

    @property
    def size(self) -> tuple[int, int]:
        """The packed array's (height, width) per channel (not an image size: see `image_size`)."""
        return self.max_patches + 1, self.patch * self.patch

    @property
    def image_size(self) -> int:
        """The most pixels the shorter side is resized to (a square image): what a reduced decode must keep."""
        return math.isqrt(self.max_patches) * self.patch

    def to_config(self) -> dict:
        return {"kind": "naflex", "patch": self.patch, "max_patches": self.max_patches, "resample": self.resample,
                "rescale": self.rescale, "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None}

    @classmethod
    def from_config(cls, cfg: dict) -> "NaFlexImageTransform":
        return cls(int(cfg["patch"]), int(cfg["max_patches"]), int(cfg["resample"]), cfg["rescale"],
                   None if cfg["mean"] is None else tuple(float(v) for v in cfg["mean"]),
                   None if cfg["std"] is None else tuple(float(v) for v in cfg["std"]))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 [3, max_patches + 1, patch * patch] (patches, then the spatial shape)."""
        height, width = naflex_size(image.size[1], image.size[0], self.patch, self.max_patches)
        pixels = HFImageTransform((height, width), None, self.resample, self.rescale, self.mean, self.std)(image)
        p = self.patch
        rows, columns = height // p, width // p
        patches = pixels.reshape(3, rows, p, columns, p).transpose(1, 3, 2, 4, 0).reshape(rows * columns, -1)
        return pack_naflex(patches, (rows, columns), self.max_patches)


def pack_naflex(patches: np.ndarray, shape: tuple[int, int], max_patches: int) -> np.ndarray:
    """The packed array of `NaFlexImageTransform` from an image's patches [n, 3 * p * p] and its (rows, columns)."""
    flat = np.zeros((max_patches + 1, patches.shape[1]), dtype=np.float32)
    flat[:len(patches)] = patches
    flat[-1, :2] = shape
    return np.ascontiguousarray(flat.reshape(max_patches + 1, -1, 3).transpose(2, 0, 1))


def transform_from_config(cfg: dict):
    """The transform a saved preprocessing config describes (open_clip's or a transformers processor's)."""
    if cfg.get("kind") == "naflex":
        return NaFlexImageTransform.from_config(cfg)
    return HFImageTransform.from_config(cfg) if cfg.get("kind") == "transformers" else ImageTransform.from_config(cfg)
