"""The batch pipeline: decode + preprocess in worker processes, encode batches on the model's thread.

Decoding runs in torch DataLoader workers (prefetching a few batches ahead), so
the model never waits for JPEG decoding; with workers=0, or when there are too
few images to be worth starting workers, everything runs in this process.
A file that fails to decode becomes an error item in its batch, in order.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .batches import DecodeLimits, ImageBatch, decode_one, default_workers, make_batch


class ImageFolderDataset(torch.utils.data.Dataset):
    """Map-style dataset over paths: (path, pixels or None, error or None, (width, height) or None)."""

    def __init__(self, paths: Sequence[str], preprocess: Callable, options: DecodeLimits) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.options = options

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return decode_one(self.paths[index], self.preprocess, self.options)


def collate(samples) -> ImageBatch:
    return make_batch(samples, torch.stack)


def iter_batches(paths: Sequence[str], preprocess: Callable, batch_size: int = 32, workers: int | None = None,
                 options: DecodeLimits = DecodeLimits(), pin_memory: bool = False) -> Iterator[ImageBatch]:
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
