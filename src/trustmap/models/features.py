"""A model's features: the activations at one layer, read in batches, for feature-space detectors.

By default the features are the input of the model's last ``nn.Linear`` (the penultimate
representation Mahalanobis, KNN and ViM read), found by a dry forward pass, so it works on zoo
and user models alike; any layer can be named instead (its output is read then).
"""

from __future__ import annotations

import torch
from torch import nn

from trustmap.errors import ModelError, did_you_mean
from trustmap.models.base import called_modules


def last_linear(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the last ``nn.Linear`` the model calls on ``example`` (forward order)."""
    called = called_modules(model, example, lambda module: isinstance(module, nn.Linear))
    if not called:
        raise ModelError("the model calls no nn.Linear layer, so it has no default feature "
                         "layer; name one of its layers: "
                         f"{', '.join(n for n, _ in model.named_modules() if n)}")
    return called[-1]


def features(model: nn.Module, images: torch.Tensor, layer: str | None = None,
             batch_size: int = 1024) -> torch.Tensor:
    """Float32 features [N, D] of ``images``, ``batch_size`` at a time on the model's device.

    ``layer`` None reads the input of the last ``nn.Linear``; a named layer gives its output.
    Either is flattened per image. The result is on the CPU: a bank of features for a whole
    set belongs in host memory, batches go to the device.
    """
    modules = dict(model.named_modules())
    if layer is not None and layer not in modules:
        raise ModelError(f"the model has no layer {layer!r}{did_you_mean(layer, modules)}; its "
                         f"layers: {', '.join(n for n in modules if n)}")
    name = last_linear(model, images) if layer is None else layer
    found: list[torch.Tensor] = []

    def keep(_: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        value = args[0] if layer is None else output
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"layer {name!r} gives {type(value).__name__}, not a tensor of "
                             "features; name another layer")
        found.append(value.detach().flatten(1).float().cpu())

    device = next(model.parameters()).device
    hook = modules[name].register_forward_hook(keep)
    try:
        with torch.no_grad():
            for batch in images.split(batch_size):
                model(batch.to(device))
    finally:
        hook.remove()
    bank = torch.cat(found)
    if len(bank) != len(images):
        raise ModelError(f"layer {name!r} gave {len(bank)} rows of features for {len(images)} "
                         "images (it runs more than once per image, or not for some); name a "
                         "layer that runs once per image")
    return bank


def linear_head(model: nn.Module, images: torch.Tensor, layer: str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor] | str:
    """Weight [K, D] and bias [K] of the last ``nn.Linear`` where the model's logits are exactly
    that layer applied to its features at ``layer`` (checked on ``images``), else the reason
    they are not.

    ViM and ReAct recompute the logits from (changed) features, so they need logits = W f + b;
    a model that does more after its last Linear (a temperature, a second head) or features
    read elsewhere than that layer's input would give them wrong numbers without this check.
    """
    name = last_linear(model, images)
    module = dict(model.named_modules())[name]
    assert isinstance(module, nn.Linear)
    found = features(model, images, layer)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(images.to(device)).float().cpu()
    weight = module.weight.detach().float().cpu()
    bias = (module.bias.detach().float().cpu() if module.bias is not None
            else torch.zeros(module.out_features))
    if found.shape[1] != weight.shape[1]:
        return (f"the features at {layer!r} have {found.shape[1]} dimensions but the last "
                f"nn.Linear {name!r} takes {weight.shape[1]}")
    if logits.shape != (len(images), len(bias)) or not torch.allclose(
            found @ weight.T + bias, logits, rtol=1e-4, atol=1e-4):
        return (f"the model's logits are not its last nn.Linear {name!r} applied to the "
                "features (it computes more after that layer)")
    return weight, bias
