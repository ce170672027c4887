"""The contract every trustmap classifier keeps, whatever its architecture.

A classifier takes float32 images [N, C, H, W] in [0, 1] and returns logits [N, K]. It
carries its input normalisation as its first layer, so datasets never need scaling of their
own and a checkpoint holds the scaling its weights were trained with. It names the layer
Grad-CAM reads, the image size it was built for and the arguments that rebuild it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import nn

from trustmap.errors import ModelError

INPUT_SIZE = 28
"""The image height of the recurrent models and the VAE, and the zoo's default image side."""

DEFAULT_INPUT_SIZE = (INPUT_SIZE, INPUT_SIZE)
"""The [H, W] an image model is built for unless ``input_size`` says otherwise.

A model built for it records no ``input_size`` in its build_args, so its build arguments,
member JSONs and run folders are exactly those of the time when every model was 28x28.
"""


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

    `input_size` is the (H, W) the model was built for (None for the recurrent models, whose
    forward checks its own shapes): an image it surely takes, e.g. for a dry run. Where the
    head's size depends on it (`fixed_size`), forward takes exactly that size; otherwise
    (global pooling) any size of at least `min_size`. `supports_hooks` is False where forward
    hooks cannot be registered on the submodules (a TorchScript model wrapped whole).
    """

    supports_hooks = True

    def __init__(self, name: str, normalize: Normalize, features: nn.Module, head: nn.Module, *,
                 num_classes: int, gradcam_layer: str | None, options: dict[str, Any],
                 input_size: tuple[int, int] | None = None, fixed_size: bool = False,
                 min_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.normalize = normalize  # registered first: the first submodule, by contract
        self.features = features
        self.head = head
        self.name = name
        self.in_channels = normalize.channels
        self.num_classes = num_classes
        self.gradcam_layer = gradcam_layer
        self.input_size = None if input_size is None else (int(input_size[0]),
                                                           int(input_size[1]))
        self.fixed_size = fixed_size and self.input_size is not None
        self.min_size = min_size
        self.build_args: dict[str, Any] = {
            "name": name, "in_channels": self.in_channels, "num_classes": num_classes,
            "mean": list(normalize.mean_values), "std": list(normalize.std_values),
            **options,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, gradcam_layer={self.gradcam_layer!r}"

    @property
    def has_dropout(self) -> bool:
        """Whether MC dropout can sample from this model (it has a Dropout layer of any kind,
        the layers MC dropout switches to training mode)."""
        return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in self.modules())

    def _check_input(self, x: torch.Tensor) -> None:
        """ModelError naming both shapes unless ``x`` is [N, C, H, W] this model takes."""
        shape = tuple(x.shape[-3:])
        channels_ok = x.ndim >= 3 and shape[0] == self.in_channels
        if self.fixed_size:
            assert self.input_size is not None
            expected = (self.in_channels, *self.input_size)
            if channels_ok and shape == expected:
                return
            advice = ("bring the data to that shape, or build the model with the data's "
                      "number of channels as in_channels" if not channels_ok else
                      f"resize the data to {self.input_size[0]}x{self.input_size[1]}, or build "
                      f"the model with input_size={list(shape[1:])} (the data's [H, W])")
            raise ModelError(f"model {self.name!r} takes images "
                             f"[N, {', '.join(map(str, expected))}], got {list(x.shape)}; "
                             f"{advice}")
        if not channels_ok:
            raise ModelError(f"model {self.name!r} takes images [N, {self.in_channels}, H, W], "
                             f"got {list(x.shape)}; bring the data to {self.in_channels} "
                             "channel(s), or build the model with the data's number of "
                             "channels as in_channels")
        if self.min_size is not None and (shape[1] < self.min_size[0]
                                          or shape[2] < self.min_size[1]):
            raise ModelError(f"model {self.name!r} takes images of at least "
                             f"{self.min_size[0]}x{self.min_size[1]} pixels, got "
                             f"{list(x.shape)}; enlarge the data or use another model")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.head(self.features(self.normalize(x)))


def size_pair(input_size: Sequence[int]) -> tuple[int, int]:
    """An (H, W) tuple from an already checked ``input_size``."""
    height, width = input_size
    return int(height), int(width)


def size_option(input_size: tuple[int, int]) -> dict[str, Any]:
    """The build_args entry for ``input_size``: none for the default 28x28 (see
    DEFAULT_INPUT_SIZE), else ``{"input_size": [H, W]}``."""
    return {} if input_size == DEFAULT_INPUT_SIZE else {"input_size": list(input_size)}


def _pair(value: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    raise AssertionError(f"no size arithmetic for a layer setting {value!r}")


def spatial_sizes(layers: nn.Sequential, size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """The (h, w) after each child of ``layers`` for inputs of ``size``, by the arithmetic
    Conv2d and MaxPool2d do (floor mode); activations and dropout keep the size.

    No tensor is made, so this works for layers on the meta device and costs nothing.
    """
    sizes: dict[str, tuple[int, int]] = {}
    h, w = size
    for name, layer in layers.named_children():
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            if getattr(layer, "ceil_mode", False):
                raise AssertionError(f"no size arithmetic for {layer} (ceil_mode)")
            kernel, stride, padding, dilation = (
                _pair(getattr(layer, key)) for key in ("kernel_size", "stride", "padding",
                                                       "dilation"))
            h, w = ((n + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                    for i, n in enumerate((h, w)))
        elif not isinstance(layer, nn.ReLU | nn.Dropout):
            raise AssertionError(f"no size arithmetic for layer {name!r}: {layer}")
        sizes[name] = (h, w)
    return sizes


def smallest_side(fits: Callable[[int], bool], limit: int = 4096) -> int:
    """The smallest side s for which ``fits(s)`` holds (``fits`` grows with s)."""
    side = next((s for s in range(1, limit + 1) if fits(s)), None)
    if side is None:
        raise AssertionError(f"no input side up to {limit} fits")
    return side


def check_size(model: str, input_size: tuple[int, int], min_size: tuple[int, int],
               reason: str) -> None:
    """ModelError unless ``input_size`` is at least ``min_size`` in both sides."""
    if input_size[0] < min_size[0] or input_size[1] < min_size[1]:
        raise ModelError(f"{model}: input_size {list(input_size)} is too small; the model "
                         f"takes images of at least {min_size[0]}x{min_size[1]} pixels "
                         f"({reason}): enlarge the data or choose another model")


def called_modules(model: nn.Module, x: torch.Tensor, keep: Callable[[nn.Module], bool]
                   ) -> list[str]:
    """Names of the modules ``keep`` selects, in the order one dry forward pass on ``x[:1]``
    calls them (a module called twice is listed twice): the computation's order, not the
    order the modules were registered in."""
    called: list[str] = []
    hooks = [module.register_forward_hook(lambda *_, name=name: called.append(name))
             for name, module in model.named_modules() if keep(module)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return called


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
