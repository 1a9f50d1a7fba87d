"""The batch pipeline: decode + preprocess in worker processes, encode batches on the model's thread.

Decoding runs in torch DataLoader workers (prefetching a few batches ahead), so
the model never waits for JPEG decoding; with workers=0, or when there are too
few images to be worth starting workers, everything runs in this process.
A file that fails to decode becomes an error item in its batch, in order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from . import config
from .errors import ImageReadError
from .images import read_image


@dataclass
class BatchItem:
    path: str
    error: tuple[str, str] | None = None  # (kind, message)
    size: tuple[int, int] | None = None  # (width, height) of the upright image, when decoded


@dataclass
class ImageBatch:
    items: list[BatchItem]
    pixels: torch.Tensor | None  # [decoded items, 3, H, W], in item order
    decoded: list[int] = field(default_factory=list)  # indexes into items that have pixels


@dataclass(frozen=True)
class DecodeOptions:
    max_megapixels: float | None = None
    reduced_decode_size: int | None = None  # JPEG draft: decode at >= this shorter side


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 32
    workers: int | None = None  # None: default_workers()
    top_k: int = 5  # 0: every label
    score: str = "softmax"
    max_megapixels: float | None = config.DEFAULT_MAX_MEGAPIXELS
    reduced_decode: bool = False  # JPEG draft decoding down to the model's input size (see bench/RESULTS.md)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class ImageFolderDataset(torch.utils.data.Dataset):
    """Map-style dataset over paths: (path, pixels or None, error or None, (width, height) or None)."""

    def __init__(self, paths: Sequence[str], preprocess: Callable, options: DecodeOptions) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.options = options

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            image, size = read_image(path, self.options.max_megapixels, self.options.reduced_decode_size)
            return path, self.preprocess(image), None, size
        except ImageReadError as exc:
            return path, None, (exc.kind, exc.reason), None
        except Exception as exc:  # a preprocess failure is still this file's problem only
            return path, None, ("decode_error", f"cannot preprocess image ({exc})"), None


def collate(samples) -> ImageBatch:
    items = [BatchItem(path, error, size) for path, _, error, size in samples]
    decoded = [i for i, sample in enumerate(samples) if sample[1] is not None]
    pixels = torch.stack([samples[i][1] for i in decoded]) if decoded else None
    return ImageBatch(items, pixels, decoded)


def iter_batches(paths: Sequence[str], preprocess: Callable, batch_size: int = 32, workers: int | None = None,
                 options: DecodeOptions = DecodeOptions(), pin_memory: bool = False) -> Iterator[ImageBatch]:
    """Batches in input order."""
    dataset = ImageFolderDataset(paths, preprocess, options)
    workers = default_workers() if workers is None else workers
    if len(paths) <= batch_size:  # one batch: starting worker processes would cost more than it saves
        workers = 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, prefetch_factor=4 if workers else None, persistent_workers=False)
    yield from loader


def encode_images(model, pixels: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
    """L2-normalised float32 image embeddings."""
    with torch.inference_mode():
        features = model.encode_image(pixels.to(device=device, dtype=dtype, non_blocking=True))
        return F.normalize(features.float(), dim=-1)
