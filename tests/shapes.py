"""A generated 32x32 RGB ImageFolder of drawn shapes: a user's own data, made by the tests.

Four classes (circle, cross, square, triangle), each shape drawn in a random colour at a random
place and size on a random dark background, saved as PNG files in ``ROOT/train/<class>/`` and
``ROOT/test/<class>/``; numpy only, batched over images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("circle", "cross", "square", "triangle")


def _masks(kind: str, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean [n, size, size] masks of one shape, random centre and radius per image."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = rng.uniform(size * 0.18, size * 0.32, n)[:, None, None]
    cy = rng.uniform(size * 0.35, size * 0.65, n)[:, None, None]
    cx = rng.uniform(size * 0.35, size * 0.65, n)[:, None, None]
    dy, dx = ys - cy, xs - cx
    if kind == "circle":
        return dy**2 + dx**2 <= radius**2
    if kind == "square":
        return (np.abs(dy) <= radius * 0.8) & (np.abs(dx) <= radius * 0.8)
    if kind == "cross":
        arm = radius * 0.28
        return (((np.abs(dy) <= arm) & (np.abs(dx) <= radius))
                | ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)))
    # triangle, apex up: below the apex, inside two slanted edges, above the base
    return (dy >= -radius) & (dy <= radius * 0.7) & (np.abs(dx) <= (dy + radius) * 0.6)


def shape_images(kind: str, n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3] images of one shape class."""
    rng = np.random.default_rng([seed, CLASSES.index(kind)])
    masks = _masks(kind, n, size, rng)[..., None]
    background = rng.uniform(0, 80, (n, 1, 1, 3))
    colour = rng.uniform(140, 255, (n, 1, 1, 3))
    noise = rng.normal(0, 8, (n, size, size, 3))
    images = np.where(masks, colour, background) + noise
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def write_shapes(root: Path, train_per_class: int = 60, test_per_class: int = 30,
                 size: int = 32, seed: int = 0) -> Path:
    """Write the ImageFolder under ``root`` and return it."""
    for split, n, offset in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for index, image in enumerate(shape_images(kind, n, size, seed * 2 + offset)):
                Image.fromarray(image).save(folder / f"{index:04d}.png")
    return root
