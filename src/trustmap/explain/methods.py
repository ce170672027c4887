"""Every attribution method by name, so the CLI, configs and aggregates can ask for one.

A method reference is one of:

- a registered name (``names()``: "gradient", "gradcam", "lrp-epsilon-plus", ...);
- ``"captum:Name"``, a class of ``captum.attr`` (``"captum:Saliency"``), so settings can name
  Captum's methods; a Captum ``Attribution`` class or instance in Python (see
  ``captum_methods`` for how an instance is rebound to every model it explains);
- any callable ``method(model, x, target, **options) -> maps like x``.

``resolve`` turns a reference into (display name, method) or raises ConfigError: settings
validation calls it. The display name is stable: the registered name, ``"captum:Name"``, or a
callable's ``__name__`` (module-qualified where it would hide a registered name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import nn

from trustmap.errors import ConfigError, did_you_mean
from trustmap.explain import cam, captum_methods, composites, gradient, occlusion
from trustmap.explain.core import Target

Method = Callable[..., torch.Tensor]
"""``method(model, x, target, **options) -> maps like x``."""

MethodRef = str | Method | object
"""A registered name, "captum:Name", a Captum Attribution class or instance, or a Method."""

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


_NAMES: dict[Method, str] = {function: name for name, function in _METHODS.items()}


def names() -> tuple[str, ...]:
    """The registered names (Captum's methods are named "captum:Name" besides these)."""
    return tuple(_METHODS)


def _callable_name(method: Method) -> str:
    registered = next((n for f, n in _NAMES.items() if f is method), None)
    if registered is not None:
        return registered
    inner = getattr(method, "func", None)  # a functools.partial
    source = inner if callable(inner) and not hasattr(method, "__name__") else method
    name = getattr(source, "__name__", None) or type(source).__name__
    if name in _METHODS or name.startswith(captum_methods.PREFIX):
        module = getattr(source, "__module__", None) or "?"
        name = f"{module}.{getattr(source, '__qualname__', name)}"
    return name


def resolve(method: MethodRef) -> tuple[str, Method]:
    """(display name, method) of a method reference (module text); ConfigError when it is none:
    unknown names get a did-you-mean, unusable Captum classes say what to pass instead."""
    if isinstance(method, str):
        if method in _METHODS:
            return method, _METHODS[method]
        if method.startswith(captum_methods.PREFIX):
            found = captum_methods.named(method)
            return found.__name__, found
        raise ConfigError(f"unknown attribution method {method!r}{did_you_mean(method, _METHODS)}"
                          f"; known methods: {', '.join(_METHODS)}, or 'captum:Name' for a "
                          "class of captum.attr (e.g. 'captum:Saliency')")
    if isinstance(method, captum_methods.CaptumMethod):
        return method.__name__, method
    if captum_methods.attribution_class(method) is not None:
        found = captum_methods.CaptumMethod(method)
        return found.__name__, found
    if callable(method):
        return _callable_name(method), method
    raise ConfigError(f"an attribution method is a name ({', '.join(list(_METHODS)[:3])}, ...), "
                      "'captum:Name', a Captum Attribution class or instance, or a callable "
                      f"method(model, x, target) -> maps; got {type(method).__name__}")


def get(method: MethodRef) -> Method:
    """The method of a reference (``resolve``); a plain callable is returned as is."""
    return resolve(method)[1]


def name_of(method: MethodRef) -> str:
    """The stable display name of a reference (``resolve``)."""
    return resolve(method)[0]


def single_pass(method: MethodRef) -> bool:
    """Whether the method explains one forward pass (so it may run under MC dropout, where
    every pass draws new masks): SINGLE_PASS for registered names, captum_methods.SINGLE_PASS
    for Captum's, and for other callables their ``single_pass`` attribute, True by default
    (trustmap cannot see how many passes a callable runs)."""
    name, function = resolve(method)
    if name in _METHODS and _METHODS[name] is function:
        return name in SINGLE_PASS
    return bool(getattr(function, "single_pass", True))


def attribute(method: MethodRef, model: nn.Module, x: torch.Tensor, target: Target,
              **options: object) -> torch.Tensor:
    """Run one method: ``attribute("gradcam", model, x, target)``, or with any reference."""
    return get(method)(model, x, target, **options)
