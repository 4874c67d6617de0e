"""Weak and strong augmentations of raw feature rows, for consistency training on the pool.

Images (``meta["feature_shape"]`` of ``[C, H, W]``, small grayscale or RGB): the weak view is a random
translation by up to 1/8 of the side (FixMatch's weak view without its horizontal flip, which would
turn digits and text into other symbols); the strong view adds a random rotation, shear and scale,
a brightness and contrast change and a Cutout square (DeVries & Taylor, arXiv:1708.04552), in the
spirit of RandAugment (Cubuk et al., NeurIPS 2020) with fixed magnitudes.

Tables (``feature_shape`` of ``[D]``): the weak view adds Gaussian noise of 0.05 standard deviations
of each feature; the strong view replaces a random 20% of the features by their mean (feature
dropout) and adds noise of 0.2 standard deviations. Standard deviations come from the rows given.

Written with torch's own ``affine_grid``/``grid_sample`` rather than torchvision: torchvision pins
another torch than the one this project is built on. Every function maps ``(N, D)`` float32 rows to
``(N, D)`` rows in the same value range, on the rows' device, drawing from ``generator``.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

WEAK_SHIFT = 0.125            # of the image side
STRONG_ROTATION_DEG = 20.0
STRONG_SHEAR = 0.2
STRONG_SCALE = (0.9, 1.1)
CUTOUT_FRACTION = 0.4         # side of the Cutout square, of the image side
TABLE_WEAK_NOISE, TABLE_STRONG_NOISE, TABLE_DROPOUT = 0.05, 0.2, 0.2


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=generator)).to(like.device, like.dtype)


def _warp(images: torch.Tensor, theta: torch.Tensor, fill: float) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` resampled through the affine maps ``theta`` ``(N, 2, 3)``; pixels
    from outside the image take ``fill`` (the low end of the value range: the background)."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = images - fill
    return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def _translations(n: int, like: torch.Tensor, generator: torch.Generator, shift: float) -> torch.Tensor:
    theta = torch.zeros(n, 2, 3, dtype=like.dtype, device=like.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (2 * shift) * (2 * torch.rand(n, 2, generator=generator) - 1).to(like)  # grid units: 2 = side
    return theta


def weak_images(x: torch.Tensor, shape: list[int], low: float, generator: torch.Generator) -> torch.Tensor:
    images = x.reshape(len(x), *shape)
    return _warp(images, _translations(len(x), x, generator, WEAK_SHIFT), low).reshape(len(x), -1)


def strong_images(x: torch.Tensor, shape: list[int], low: float, high: float,
                  generator: torch.Generator) -> torch.Tensor:
    n = len(x)
    angle = _uniform(n, -STRONG_ROTATION_DEG, STRONG_ROTATION_DEG, x, generator) * (math.pi / 180)
    shear = _uniform(n, -STRONG_SHEAR, STRONG_SHEAR, x, generator)
    scale = _uniform(n, *STRONG_SCALE, x, generator)
    theta = _translations(n, x, generator, WEAK_SHIFT)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin + shear
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    images = _warp(x.reshape(n, *shape), theta, low)
    # brightness and contrast around the image mean, kept in range
    contrast = _uniform(n, 0.6, 1.4, x, generator).view(n, 1, 1, 1)
    brightness = _uniform(n, -0.2, 0.2, x, generator).view(n, 1, 1, 1) * (high - low)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast + mean + brightness).clamp(low, high)
    return cutout(images, low, generator).reshape(n, -1)


def cutout(images: torch.Tensor, fill: float, generator: torch.Generator) -> torch.Tensor:
    """One square of side ``CUTOUT_FRACTION`` of the image, at a random centre, set to ``fill``."""
    n, _, h, w = images.shape
    side_h, side_w = max(1, round(CUTOUT_FRACTION * h)), max(1, round(CUTOUT_FRACTION * w))
    cy = torch.randint(0, h, (n,), generator=generator).to(images.device)
    cx = torch.randint(0, w, (n,), generator=generator).to(images.device)
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    inside = ((rows - cy.view(n, 1, 1)).abs() <= side_h // 2) & ((cols - cx.view(n, 1, 1)).abs() <= side_w // 2)
    return images.masked_fill(inside.unsqueeze(1), fill)


def weak_table(x: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + TABLE_WEAK_NOISE * std * torch.randn(x.shape, generator=generator).to(x)


def strong_table(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    dropped = torch.rand(x.shape, generator=generator).to(x.device) < TABLE_DROPOUT
    x = torch.where(dropped, mean.expand_as(x), x)
    return x + TABLE_STRONG_NOISE * std * torch.randn(x.shape, generator=generator).to(x)


class Augmenter:
    """The weak and strong views of one dataset's rows (images or a table, by ``meta``).

    ``reference`` ``(M, D)``: rows whose per-feature mean and standard deviation scale the table
    noise (the labelled set and the pool together); unused for images.
    """

    def __init__(self, meta: dict, reference: torch.Tensor, seed: int):
        shape = list(meta["feature_shape"])
        self.images = len(shape) == 3
        self.shape = shape
        self.low, self.high = meta.get("value_range") or (0.0, 1.0)
        self.mean = reference.mean(0, keepdim=True)
        self.std = reference.std(0, keepdim=True).clamp_min(1e-6) if len(reference) > 1 else torch.ones_like(self.mean)
        self.generator = torch.Generator().manual_seed(seed)

    def weak(self, x: torch.Tensor) -> torch.Tensor:
        if self.images:
            return weak_images(x, self.shape, float(self.low), self.generator)
        return weak_table(x, self.std.to(x), self.generator)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        if self.images:
            return strong_images(x, self.shape, float(self.low), float(self.high), self.generator)
        return strong_table(x, self.mean.to(x), self.std.to(x), self.generator)
