"""Named, recorded transforms that turn 32x32 colour images into MNIST-like 28x28 gray.

The choice of crop changes OOD results, so it is explicit and goes into a dataset's provenance.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from trustmap.errors import DataError

Crop = Literal["center", "resize", "seed000"]
CROPS: tuple[str, ...] = ("center", "resize", "seed000")

# ITU-R BT.601 luma, as seed 000 used.
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def to_gray(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 3, H, W] -> uint8 [N, H, W] with gray = 0.299R + 0.587G + 0.114B (rounded)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"to_gray expects [N, 3, H, W] colour images, got {list(images.shape)}")
    gray = np.tensordot(GRAY_WEIGHTS, images.astype(np.float64), axes=([0], [1]))
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def crop_to_28(images: np.ndarray, crop: str = "center") -> np.ndarray:
    """uint8 [N, H, W] 32x32 -> [N, 28, 28].

    ``center`` drops 2 rows/columns on each side; ``seed000`` reproduces seed 000's
    ``crop_32_to_28``, which drops rows/columns 0, 1, 29 and 31 (asymmetric, kept for
    reproducing that study); ``resize`` scales the whole image (bilinear, antialiased), batched.
    """
    if crop not in CROPS:
        raise DataError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")
    if images.ndim != 3 or images.shape[1:] != (32, 32):
        raise DataError(f"crop_to_28 expects [N, 32, 32] images, got {list(images.shape)}")
    if crop == "center":
        return np.ascontiguousarray(images[:, 2:30, 2:30])
    if crop == "seed000":
        keep = np.array([i for i in range(32) if i not in (0, 1, 29, 31)])
        return np.ascontiguousarray(images[:, keep][:, :, keep])
    small = F.interpolate(torch.from_numpy(images[:, None]).float(), size=(28, 28),
                          mode="bilinear", antialias=True, align_corners=False)
    return small[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def colour32_to_gray28(images: np.ndarray, crop: str = "center") -> tuple[np.ndarray, list[str]]:
    """uint8 [N, 3, 32, 32] -> uint8 [N, 28, 28], and the transform steps for the provenance."""
    gray = crop_to_28(to_gray(images), crop)
    return gray, ["gray = 0.299R + 0.587G + 0.114B", f"32x32 -> 28x28 by crop={crop!r}"]
