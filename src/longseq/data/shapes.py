"""Procedural image classification where the label is a global shape or layout.

Each image (RGB, ``size`` x ``size``) shows one class-defining figure in a random
colour, position, size and rotation over a random two-colour gradient, plus
small distractor blobs. Colour carries no information: every class draws its
colours from the same distribution, so a model must read shape and layout across
many patches. Classes:

    0 disc      1 square     2 triangle      3 plus sign
    4 ring      5 two discs side by side     6 two discs one above the other
    7 L-shape

Deterministic by seed; the splits use disjoint seed streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASSES = (
    "disc",
    "square",
    "triangle",
    "plus",
    "ring",
    "pair-horizontal",
    "pair-vertical",
    "L-shape",
)
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _rotate(u: np.ndarray, v: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return c * u + s * v, -s * u + c * v


def _figure_mask(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the class figure (size x size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = rng.uniform(0.25, 0.36) * size  # figure scale
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    u, v = _rotate(xx - cx, yy - cy, rng.uniform(0, 2 * np.pi))
    if label == 0:
        return u**2 + v**2 <= r**2
    if label == 1:
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if label == 2:  # equilateral triangle: three half-planes
        m = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = 2 * np.pi * k / 3
            m &= np.cos(a) * u + np.sin(a) * v <= 0.5 * r
        return m
    if label == 3:
        w = 0.3 * r
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if label == 4:
        d2 = u**2 + v**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if label in (5, 6):  # two small discs along a random-jittered axis (not rotated freely)
        rr = 0.5 * r
        jitter = rng.uniform(-0.25, 0.25)
        du, dv = (
            (np.cos(jitter), np.sin(jitter)) if label == 5 else (np.sin(jitter), np.cos(jitter))
        )
        gap = rng.uniform(1.1, 1.6) * r
        a = ((xx - cx - du * gap / 2) ** 2 + (yy - cy - dv * gap / 2) ** 2) <= rr**2
        b = ((xx - cx + du * gap / 2) ** 2 + (yy - cy + dv * gap / 2) ** 2) <= rr**2
        return a | b
    if label == 7:
        w = 0.35 * r
        return ((np.abs(u + r - w) <= w) & (np.abs(v) <= r)) | (
            (np.abs(v - r + w) <= w) & (np.abs(u) <= r)
        )
    raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {label}")


def render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image (3, size, size) float32 in [0, 1]."""
    # background: a two-colour linear gradient in a random direction
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    ang = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(0.5 + (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)), 0, 1)
    img = c0[:, None, None] * (1 - ramp) + c1[:, None, None] * ramp
    img = 0.6 * img + 0.2
    # distractor blobs (smaller than any figure part)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for _ in range(rng.integers(1, 4)):
        bx, by = rng.uniform(0, size, 2)
        blob = (xx - bx) ** 2 + (yy - by) ** 2 <= rng.uniform(1.0, 2.0) ** 2
        img[:, blob] = rng.uniform(0, 1, 3)[:, None]
    # the figure, in a colour far enough from the background
    while True:
        col = rng.uniform(0, 1, 3)
        if np.abs(col - img.mean(axis=(1, 2))).sum() > 0.6:
            break
    mask = _figure_mask(label, size, rng)
    img[:, mask] = col[:, None]
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class ShapesDataset:
    """``n`` images of a split; ``tensors()`` gives (images (n, 3, s, s), labels (n,))."""

    split: str = "train"
    n: int = 4000
    size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {list(SPLIT_SEEDS)}, got {self.split!r}")
        if self.n < 1 or self.size < 16:
            raise ValueError(f"need n >= 1 and size >= 16, got n={self.n}, size={self.size}")

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    def tensors(self, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``progress`` (optional) is called with 1 after each image is drawn."""
        rng = np.random.default_rng([self.seed, SPLIT_SEEDS[self.split]])
        labels = rng.integers(0, len(CLASSES), self.n)
        imgs = []
        for y in labels:
            imgs.append(render(int(y), self.size, rng))
            if progress is not None:
                progress(1)
        return torch.from_numpy(np.stack(imgs)), torch.from_numpy(labels).long()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] images to roughly zero mean, unit variance."""
    return (images - 0.5) / 0.25
