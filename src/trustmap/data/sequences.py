"""3-item majority sequences (seed 002): the evidence for the label sits in a known place.

Each sample of class c is three 28x28 items side by side, in a random order: the base
dataset's item itself, another item of class c and an item of another class. The label is c,
the class that appears twice, so the two class-c blocks are the *data region*: where a good
explanation of the prediction puts its relevance (2/3 of the image, so chance is 2/3).

Built from any base dataset of 28x28 images with batched index arithmetic (no loop over
samples), deterministic given the seed; images stay in [0, 1] like every trustmap image.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch

from trustmap.data.dataset import Dataset
from trustmap.errors import DataError

ITEMS = 3
ITEM_SIZE = 28
ORIGINAL, SAME_CLASS, OTHER_CLASS = 0, 1, 2
"""The three items of a sample, as numbered in ``MajoritySequences.slots``."""

SUFFIX = "-3-maj"
ALIASES = {"mnist-3-maj": "mnist", "fashion-3-maj": "fashion-mnist"}
"""Seed 002's names for the sets built from full MNIST and Fashion-MNIST."""


@dataclass(frozen=True)
class MajoritySequences:
    """The sequence dataset and, per sample, where its three items went."""

    dataset: Dataset
    """Images [N, C, 28, 84] in [0, 1], labels c."""
    slots: torch.Tensor
    """[N, 3] int64: the block (0 left, 1 middle, 2 right) of the original item, the other
    class-c item and the other-class item."""
    sources: torch.Tensor
    """[N, 3] int64: the base dataset's indices of the same three items."""

    @property
    def block_is_data(self) -> torch.Tensor:
        """[N, 3] bool: whether each block (left to right) holds a class-c item."""
        other = self.slots[:, OTHER_CLASS]
        return torch.arange(ITEMS) != other[:, None]

    @property
    def mask(self) -> torch.Tensor:
        """[N, 1, 28, 84] bool: the pixels of the two class-c blocks (the data region)."""
        blocks = self.block_is_data.repeat_interleave(ITEM_SIZE, dim=1)  # [N, 84]
        return blocks[:, None, None, :].expand(-1, 1, ITEM_SIZE, -1)


def _split_seed(seed: int, split: str) -> int:
    """Train and test get different, fixed draws from one seed."""
    return (seed * 1_000_003 + zlib.crc32(split.encode())) % (2 ** 63)


def majority(base: Dataset, seed: int = 0) -> MajoritySequences:
    """Seed 002's 3-item majority task built from ``base`` (28x28 images, >= 2 classes).

    Every class present needs at least two items, so that "another item of class c" exists.
    """
    if tuple(base.images.shape[2:]) != (ITEM_SIZE, ITEM_SIZE):
        raise DataError(f"dataset {base.name!r}: majority sequences combine 28x28 items, got "
                        f"images of {list(base.images.shape[2:])}")
    labels = base.labels
    counts = torch.bincount(labels, minlength=base.num_classes)
    present = counts[counts > 0]
    if len(present) < 2 or int(present.min()) < 2:
        raise DataError(f"dataset {base.name!r} ({base.split}): every class present needs at "
                        f"least 2 items and at least 2 classes are needed, got counts "
                        f"{counts.tolist()}; use a larger subset")
    generator = torch.Generator().manual_seed(_split_seed(seed, base.split))
    n = len(base)
    order = torch.argsort(labels, stable=True)  # indices grouped by class
    starts = torch.cumsum(counts, 0) - counts  # first position of each class in `order`
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[labels[order]]  # position within its class
    own, start = counts[labels], starts[labels]

    # Another item of the same class: a shift of 1..count-1 within the class, never itself.
    shift = 1 + (torch.rand(n, generator=generator) * (own - 1)).long().clamp_max(own - 2)
    same = order[start + (rank + shift) % own]
    # An item of another class: uniform over the n - count positions outside the class.
    pick = (torch.rand(n, generator=generator) * (n - own)).long().clamp_max(n - own - 1)
    other = order[torch.where(pick < start, pick, pick + own)]

    sources = torch.stack([torch.arange(n), same, other], 1)
    slots = torch.rand(n, ITEMS, generator=generator).argsort(1)  # item i goes to block slots[i]
    items_in_blocks = torch.empty_like(sources).scatter_(1, slots, sources)
    images = base.images[items_in_blocks]  # [N, 3, C, 28, 28]
    images = images.permute(0, 2, 3, 1, 4).reshape(n, base.in_channels, ITEM_SIZE,
                                                   ITEMS * ITEM_SIZE)
    step = (f"3-item majority sequences (seed 002): the item, another of its class and one of "
            f"another class, in random order; seed {seed}")
    provenance: dict[str, Any] = {**base.provenance,
                                  "transforms": [*base.provenance.get("transforms", []), step]}
    dataset = Dataset(name=sequence_name(base.name), split=base.split, images=images,
                      labels=labels.clone(), classes=base.classes, provenance=provenance)
    return MajoritySequences(dataset=dataset, slots=slots, sources=sources)


def sequence_name(base: str) -> str:
    """The catalog name of the sequences built from ``base``."""
    for alias, name in ALIASES.items():
        if name == base:
            return alias
    return base + SUFFIX


def base_name(name: str) -> str | None:
    """The base dataset of a sequence name, or None if ``name`` is not one."""
    if name in ALIASES:
        return ALIASES[name]
    if name.endswith(SUFFIX) and len(name) > len(SUFFIX):
        return name[: -len(SUFFIX)]
    return None
