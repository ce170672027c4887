"""Occlusion (Zeiler & Fergus 2014): how much the target logit drops when a patch is hidden.

A model-agnostic check on gradient maps: it needs only forward passes, so it sees what the
model does with large changes of the input, not its local slope.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import nn

from trustmap.errors import ConfigError
from trustmap.explain.core import PASS_SIZE, Target, selected
from trustmap.explain.gradient import prepare


def _positive(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def _starts(size: int, window: int, stride: int) -> torch.Tensor:
    """Window positions along one axis, Captum's: 0, stride, ... until the axis is covered; the
    last window may stick out past the border and is then cut off there."""
    return torch.arange(math.ceil((size - window) / stride) + 1) * stride


def window_masks(height: int, width: int, window: int, stride: int,
                 device: torch.device | None = None) -> torch.Tensor:
    """Every window position's pixels as a bool mask [P, H, W] (rows before columns)."""
    rows, cols = torch.arange(height), torch.arange(width)
    top, left = _starts(height, window, stride), _starts(width, window, stride)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + window)  # [Ph, H]
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + window)  # [Pw, W]
    masks = in_rows[:, None, :, None] & in_cols[None, :, None, :]
    return masks.flatten(0, 1).to(device)


def occlusion(model: nn.Module, x: torch.Tensor, target: Target, *, window: int = 4,
              stride: int = 2, baseline: float = 0.0, chunk_size: int = PASS_SIZE
              ) -> torch.Tensor:
    """Mean drop of the target logit over the windows covering each pixel.

    A `window`x`window` patch on all channels is set to `baseline` (image units), moved by
    `stride` from the top-left corner until the image is covered, as Captum's Occlusion with
    ``sliding_window_shapes=(C, window, window), strides=(C, stride, stride)`` does. The
    occluded copies of all inputs run under no_grad in passes of at most `chunk_size` images.
    The map is the same on every channel.
    """
    x, targets = prepare(model, x, target)
    window, stride = _positive("window", window), _positive("stride", stride)
    chunk_size = _positive("chunk_size", chunk_size)
    height, width = x.shape[-2:]
    if window > min(height, width):
        raise ConfigError(f"window {window} is larger than the images ({height}x{width}); "
                          "use a smaller window")
    if stride > window and max(height, width) > window:
        raise ConfigError(f"stride {stride} is larger than window {window}, so some pixels "
                          "would never be occluded; use stride <= window")
    if isinstance(baseline, bool) or not isinstance(baseline, Real) or not math.isfinite(baseline):
        raise ConfigError(f"baseline must be a finite number (image units), got {baseline!r}")
    masks = window_masks(height, width, window, stride, x.device)
    n, count = len(x), len(masks)
    windows_per_pass, items_per_pass = max(1, chunk_size // n), min(n, chunk_size)
    hidden = masks[:, None, None]  # [P, 1, 1, H, W]: broadcasts over inputs and channels
    drops = torch.empty(count, n, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        clean = selected(model(x), targets)
        for first in range(0, count, windows_per_pass):
            hide = hidden[first:first + windows_per_pass]
            for start in range(0, n, items_per_pass):
                rows = slice(start, start + items_per_pass)
                occluded = torch.where(hide, float(baseline), x[rows]).flatten(0, 1)
                scores = selected(model(occluded), targets[rows].repeat(len(hide)))
                drops[first:first + len(hide), rows] = clean[rows] - scores.view(len(hide), -1)
    flat = masks.flatten(1).to(x.dtype)  # [P, H*W]
    maps = (drops.T @ flat).div_(flat.sum(0))  # every pixel is covered: stride <= window
    return maps.view(n, 1, height, width).expand(-1, x.shape[1], -1, -1).contiguous()
