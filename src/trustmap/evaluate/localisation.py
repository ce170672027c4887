"""Localisation: does a map put its relevance where the evidence is known to be?

Seed 002's measure. Only positive relevance counts (evidence *for* the explained class); each
sample's positive relevance is normalised to sum 1 and the share that falls inside the known
region (a mask) is its score. A map that ignores the image scores the region's area fraction
(2/3 for the 3-item majority task), so that area is the chance level.
"""

from __future__ import annotations

import torch

from trustmap.errors import DataError


def _checked(maps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(maps, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise DataError("maps and mask must be tensors")
    if maps.shape != mask.shape or maps.ndim != 4:
        raise DataError(f"maps {list(maps.shape)} and mask {list(mask.shape)} must both be "
                        "[N, C, H, W] of the same shape; pass the mask of the same inputs")
    if not bool(torch.isfinite(maps).all()):
        raise DataError("maps contain NaN or inf values; their relevance shares are undefined")
    return maps.float().clamp(min=0), mask.to(maps.device, torch.bool)


def region_share(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample, the share of positive relevance inside ``mask``, [N] in [0, 1].

    NaN for a sample with no positive relevance at all: it says nothing about where the
    evidence is, so it is left out of means (``torch.nanmean``) rather than scored 0.
    """
    positive, inside = _checked(maps, mask)
    total = positive.flatten(1).sum(1)
    share = (positive * inside).flatten(1).sum(1) / total
    return torch.where(total > 0, share, torch.full_like(share, float("nan")))


def column_shares(maps: torch.Tensor, width: int) -> torch.Tensor:
    """Relevance per strip of ``width`` columns (a recurrent model's step): the strip's signed
    sum, its positive part, normalised to sum 1 per sample, [N, W / width]; NaN rows where no
    strip has positive relevance."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[-1] % width:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise DataError(f"maps {shape} are not [N, C, H, W] with W a multiple of {width}")
    per_strip = maps.float().unflatten(3, (-1, width)).sum((1, 2, 4)).clamp(min=0)
    total = per_strip.sum(1, keepdim=True)
    return torch.where(total > 0, per_strip / total, torch.full_like(per_strip, float("nan")))


def strip_region_share(maps: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """Seed 002's score: relevance summed per strip (step), positive part, normalised; the
    share of the strips inside ``mask`` (a strip counts as inside when its first column is),
    [N]; NaN where no strip has positive relevance."""
    _, inside = _checked(maps, mask)
    shares = column_shares(maps, width)
    in_region = inside[:, :, :, ::width].any(1).any(1)  # [N, strips]
    return (shares * in_region).sum(1)
