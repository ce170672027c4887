"""The one in-memory form every data source is turned into.

Images are float32 [N, C, H, W] in [0, 1] and labels int64 [N] (-1: no label), whatever the
source; a ``Dataset`` checks this when it is made, so a bad array fails where it enters, with
its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from trustmap.errors import DataError

SPLITS = ("train", "test")
LAYOUTS = ("nchw", "nhwc")
"""How a 4-D image array orders its axes: channels before or after height and width."""


def check_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Validate a batch of images given to the API; return it unchanged.

    Raises DataError for a wrong type, shape or dtype, an empty batch, NaN/inf, or values
    outside [0, 1] — the convention every trustmap model's normalisation layer assumes.
    """
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{what}: expected a torch.Tensor, got {type(images).__name__}; "
                        "convert with torch.as_tensor(array, dtype=torch.float32)")
    if images.ndim != 4:
        raise DataError(f"{what}: expected shape [N, C, H, W], got {list(images.shape)}; "
                        "add a channel axis with images.unsqueeze(1) for gray images")
    if images.shape[0] == 0:
        raise DataError(f"{what}: the batch is empty (shape {list(images.shape)})")
    if images.dtype != torch.float32:
        raise DataError(f"{what}: expected float32, got {images.dtype}; "
                        "scale uint8 images with images.float() / 255")
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = int((~finite).flatten(1).any(1).sum())
        raise DataError(f"{what}: {bad} image(s) contain NaN or inf values; "
                        "remove or repair them before passing them in")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{what}: values must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; "
                        "trustmap models normalise internally, so pass unnormalised images "
                        "scaled to [0, 1]")
    return images


@dataclass(frozen=True)
class Dataset:
    """An image set with a record of where it came from and what was done to it.

    Labels are int64 in [-1, K): -1 marks an image without a label. A set whose labels are all
    -1 is *unlabelled* (production images to audit, an OOD set); it may have no class names
    (``classes=()``). Code that needs labels (training, accuracy) checks ``labelled`` first.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        what = f"dataset {self.name!r} ({self.split})"
        check_images(self.images, f"{what} images")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64:
            raise DataError(f"{what}: labels must be an int64 torch.Tensor")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{what}: {self.images.shape[0]} images but labels of shape "
                            f"{list(self.labels.shape)}; each image needs exactly one label")
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if not self.classes and hi != -1:
            raise DataError(f"{what}: no class names given; only an unlabelled set (every "
                            "label -1) may have none")
        if lo < -1 or hi >= len(self.classes):
            raise DataError(f"{what}: labels span [{lo}, {hi}] but there are "
                            f"{len(self.classes)} classes; labels must lie in "
                            f"[-1, {len(self.classes)}), -1 meaning no label")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def labelled(self) -> bool:
        """True when every image has a label (none is -1): only then can it be trained on or
        scored for accuracy."""
        return bool((self.labels >= 0).all())

    def subset(self, index: torch.Tensor | np.ndarray | slice, note: str | None = None) -> Dataset:
        """The samples at ``index``, with the selection recorded in the provenance."""
        if isinstance(index, np.ndarray):
            index = torch.as_tensor(index)
        steps = list(self.provenance.get("transforms", []))
        if note:
            steps.append(note)
        return replace(self, images=self.images[index], labels=self.labels[index],
                       provenance={**self.provenance, "transforms": steps})


def to_nchw(images: np.ndarray, layout: str, what: str) -> np.ndarray:
    """A 4-D image array in ``layout`` ('nchw' or 'nhwc') as an [N, C, H, W] view, C in (1, 3).

    The layout is never guessed from the shape here: N x 32 x 32 x 3 read as NCHW would be 32
    channels of 32 x 3 pixels, so a channel count other than 1 or 3 is an error that names the
    other layout.
    """
    if layout not in LAYOUTS:
        raise DataError(f"{what}: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    nchw = images.transpose(0, 3, 1, 2) if layout == "nhwc" else images
    if nchw.shape[1] not in (1, 3):
        other = LAYOUTS[1 - LAYOUTS.index(layout)]
        raise DataError(f"{what}: shape {list(images.shape)} read as {layout.upper()} has "
                        f"{nchw.shape[1]} channels, but images have 1 (gray) or 3 (RGB); "
                        f"if the array is {other.upper()}, pass layout={other!r}")
    return nchw


def from_uint8(
    name: str,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    provenance: dict[str, Any],
    layout: str = "nchw",
) -> Dataset:
    """Build a Dataset from uint8 images (0..255) and integer labels.

    ``images`` is [N, H, W] (gray) or 4-D in ``layout``: 'nchw' (the default) or 'nhwc'.
    """
    what = f"dataset {name!r} ({split})"
    if images.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 pixels, got {images.dtype}")
    if images.ndim not in (3, 4):
        raise DataError(f"{what}: expected images [N, H, W] or 4-D [N, C, H, W] / [N, H, W, C], "
                        f"got shape {list(images.shape)}")
    images = images[:, None] if images.ndim == 3 else to_nchw(images, layout, what)
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    steps = list(provenance.get("transforms", [])) + ["uint8 / 255 -> float32 in [0, 1]"]
    return Dataset(name=name, split=split, images=tensor,
                   labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                   classes=tuple(classes), provenance={**provenance, "transforms": steps})
