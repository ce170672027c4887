"""Captum's attribution methods as trustmap methods: a class, an instance, or ``"captum:Name"``.

Wherever trustmap takes a method (``methods.get``/``attribute``, ``attribute_samples`` over an
ensemble's members, the disagreement measures), it also takes a Captum ``Attribution``:

- a class, e.g. ``captum.attr.Saliency``, built for every model it explains as ``cls(model)``;
  classes that need more than the model (GuidedGradCam's layer, NoiseTunnel's inner method) are
  refused with a hint to pass an instance;
- an instance, e.g. ``NoiseTunnel(Saliency(model))`` or ``GuidedGradCam(model, model.conv2)``.
  It is used as is for the model it was built on. For any other model (another member of an
  ensemble) it is rebound: a shallow copy in which every attribute that is the original
  model (or its bound ``forward``) becomes the explained model, every attribute that is a
  submodule of the original model becomes the explained model's submodule of the same name,
  every nested Attribution is rebound the same way, and lists, tuples and dicts are copied
  with their items rebound; everything else (options, functions) is shared. An instance built
  on something other than an nn.Module (a lambda around a model) cannot be rebound and is
  refused for other models;
- the string ``"captum:Name"``, Name a class of ``captum.attr``, so a settings file can name one.

Layer and neuron attributions (LayerGradCam, NeuronGradient, ...) return maps of a layer or
explain a neuron, not a class's maps like x, and are refused (Grad-CAM is ``"gradcam"``).

Every call gives exactly Captum's own result, ``explainer.attribute(x, target=targets,
**options)`` on the checked batch, detached: targets follow trustmap's convention (one class
or one per input, checked), options go to ``attribute`` (e.g. ``baselines``, ``n_steps``).
Captum's guided backprop, deconvolution, GuidedGradCam and LRP hook modules as trustmap's do,
so they are refused on models without the structure they need, as trustmap's own are
(``trustmap.explain.structure``); Captum's informational warnings about hooks and input
gradients are silenced.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

import torch
from torch import nn

from trustmap.errors import ConfigError, did_you_mean
from trustmap.explain.core import Target
from trustmap.explain.gradient import prepare
from trustmap.explain.structure import require_relu_modules, require_weighted_modules

PREFIX = "captum:"
"""How a settings file names a Captum class: ``"captum:Saliency"``."""

SINGLE_PASS = frozenset({"Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution"})
"""Captum classes that explain one forward pass (their own classes, not subclasses): under MC
dropout only these explain the same stochastic model their sample predicted with."""

_BASES = frozenset({"Attribution", "GradientAttribution", "PerturbationAttribution"})


def attribution_class(obj: object) -> type | None:
    """The Captum Attribution class of a class or an instance, or None for anything else.

    Captum is imported only when the object comes from it (a subclass defined elsewhere too):
    importing it takes about half a second.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    if not any(getattr(k, "__module__", "").startswith("captum.") for k in cls.__mro__):
        return None
    from captum.attr import Attribution

    return cls if issubclass(cls, Attribution) else None


def _refuse_kind(cls: type) -> None:
    """Refuse layer and neuron attributions and the abstract bases."""
    from captum.attr import LayerAttribution, NeuronAttribution

    name = f"{PREFIX}{cls.__name__}"
    if issubclass(cls, LayerAttribution):
        raise ConfigError(f"{name} is a layer attribution: its maps are of a layer's output, not "
                          "of the input, and trustmap's methods return maps like x; use "
                          "'gradcam' (or a Captum GuidedGradCam instance) instead")
    if issubclass(cls, NeuronAttribution):
        raise ConfigError(f"{name} is a neuron attribution: it explains one neuron of a layer, "
                          "not a class; trustmap's methods explain a target class")
    if cls.__name__ in _BASES and cls.__module__.startswith("captum."):
        raise ConfigError(f"{name} is an abstract base class of Captum's methods; name a "
                          "method such as Saliency or IntegratedGradients")


def _buildable(cls: type) -> None:
    """Refuse a class that ``cls(model)`` cannot build."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    first = parameters[0].name if parameters else None
    required = [p.name for p in parameters[1:] if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if first in ("forward_func", "model") and not required:
        return
    needs = ", ".join(required) if first in ("forward_func", "model") else first
    raise ConfigError(f"{PREFIX}{cls.__name__} cannot be built from the model alone (it also "
                      f"needs {needs}); build an instance on the model in Python and pass it "
                      "(e.g. GuidedGradCam(model, model.conv2) or NoiseTunnel(Saliency(model))): "
                      "trustmap rebinds it to every model it explains")


def acceptable_names() -> list[str]:
    """Names of the captum.attr classes that ``"captum:Name"`` can name."""
    import captum.attr

    names = []
    for name in captum.attr.__all__:
        cls = getattr(captum.attr, name, None)
        if not isinstance(cls, type) or attribution_class(cls) is None:
            continue
        try:
            _refuse_kind(cls)
            _buildable(cls)
        except ConfigError:
            continue
        names.append(name)
    return names


def named(reference: str) -> CaptumMethod:
    """The method of ``"captum:Name"``; unknown or unusable names say why and what to do."""
    try:
        import captum.attr
    except ImportError:
        raise ConfigError(f"{reference!r} names a Captum method but Captum is not installed; "
                          'install it with pip install "trustmap[captum]" (or pip install '
                          "captum)") from None

    name = reference[len(PREFIX):] if reference.startswith(PREFIX) else reference
    cls = getattr(captum.attr, name, None) if name in captum.attr.__all__ else None
    if not isinstance(cls, type) or attribution_class(cls) is None:
        usable = acceptable_names()
        hint = did_you_mean(reference, [PREFIX + n for n in usable])
        raise ConfigError(f"unknown Captum method {reference!r}{hint}; "
                          f"write 'captum:' and a class of captum.attr: "
                          f"{', '.join(usable)}")
    return CaptumMethod(cls)


def _source(forward_func: object) -> nn.Module | None:
    """The module an Attribution's forward function belongs to: itself or its bound method's."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class _Rebinder:
    """Copies of an Attribution with one model's parts replaced by another's (module text)."""

    def __init__(self, original: nn.Module, model: nn.Module, forward_func: object) -> None:
        self.original, self.model = original, model
        self.forward_func = forward_func
        self.names = {id(m): name for name, m in original.named_modules()}
        self.modules = dict(model.named_modules())

    def value(self, value: Any) -> Any:
        from captum.attr import Attribution

        if value is self.original:
            return self.model
        if value is self.forward_func or (
                inspect.ismethod(value) and value.__self__ is self.original):
            return getattr(self.model, value.__name__)
        if isinstance(value, Attribution):
            return self.attribution(value)
        if isinstance(value, nn.Module) and id(value) in self.names:
            name = self.names[id(value)]
            found = self.modules.get(name)
            if found is None or type(found) is not type(value):
                raise ConfigError(f"the Captum instance uses layer {name!r} "
                                  f"({type(value).__name__}) of the model it was built on, but "
                                  f"the model explained has "
                                  f"{'no such layer' if found is None else type(found).__name__}"
                                  "; rebinding maps layers by name (dict(model.named_modules()))")
            return found
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.value(v) for v in value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def attribution(self, attribution: Any) -> Any:
        rebound = copy.copy(attribution)
        for key, value in vars(attribution).items():
            vars(rebound)[key] = self.value(value)
        return rebound


def rebind(attribution: Any, model: nn.Module) -> Any:
    """The instance itself for the model it was built on, else a copy rebound to `model`."""
    forward_func = attribution.forward_func
    if forward_func is model or getattr(forward_func, "__self__", None) is model:
        return attribution
    original = _source(forward_func)
    name = f"{PREFIX}{type(attribution).__name__}"
    if original is None:
        raise ConfigError(f"the {name} instance was built on {forward_func!r}, not on an "
                          "nn.Module, so trustmap cannot rebind it to the model it explains; "
                          "build it on the model (or pass the class) instead")
    return _Rebinder(original, model, forward_func).attribution(attribution)


def _nested(attribution: Any) -> list[Any]:
    """The attribution and every Attribution among its attributes, recursively."""
    from captum.attr import Attribution

    found, pending = [], [attribution]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += [v for v in vars(current).values() if isinstance(v, Attribution)]
    return found


class CaptumMethod:
    """A Captum Attribution (class or instance) as ``method(model, x, target, **options)``."""

    def __init__(self, attribution: object) -> None:
        cls = attribution_class(attribution)
        if cls is None:
            raise ConfigError(f"expected a Captum Attribution class or instance, got "
                              f"{attribution!r}")
        _refuse_kind(cls)
        if isinstance(attribution, type):
            _buildable(cls)
        self.attribution = attribution
        self.__name__ = self.__qualname__ = f"{PREFIX}{cls.__name__}"
        import captum.attr

        self.single_pass = (cls.__name__ in SINGLE_PASS
                            and getattr(captum.attr, cls.__name__, None) is cls)
        self.__doc__ = f"Captum's {cls.__name__}, as a trustmap method."

    def bound(self, model: nn.Module) -> Any:
        """The Attribution for `model`: built from the class, or the instance rebound."""
        if isinstance(self.attribution, type):
            return self.attribution(model)
        return rebind(self.attribution, model)

    def __call__(self, model: nn.Module, x: torch.Tensor, target: Target,
                 **options: object) -> torch.Tensor:
        from captum.attr import LRP, Deconvolution, GuidedBackprop

        if options.get("return_convergence_delta"):
            raise ConfigError(f"{self.__name__}: return_convergence_delta is not supported here, "
                              "as trustmap methods return maps only; call Captum's attribute "
                              "directly for the delta")
        x, targets = prepare(model, x, target)
        explainer = self.bound(model)
        nested = _nested(explainer)
        if any(isinstance(a, GuidedBackprop | Deconvolution) for a in nested):
            require_relu_modules(model, x, self.__name__)
        if any(isinstance(a, LRP) for a in nested):
            require_weighted_modules(model, x)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks")
            warnings.filterwarnings("ignore", message=r"Input Tensor \d+ did not already")
            maps = explainer.attribute(x, target=targets, **options)
        if not isinstance(maps, torch.Tensor) or maps.shape != x.shape:
            shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ConfigError(f"{self.__name__} returned {shape}, not maps like the images "
                              f"{list(x.shape)}; trustmap methods return one map per input")
        return maps.detach()

    def __repr__(self) -> str:
        kind = "class" if isinstance(self.attribution, type) else "instance"
        return f"<{self.__name__} ({kind})>"
