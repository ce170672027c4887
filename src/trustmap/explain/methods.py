"""Every attribution method by name, so the CLI, configs and aggregates can ask for one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from trustmap.errors import ConfigError, did_you_mean
from trustmap.explain import cam, composites, gradient, occlusion
from trustmap.explain.core import Target

Method = Callable[..., torch.Tensor]
"""``method(model, x, target, **options) -> maps like x``."""

_METHODS: dict[str, Method] = {
    "gradient": gradient.gradient,
    "gradient-x-input": gradient.gradient_x_input,
    "integrated-gradients": gradient.integrated_gradients,
    "smoothgrad": gradient.smoothgrad,
    "vargrad": gradient.vargrad,
    "guided-backprop": gradient.guided_backprop,
    "deconvnet": gradient.deconvnet,
    "gradcam": cam.gradcam,
    "guided-gradcam": cam.guided_gradcam,
    "occlusion": occlusion.occlusion,
    **composites.METHODS,
}
METHODS: Mapping[str, Method] = MappingProxyType(_METHODS)
"""Read-only view: method name -> function."""

SINGLE_PASS = frozenset(name for name in _METHODS
                        if name not in {"integrated-gradients", "smoothgrad", "vargrad",
                                        "occlusion"})
"""Methods that explain one forward pass. Under MC dropout every pass draws new masks, so only
these explain the same stochastic model each of their samples predicted with."""


def names() -> tuple[str, ...]:
    return tuple(_METHODS)


def get(method: str | Method) -> Method:
    """A method by name (a callable is returned as is); unknown names get a hint."""
    if callable(method):
        return method
    if method in _METHODS:
        return _METHODS[method]
    raise ConfigError(f"unknown attribution method {method!r}{did_you_mean(method, _METHODS)}; "
                      "known methods: "
                      f"{', '.join(_METHODS)}")


def attribute(method: str | Method, model: nn.Module, x: torch.Tensor, target: Target,
              **options: object) -> torch.Tensor:
    """Run one method by name: ``attribute("gradcam", model, x, target)``."""
    return get(method)(model, x, target, **options)
