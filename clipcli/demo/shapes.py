"""Procedurally drawn coloured shapes: the world the demo model was trained on.

Drawing is vectorised in torch (signed masks on a supersampled grid), so a
training step can draw a fresh batch in milliseconds.  The same code draws the
images the tests and the README classify, so they come from one definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 35),
    "green": (35, 165, 50),
    "blue": (35, 75, 225),
    "purple": (125, 40, 175),
    "pink": (250, 125, 195),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "diamond")

# Combinations never drawn during training: zero-shot transfer to unseen concepts.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("blue", "star"),
    ("yellow", "heart"),
    ("green", "triangle"),
    ("pink", "cross"),
)


def label(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def all_labels() -> list[str]:
    return [label(c, s) for c in COLOURS for s in SHAPES]


def seen_labels() -> list[str]:
    held = {label(c, s) for c, s in HELD_OUT}
    return [name for name in all_labels() if name not in held]


def held_out_labels() -> list[str]:
    return [label(c, s) for c, s in HELD_OUT]


@dataclass(frozen=True)
class Style:
    """How shapes are drawn.  `TRAINING` is the training distribution; `SHIFTED` draws
    sizes, shades and backgrounds outside it, to test robustness."""

    radius: tuple[float, float] = (0.16, 0.36)  # fraction of the image side
    shade_jitter: float = 22.0  # +- per RGB channel
    gradient_prob: float = 0.3  # share of backgrounds that are a two-tone gradient
    background_level: tuple[float, float] = (0.05, 0.55)
    background_saturation: float = 0.25
    noise: float = 6.0
    outline: float = 0.0  # > 0: only a band this fraction of the radius wide is drawn (outlined shapes)


TRAINING = Style()
SHIFTED = Style(radius=(0.12, 0.44), shade_jitter=34.0, gradient_prob=1.0, background_level=(0.0, 0.6),
                background_saturation=0.8, noise=10.0)
# Far from training: small shapes on saturated gradients under heavy noise (where zero-shot is weak, for few-shot)
# Outlined shapes on plain light backgrounds: clean, but never seen in training (zero-shot weak, few shots informative)
OUTLINE = Style(radius=(0.2, 0.4), gradient_prob=0.0, background_level=(0.75, 0.95), background_saturation=0.1,
                outline=0.22)
NOISY = Style(radius=(0.08, 0.2), shade_jitter=45.0, gradient_prob=1.0, background_level=(0.0, 0.75),
              background_saturation=0.9, noise=55.0)


def _shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test in the shape's own frame: u right, v up, unit circumradius."""
    r = torch.sqrt(u * u + v * v)
    if shape == "circle":
        return r <= 1.0
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.6)
    if shape == "square":
        return (u.abs() <= 0.8) & (v.abs() <= 0.8)
    if shape == "diamond":
        return u.abs() / 0.8 + v.abs() <= 1.0
    if shape == "cross":
        arm = 0.32
        return ((u.abs() <= arm) & (v.abs() <= 1.0)) | ((v.abs() <= arm) & (u.abs() <= 1.0))
    if shape == "triangle":
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):  # regular triangle, apex up: edge normals point down and to the sides
            angle = -math.pi / 2 + k * 2 * math.pi / 3
            inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.5
        return inside
    if shape == "star":
        phi = torch.atan2(v, u) - math.pi / 2
        period = 2 * math.pi / 5
        frac = torch.remainder(phi, period) / period
        tip = 1.0 - (frac - 0.5).abs() * 2.0  # 0 at a point, 1 between points
        return r <= 1.0 - 0.58 * tip
    if shape == "heart":
        x, y = u * 1.15, v * 1.15 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    raise ValueError(f"unknown shape {shape!r}")


def _backgrounds(n: int, size: int, style: Style, gen: torch.Generator) -> torch.Tensor:
    lo, hi = style.background_level

    def tone() -> torch.Tensor:
        level = lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen)
        tint = 1.0 + style.background_saturation * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 2
        return (level * tint).clamp(0, 1)

    first, second = tone(), tone()
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    angle = torch.rand(n, 1, 1, 1, generator=gen) * 2 * math.pi
    ramp = (axis.view(1, 1, 1, size) * angle.cos() + axis.view(1, 1, size, 1) * angle.sin()) / math.sqrt(0.5) + 0.5
    use_gradient = (torch.rand(n, 1, 1, 1, generator=gen) < style.gradient_prob).float()
    ramp = ramp.clamp(0, 1) * use_gradient
    return (first * (1 - ramp) + second * ramp) * 255.0


def draw(colours: Sequence[str], shapes: Sequence[str], size: int = 64, style: Style = TRAINING,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one image per (colour, shape) pair: uint8 tensor [N, 3, size, size]."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = len(colours)
    ss = 2  # supersampling factor for antialiased edges
    grid = (torch.arange(size * ss, dtype=torch.float32) + 0.5) / (size * ss)
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")

    rmin, rmax = style.radius
    radius = rmin + (rmax - rmin) * torch.rand(n, generator=gen)
    margin = radius + 0.02
    cx = margin + (1 - 2 * margin) * torch.rand(n, generator=gen)
    cy = margin + (1 - 2 * margin) * torch.rand(n, generator=gen)
    tilt = (torch.rand(n, generator=gen) - 0.5) * math.radians(20)

    masks = torch.empty(n, 1, size * ss, size * ss)
    for i in range(n):
        dx, dy = (gx - cx[i]) / radius[i], (cy[i] - gy) / radius[i]
        c, s = math.cos(tilt[i]), math.sin(tilt[i])
        u, v = c * dx + s * dy, -s * dx + c * dy
        mask = _shape_mask(shapes[i], u, v)
        if style.outline:
            mask = mask & ~_shape_mask(shapes[i], u / (1 - style.outline), v / (1 - style.outline))
        masks[i, 0] = mask.float()
    coverage = F.avg_pool2d(masks, ss)

    rgb = torch.tensor([COLOURS[c] for c in colours], dtype=torch.float32).view(n, 3, 1, 1)
    rgb = rgb + (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 2 * style.shade_jitter
    image = _backgrounds(n, size, style, gen) * (1 - coverage) + rgb * coverage
    image = image + torch.randn(image.shape, generator=gen) * style.noise
    return image.clamp(0, 255).round().to(torch.uint8)


def draw_pil(colour: str, shape: str, size: int = 64, style: Style = TRAINING, seed: int = 0):
    """One drawn image as a PIL image (for files, tests and the README example)."""
    from PIL import Image

    tensor = draw([colour], [shape], size=size, style=style, generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(tensor[0].permute(1, 2, 0).numpy(), "RGB")
