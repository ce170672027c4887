"""Activation maximisation: the input a unit responds to most, found by gradient ascent.

Where attribution maps explain one decision, the image that maximises a class logit (or a
channel of a hidden layer) shows what the model looks for in general (Erhan et al. 2009;
Simonyan et al. 2014). Unregularised ascent finds high-frequency noise, so the objective keeps
the image near grey (L2) and smooth (total variation), and the image is jittered each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral, Real

import torch
from torch import nn

from trustmap.errors import ConfigError
from trustmap.explain.core import (
    frozen_parameters,
    input_shape,
    kept_buffers,
    model_device,
    module_named,
)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image: summed |differences| of neighbours, [N]."""
    rows = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).sum(1)
    cols = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).sum(1)
    return rows + cols


@contextmanager
def _output_of(model: nn.Module, layer: str | None) -> Iterator[Callable[[torch.Tensor],
                                                                          torch.Tensor]]:
    """A function x -> the output of ``layer`` (the model's logits for None); hooks removed."""
    if layer is None:
        yield model
        return
    module = module_named(model, layer)
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: object) -> None:
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"layer {layer!r} returns {type(output).__name__}, not a tensor; "
                              "choose a layer with a single tensor output")
        captured.append(output)

    handle = module.register_forward_hook(keep)

    def read(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        model(x)
        if not captured:
            raise ConfigError(f"layer {layer!r} is not used in the model's forward pass")
        return captured[0]

    try:
        yield read
    finally:
        handle.remove()


def _unit_list(units: Sequence[int] | int) -> list[int]:
    if isinstance(units, Integral):
        values: list[object] = [units]
    elif isinstance(units, torch.Tensor):
        values = units.flatten().tolist()
    elif isinstance(units, Sequence) and not isinstance(units, str):
        values = list(units)
    else:
        values = []
    if not values or not all(isinstance(u, Integral) and not isinstance(u, bool)
                             for u in values):
        raise ConfigError(f"units must be a unit index or a non-empty list of them, got {units!r}")
    return [int(u) for u in values]


def _check_options(steps: int, lr: float, l2: float, tv: float, jitter: int,
                   start: str | float, shape: Sequence[int]) -> None:
    for name, value, least in (("steps", steps, 1), ("jitter", jitter, 0)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    for name, value in (("lr", lr), ("l2", l2), ("tv", tv)):
        if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0 \
                or not math.isfinite(value) or (name == "lr" and value == 0):
            raise ConfigError(f"{name} must be a finite number >= 0 (lr > 0), got {value!r}")
    if start != "random" and (isinstance(start, bool) or not isinstance(start, Real)
                              or not 0 < start < 1):
        raise ConfigError(f"start must be 'random' or a grey level strictly between 0 and 1 "
                          f"(the image is a sigmoid), got {start!r}")
    if len(shape) != 3 or not all(isinstance(s, Integral) and s > 0 for s in shape):
        raise ConfigError(f"shape must be (C, H, W) of positive integers, got {shape!r}")


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    """A trustmap classifier's input shape; other models must name theirs."""
    shape = input_shape(model)
    if shape is None:
        raise ConfigError(f"{type(model).__name__} is not a trustmap classifier, whose input "
                          "shape is known; pass shape=(C, H, W) of the images it takes")
    return shape


def _activation(output: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Row i's unit units[i], averaged over any spatial positions: [U]."""
    picked = output[torch.arange(len(units), device=output.device), units]
    return picked.flatten(1).mean(1) if picked.ndim > 1 else picked


def maximize_activation(model: nn.Module, *, layer: str | None = None,
                        units: Sequence[int] | int, steps: int = 200, lr: float = 0.05,
                        l2: float = 1e-3, tv: float = 1e-2, jitter: int = 2, seed: int = 0,
                        start: str | float = 0.5, shape: Sequence[int] | None = None
                        ) -> torch.Tensor:
    """One image per unit, [U, C, H, W] in [0, 1], that maximises the unit's activation.

    ``layer=None`` maximises the output logits (unit = class; logits rather than softmax, which
    would also reward lowering the other classes); a layer name maximises that module's output:
    for [N, C, H, W] outputs unit = channel, its spatial mean; for [N, F] outputs unit = index.
    The objective, per image, is activation - l2 * ||x - 0.5||^2 - tv * TV(x); both penalties
    are sums over pixels, scaled for logits: a channel's spatial mean has far smaller gradients
    per pixel, so lower ``tv`` (about 1e-3) for hidden layers.

    All units are optimised together as one batch with Adam on an unconstrained tensor p, the
    image being sigmoid(p), so it stays in [0, 1] without clamping. Each step the batch is
    rolled by a seeded random shift of up to ``jitter`` pixels before the forward pass; the
    image itself never moves. ``start`` is a grey level or "random" (p ~ N(0, 1), seeded).
    The model keeps its mode (dropout in train mode makes the ascent stochastic: seed torch's
    global RNG to repeat it), gets no gradients and comes back with its buffers unchanged.
    ``shape`` is (C, H, W) of the images; None is a trustmap classifier's own input shape
    (``in_channels`` and the ``input_size`` it was built for); any other model needs one.
    """
    if shape is None:
        shape = _input_shape(model)
    unit_list = _unit_list(units)
    _check_options(steps, lr, l2, tv, jitter, start, shape)
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    size = (len(unit_list), *(int(s) for s in shape))
    if start == "random":
        initial = torch.randn(size, generator=generator)
    else:
        initial = torch.full(size, math.log(start / (1 - start)))
    param = initial.to(device).requires_grad_()
    index = torch.tensor(unit_list, device=device)
    optimizer = torch.optim.Adam([param], lr=lr)
    with frozen_parameters(model), kept_buffers(model), _output_of(model, layer) as output_of, \
            torch.enable_grad():
        with torch.no_grad():
            available = output_of(torch.sigmoid(param)).shape[1]
        if min(unit_list) < 0 or max(unit_list) >= available:
            where = "the model's output" if layer is None else f"layer {layer!r}"
            raise ConfigError(f"units must lie in [0, {available}) for {where}, got "
                              f"{min(unit_list)}..{max(unit_list)}")
        for _ in range(steps):
            image = torch.sigmoid(param)
            dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            activation = _activation(output_of(image.roll((dy, dx), (2, 3))), index)
            objective = (activation - l2 * (image - 0.5).square().flatten(1).sum(1)
                         - tv * total_variation(image))
            optimizer.zero_grad()
            (-objective.sum()).backward()
            optimizer.step()
    return torch.sigmoid(param).detach()
