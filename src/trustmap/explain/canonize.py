"""BatchNorm folded into the layer before it, for the duration of an explanation.

LRP rules see a weighted layer's weights and bias; a BatchNorm after it is an affine map with
a bias of its own, which the rules could not account for. Folding it into the convolution
(``W' = W s``, ``b' = (b - mean) s + beta`` with ``s = gamma / sqrt(var + eps)``) gives one
layer computing the same function, so the rules see the whole affine map at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trustmap.errors import ConfigError
from trustmap.explain.core import input_shape
from trustmap.explain.lrp import WEIGHTED, dry_forward


def example_input(model: nn.Module) -> torch.Tensor:
    """One black image the model accepts: a trustmap classifier's [1, C, H, W] for its
    ``in_channels`` and ``input_size`` (``core.input_shape``)."""
    shape = input_shape(model)
    if shape is None:
        raise ConfigError(f"{type(model).__name__} is not a trustmap classifier; pass an example "
                          "input so the BatchNorm layers and the layers before them can be found")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    return torch.zeros(1, *shape, device=device, dtype=dtype)


def batchnorm_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(layer, batchnorm) names where the BatchNorm's input is the weighted layer's output.

    Found by one forward pass: a pair counts only when both are called once and no other
    module reads the layer's output, so folding cannot change anything else.
    """
    names = {module: name for name, module in model.named_modules()}
    calls: dict[str, int] = {}
    produced: dict[int, tuple[torch.Tensor, str]] = {}  # tensors kept alive: ids stay unique
    readers: dict[int, list[str]] = {}

    def read(module: nn.Module, args: tuple[object, ...]) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        for arg in args:
            if isinstance(arg, torch.Tensor) and id(arg) in produced:
                readers.setdefault(id(arg), []).append(name)

    def write(module: nn.Module, args: object, output: torch.Tensor) -> None:
        produced[id(output)] = (output, names[module])

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_pre_hook(read) for m in leaves]
    handles += [m.register_forward_hook(write) for m in leaves if isinstance(m, WEIGHTED)]
    try:
        dry_forward(model, example)
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    pairs = []
    for key, (output, layer) in produced.items():
        match = readers.get(key, [])
        # A BatchNorm normalises dim 1, which is a Linear layer's features only for [N, F].
        features = output.ndim == 2 or not isinstance(modules[layer], nn.Linear)
        if (len(match) == 1 and isinstance(modules[match[0]], _BatchNorm) and features
                and calls[layer] == 1 and calls[match[0]] == 1):
            pairs.append((layer, match[0]))
    return pairs


def _fold(layer: nn.Module, norm: _BatchNorm, stack: ExitStack) -> None:
    """Give `layer` the folded weight and bias and make `norm` the identity, until `stack` ends."""
    if norm.running_mean is None or norm.running_var is None:
        raise ConfigError(f"{type(norm).__name__} without running statistics normalises every "
                          "batch by its own statistics and cannot be folded for LRP; build it "
                          "with track_running_stats=True")
    weight = layer.weight
    # Folded in float64 (where the device has it), rounded once to the weight's dtype.
    wide = weight.dtype if weight.device.type == "mps" else torch.float64
    scale = torch.rsqrt(norm.running_var.to(wide) + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach().to(wide)
    shift = -norm.running_mean.to(wide)
    if layer.bias is not None:
        shift = shift + layer.bias.detach().to(wide)
    shift = shift * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach().to(wide)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    folded = (weight.detach().to(wide) * scale.view(shape)).to(weight.dtype)

    original = weight.data
    weight.data = folded
    stack.callback(setattr, weight, "data", original)
    if layer.bias is None:
        layer.bias = nn.Parameter(shift.to(weight.dtype), requires_grad=False)
        stack.callback(setattr, layer, "bias", None)
    else:
        bias, original_bias = layer.bias, layer.bias.data
        bias.data = shift.to(bias.dtype)
        stack.callback(setattr, bias, "data", original_bias)
    # The BatchNorm's own output is replaced by its input, which the folded layer already holds.
    stack.callback(norm.register_forward_hook(lambda m, args, out: args[0]).remove)


@contextmanager
def merged_batchnorm(model: nn.Module,
                     example: torch.Tensor | None = None) -> Iterator[list[tuple[str, str]]]:
    """Inside the block every BatchNorm that directly follows a Linear or Conv layer is folded
    into it; the block yields the (layer, batchnorm) name pairs, and afterwards every weight,
    bias and hook is exactly as before, also when the block raises.

    BatchNorm layers must be in eval mode (MC dropout leaves them so). `example` is one input
    for the forward pass that finds the pairs; a trustmap classifier needs none. A BatchNorm
    not after a weighted layer stays as it is.
    """
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        yield []  # nothing to fold: no forward pass needed
        return
    pairs = batchnorm_pairs(model, example if example is not None else example_input(model))
    modules = dict(model.named_modules())
    with ExitStack() as stack:
        for layer, norm in pairs:
            _fold(modules[layer], modules[norm], stack)  # type: ignore[arg-type]
        yield pairs
