"""Named, recorded transforms: 32x32 colour to MNIST-like 28x28 gray, resizing, and ``conform``.

The choice of crop changes OOD results, so it is explicit and goes into a dataset's provenance;
so does every step ``conform`` takes to give a set a model's channels and size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from trustmap.data.dataset import Dataset
from trustmap.errors import DataError

Crop = Literal["center", "resize", "seed000"]
CROPS: tuple[str, ...] = ("center", "resize", "seed000")
FITS: tuple[str, ...] = ("stretch", "crop")
"""How ``conform`` meets another aspect ratio: stretch the whole image, or crop its centre."""
RESIZE_CHUNK = 256
"""Images resized at once: bounds the interpolation's intermediate buffers, not the result."""
MAX_SIDE = 1 << 14
"""16,384: the largest height or width a resize may ask for (a typo such as 28000 fails at once)."""

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


def check_size(size: Any, what: str) -> tuple[int, int]:
    """``size`` as (height, width), two ints in 1..MAX_SIDE; a DataError naming ``what`` if not."""
    ok = (isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                  and 0 < v <= MAX_SIDE for v in size))
    if not ok:
        raise DataError(f"{what} must be [height, width], two integers in 1..{MAX_SIDE}, "
                        f"got {size!r}; e.g. [32, 32]")
    return int(size[0]), int(size[1])


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float [N, C, H, W] in [0, 1] -> [N, C, *size]: bilinear, antialiased when shrinking.

    Done RESIZE_CHUNK images at a time into one preallocated result; clamped to [0, 1], as
    float rounding can step just outside it.
    """
    out = images.new_empty((images.shape[0], images.shape[1], *size))
    for start in range(0, images.shape[0], RESIZE_CHUNK):
        out[start:start + RESIZE_CHUNK] = F.interpolate(
            images[start:start + RESIZE_CHUNK], size=size, mode="bilinear", antialias=True,
            align_corners=False).clamp_(0.0, 1.0)
    return out


def luma(images: torch.Tensor) -> torch.Tensor:
    """float RGB [N, 3, H, W] -> gray [N, 1, H, W] = 0.299R + 0.587G + 0.114B (no rounding)."""
    weights = torch.as_tensor(GRAY_WEIGHTS, dtype=images.dtype)
    return torch.einsum("nchw,c->nhw", images, weights).clamp_(0.0, 1.0).unsqueeze(1)


def _centre_crop(images: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, str | None]:
    """The largest central region of ``size``'s aspect ratio, and its step (None if whole)."""
    height, width = images.shape[-2:]
    if height * size[1] > width * size[0]:  # taller than the target: cut rows
        crop_h, crop_w = max(1, round(width * size[0] / size[1])), width
    else:
        crop_h, crop_w = height, max(1, round(height * size[1] / size[0]))
    if (crop_h, crop_w) == (height, width):
        return images, None
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return (images[:, :, top:top + crop_h, left:left + crop_w],
            f"conform: centre crop {height}x{width} -> {crop_h}x{crop_w} (the aspect ratio of "
            f"{size[0]}x{size[1]})")


def conform(dataset: Dataset, channels: int | None = None,
            size: Sequence[int] | None = None, fit: str = "stretch") -> Dataset:
    """``dataset`` with ``channels`` (1 or 3) and ``size`` [height, width], each step recorded.

    For a set whose images differ from a model's input (an OOD set, a user's audit set). It is
    never applied implicitly: the caller asks for it, and provenance["transforms"] says what was
    done. gray -> RGB repeats the channel; RGB -> gray is ITU-R BT.601 luma (GRAY_WEIGHTS, as
    ``to_gray``); resizing is bilinear and antialiased. ``fit`` decides another aspect ratio:
    'stretch' resizes the whole image (shapes distort), 'crop' first cuts the largest central
    region of the target's aspect ratio (nothing distorts, the borders are lost).
    """
    what = f"conform dataset {dataset.name!r}"
    have = dataset.in_channels
    if have not in (1, 3) or (channels is not None and channels not in (1, 3)):
        raise DataError(f"{what}: cannot convert {have} channel(s) to {channels}; only gray (1) "
                        "and RGB (3) convert into each other")
    if fit not in FITS:
        raise DataError(f"{what}: unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    target = check_size(size, f"{what}: size") if size is not None else None
    images, steps = dataset.images, []
    if channels == 1 and have == 3:  # shrink before resizing: a third of the work
        images = luma(images)
        steps.append("conform: RGB -> gray = 0.299R + 0.587G + 0.114B (ITU-R BT.601 luma)")
    if target is not None and tuple(images.shape[-2:]) != target:
        if fit == "crop":
            images, step = _centre_crop(images, target)
            if step:
                steps.append(step)
        if tuple(images.shape[-2:]) != target:
            before = "x".join(map(str, images.shape[-2:]))
            images = resize(images, target)
            steps.append(f"conform: resize {before} -> {target[0]}x{target[1]} (bilinear, "
                         "antialiased)")
    if channels == 3 and have == 1:  # grow after resizing, for the same reason
        images = images.expand(-1, 3, -1, -1).contiguous()
        steps.append("conform: gray -> RGB by repeating the gray channel (R = G = B)")
    if not steps:
        return dataset
    provenance = {**dataset.provenance,
                  "transforms": [*dataset.provenance.get("transforms", []), *steps]}
    return replace(dataset, images=images, provenance=provenance)
