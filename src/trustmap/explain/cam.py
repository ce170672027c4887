"""Grad-CAM and Guided Grad-CAM (Selvaraju et al. 2017).

Grad-CAM weighs a layer's feature maps by the spatial mean of the target logit's gradient and
sums them: a coarse map of where the class evidence sits at that layer's resolution. Image-sized
results carry the same map on every input channel, so every method returns x's shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trustmap.errors import ConfigError
from trustmap.explain.core import Target, frozen_parameters, module_named, selected
from trustmap.explain.gradient import modified_relu_gradient, prepare
from trustmap.explain.structure import require_relu_modules

UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
"""Interpolation modes (torch.nn.functional.interpolate's) for bringing maps to image size."""


def _layer_name(model: nn.Module, layer: str | None) -> str:
    if layer is not None:
        return layer
    name = getattr(model, "gradcam_layer", None)
    if not isinstance(name, str):
        raise ConfigError("the model names no gradcam_layer; pass layer= with a name from "
                          "dict(model.named_modules())")
    return name


def _layer_cam(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str | None,
               relu: bool) -> torch.Tensor:
    """Grad-CAM at the layer's resolution, [N, 1, h, w], for checked inputs."""
    name = _layer_name(model, layer)
    module = module_named(model, name)
    outputs: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[object, ...], output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise ConfigError(f"Grad-CAM needs a layer with feature maps [N, K, h, w]; layer "
                              f"{name!r} gives {shape}")
        # The graph starts here: the layers before it need no backward, and no graph is kept.
        leaf = output.detach().requires_grad_()
        outputs.append(leaf)
        return leaf

    with frozen_parameters(model), torch.enable_grad():
        handle = module.register_forward_hook(hook)
        try:
            logits = model(x)
        finally:
            handle.remove()
        if len(outputs) != 1:
            raise ConfigError(f"layer {name!r} ran {len(outputs)} times in one forward pass; "
                              "Grad-CAM needs a layer that runs exactly once")
        (grad,) = torch.autograd.grad(selected(logits, targets).sum(), outputs[0])
    maps = outputs[0].detach()
    cam = (grad.mean(dim=(2, 3), keepdim=True) * maps).sum(1, keepdim=True)
    return F.relu(cam) if relu else cam


def _check_mode(mode: str) -> None:
    if mode not in UPSAMPLE_MODES:
        raise ConfigError(f"unknown upsample mode {mode!r}; choose one of "
                          f"{', '.join(UPSAMPLE_MODES)}")


def _upsampled(cam: torch.Tensor, x: torch.Tensor, mode: str) -> torch.Tensor:
    corners = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(cam, size=x.shape[-2:], mode=mode, align_corners=corners)


def layer_gradcam(model: nn.Module, x: torch.Tensor, target: Target, *, layer: str | None = None,
                  relu: bool = True) -> torch.Tensor:
    """Grad-CAM at the layer's own resolution, [N, 1, h, w]: sum_k mean(d logit / dA_k) A_k.

    `layer` is a name from ``dict(model.named_modules())``, by default ``model.gradcam_layer``;
    `relu` keeps only evidence for the class, as in the paper.
    """
    x, targets = prepare(model, x, target)
    return _layer_cam(model, x, targets, layer, relu)


def gradcam(model: nn.Module, x: torch.Tensor, target: Target, *, layer: str | None = None,
            relu: bool = True, upsample: str = "bilinear") -> torch.Tensor:
    """Grad-CAM upsampled to the image (align_corners=False) and repeated on every channel.

    Equals Captum's LayerGradCam followed by ``LayerAttribution.interpolate`` to x's size.
    """
    _check_mode(upsample)
    x, targets = prepare(model, x, target)
    cam = _upsampled(_layer_cam(model, x, targets, layer, relu), x, upsample)
    return cam.expand(-1, x.shape[1], -1, -1).contiguous()


def guided_gradcam(model: nn.Module, x: torch.Tensor, target: Target, *,
                   layer: str | None = None, upsample: str = "nearest") -> torch.Tensor:
    """Guided backpropagation times the upsampled, rectified Grad-CAM.

    The defaults are Captum's GuidedGradCam: Grad-CAM with relu, upsampled with "nearest".
    Models guided backprop cannot explain (relu as a function, no nn.ReLU, TorchScript) are
    refused as there. Both passes draw the same dropout masks (the Grad-CAM pass gives its
    random numbers back), so under MC dropout both factors explain one stochastic forward.
    """
    _check_mode(upsample)
    x, targets = prepare(model, x, target)
    require_relu_modules(model, x, "guided Grad-CAM")
    with torch.random.fork_rng(devices=_cuda_devices(x)):
        cam = _upsampled(_layer_cam(model, x, targets, layer, relu=True), x, upsample)
    return modified_relu_gradient(model, x, targets, guided=True) * cam


def _cuda_devices(x: torch.Tensor) -> list[int]:
    if x.device.type != "cuda":
        return []
    return [x.device.index if x.device.index is not None else torch.cuda.current_device()]
