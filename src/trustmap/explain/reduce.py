"""Reducers: the named steps that turn signed attribution maps into what a figure or metric needs.

Methods return raw signed maps; taking magnitudes, collapsing channels and scaling are separate,
explicit steps, so a study states exactly which it applied. Every reducer takes maps
[N, C, H, W] or a stack of them [S, N, C, H, W] and works per map, batched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import torch

from trustmap.errors import ConfigError, DataError

Reducer = Callable[[torch.Tensor], torch.Tensor]


def _checked(maps: torch.Tensor) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or maps.ndim not in (4, 5):
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise DataError(f"maps must be a tensor [N, C, H, W] or [S, N, C, H, W], got {shape}")
    return maps


def absolute(maps: torch.Tensor) -> torch.Tensor:
    """|a|: importance regardless of the direction of the effect."""
    return _checked(maps).abs()


def square(maps: torch.Tensor) -> torch.Tensor:
    """a²: magnitude that stresses the strongest pixels."""
    return _checked(maps).square()


def positive(maps: torch.Tensor) -> torch.Tensor:
    """max(a, 0): only evidence for the explained class."""
    return torch.relu(_checked(maps))


def sum_channels(maps: torch.Tensor) -> torch.Tensor:
    """Sum over the channel axis, kept with size 1: one value per pixel."""
    return _checked(maps).sum(dim=-3, keepdim=True)


def max_channels(maps: torch.Tensor) -> torch.Tensor:
    """Maximum over the channel axis, kept with size 1 (usually after absolute)."""
    return _checked(maps).amax(dim=-3, keepdim=True)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """(a - min) / (max - min) per map (over C, H, W), so maps compare on [0, 1]; a constant
    map becomes 0."""
    maps = _checked(maps)
    low = maps.amin(dim=(-3, -2, -1), keepdim=True)
    span = maps.amax(dim=(-3, -2, -1), keepdim=True) - low
    # A constant map has maps - low == 0, so dividing by 1 there gives 0.
    return (maps - low) / torch.where(span > 0, span, torch.ones_like(span))


REDUCERS: Mapping[str, Reducer] = MappingProxyType({
    "absolute": absolute,
    "square": square,
    "positive": positive,
    "sum_channels": sum_channels,
    "max_channels": max_channels,
    "minmax": minmax,
})
"""Read-only view: reducer name -> function."""


def reduce(maps: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Apply the named reducers in order, e.g. ``reduce(maps, ["absolute", "max_channels"])``."""
    if isinstance(names, str):
        raise ConfigError(f"names must be a list of reducer names, got the string {names!r}; "
                          f"write [{names!r}]")
    unknown = [name for name in names if name not in REDUCERS]
    if unknown:
        raise ConfigError(f"unknown reducer(s) {', '.join(map(repr, unknown))}; known reducers: "
                          f"{', '.join(REDUCERS)}")
    maps = _checked(maps)
    for name in names:
        maps = REDUCERS[name](maps)
    return maps
