"""What every attribution method shares: checked inputs, targets, and the explained output.

A method is ``method(model, x, target, **options) -> tensor like x``: batched, signed, detached,
float32. It leaves the model as it found it (training mode, weights, hooks), so it can run on a
model whose dropout layers are sampling (MC dropout) and on every member of an ensemble alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from trustmap.data.dataset import check_images
from trustmap.errors import ConfigError, DataError

PASS_SIZE = 256
"""Images per forward pass for methods that run many per input (integrated gradients,
SmoothGrad, occlusion): bigger passes stop gaining on a CPU once activations leave the caches
(measured on lenet: batches of 1,000 ran 1.5x slower per image than batches of 256)."""

Target = int | torch.Tensor
"""One class for every input, or a LongTensor [N] with one class per input."""


def as_targets(target: Target, n: int, num_classes: int | None = None) -> torch.Tensor:
    """The explained class of every input as a LongTensor [N]; wrong shapes and ranges raise."""
    if isinstance(target, bool) or not isinstance(target, int | torch.Tensor):
        raise DataError(f"target must be a class index or a LongTensor [N], got {target!r}")
    targets = torch.as_tensor(target).long()
    if targets.ndim == 0:
        targets = targets.expand(n)
    if targets.shape != (n,):
        raise DataError(f"target must be one class index or one per input ([{n}]), got shape "
                        f"{list(targets.shape)}")
    if num_classes is not None and len(targets) and (
            int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise DataError(f"target classes must lie in [0, {num_classes}), got "
                        f"{int(targets.min())}..{int(targets.max())}")
    return targets.clone()


def check_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Validated images on the model's device (float32 [N, C, H, W] in [0, 1])."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(x)
    return x.to(model_device(model))


def model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) of an image a trustmap classifier surely takes: its ``in_channels`` and the
    ``input_size`` it was built for (28x28 where it records none); None for other models,
    whose input shape only an example can tell."""
    channels = getattr(model, "in_channels", None)
    if not isinstance(channels, int) or isinstance(channels, bool):
        return None
    size = getattr(model, "input_size", None)
    if size is None:
        from trustmap.models.base import INPUT_SIZE

        size = (INPUT_SIZE, INPUT_SIZE)
    if not (isinstance(size, tuple | list) and len(size) == 2
            and all(isinstance(s, int) and s > 0 for s in size)):
        return None
    return channels, int(size[0]), int(size[1])


def selected(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits[i, target_i] for every row: the explained output, [N]."""
    return logits.gather(1, targets.to(logits.device).view(-1, 1)).squeeze(1)


def module_named(model: nn.Module, name: str) -> nn.Module:
    """A submodule by its dotted name; an unknown name lists the close ones."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        import difflib

        close = difflib.get_close_matches(name, list(modules), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"the model has no layer named {name!r}{hint} "
                          "(names as in dict(model.named_modules()))")
    return modules[name]


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad inside the block: attributions need only input gradients."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Buffers (BatchNorm running statistics of a model in train mode) come back unchanged."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
