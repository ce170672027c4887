"""The contract every trustmap classifier keeps, whatever its architecture.

A classifier takes float32 images [N, C, 28, 28] in [0, 1] and returns logits [N, K]. It
carries its input normalisation as its first layer, so datasets never need scaling of their
own and a checkpoint holds the scaling its weights were trained with. It names the layer
Grad-CAM reads and remembers the arguments that rebuild it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import nn

from trustmap.errors import ModelError

INPUT_SIZE = 28
"""Height and width of every input: trustmap crops or resizes every dataset to 28x28."""


def per_channel(arg: str, value: float | Sequence[float], channels: int,
                positive: bool = False) -> list[float]:
    """One finite float per input channel, from a scalar or a list of 1 or `channels` values."""
    values: list[Any] | None
    if isinstance(value, Real):
        values = [value]
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        values = list(value)
    else:
        values = None
    if values is None or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise ModelError(f"{arg} must be a number or a list of numbers, one per input channel; "
                         f"got {value!r}")
    floats = [float(v) for v in values]
    if len(floats) == 1:
        floats *= channels
    if len(floats) != channels:
        raise ModelError(f"{arg} has {len(floats)} values but the model takes {channels} input "
                         f"channel(s); give one value for all channels or one per channel")
    if not all(math.isfinite(v) for v in floats):
        raise ModelError(f"{arg} must be finite, got {value!r}")
    if positive and min(floats) <= 0:
        raise ModelError(f"{arg} must be > 0 in every channel, got {value!r}")
    return floats


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers, so checkpoints carry them."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5,
                 channels: int = 1) -> None:
        super().__init__()
        # The values as given are kept for build_args: exact, and readable without a device.
        self.mean_values = per_channel("mean", mean, channels)
        self.std_values = per_channel("std", std, channels, positive=True)
        # Shape [C, 1, 1] broadcasts over [N, C, H, W] and over a single image [C, H, W].
        self.register_buffer("mean", torch.tensor(self.mean_values).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(self.std_values).view(-1, 1, 1))

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean_values}, std={self.std_values}"


class Classifier(nn.Module):
    """normalize → features → head, with the metadata explanation and checkpoint code needs.

    `features` ends in spatial feature maps; `head` turns them into logits. `gradcam_layer`
    is a key of ``dict(self.named_modules())``, or None where no layer has a spatial map
    Grad-CAM could read (the recurrent models). `build_args` is JSON-serialisable and
    ``trustmap.models.build(**build_args)`` rebuilds the same architecture.
    """

    def __init__(self, name: str, normalize: Normalize, features: nn.Module, head: nn.Module, *,
                 num_classes: int, gradcam_layer: str | None, options: dict[str, Any]) -> None:
        super().__init__()
        self.normalize = normalize  # registered first: the first submodule, by contract
        self.features = features
        self.head = head
        self.name = name
        self.in_channels = normalize.channels
        self.num_classes = num_classes
        self.gradcam_layer = gradcam_layer
        self.build_args: dict[str, Any] = {
            "name": name, "in_channels": self.in_channels, "num_classes": num_classes,
            "mean": list(normalize.mean_values), "std": list(normalize.std_values),
            **options,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, gradcam_layer={self.gradcam_layer!r}"

    @property
    def has_dropout(self) -> bool:
        """Whether MC dropout can sample from this model."""
        return any(isinstance(m, nn.Dropout) for m in self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, INPUT_SIZE, INPUT_SIZE)
        if tuple(x.shape[-3:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ModelError(f"model {self.name!r} takes images [N, {shape}], got "
                             f"{list(x.shape)}; bring the data to that shape, or build "
                             "the model with the data's number of channels as in_channels")
        return self.head(self.features(self.normalize(x)))


def sequential(**layers: nn.Module) -> nn.Sequential:
    """An nn.Sequential whose children have readable names, e.g. ``features.pool2``."""
    return nn.Sequential(OrderedDict(layers))


@contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """Hold the model's 4-D weights channels-last for the duration of a block.

    Convolutions run about 1.5-1.75x faster this way on CPU (oneDNN) and on GPUs; the weights
    go back to the default layout afterwards, so a model outside the block computes exactly
    like the checkpoint it was loaded from. Feed inputs with ``to_channels_last``.
    """
    weights = [p for p in model.parameters() if p.ndim == 4]
    if all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
        yield model  # nested (e.g. validation inside training): the outer block restores
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """The input layout that matches ``channels_last`` weights (4-D tensors only)."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
