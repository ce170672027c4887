"""LRP composites (which rule each weighted layer gets) and the named LRP methods.

A composite chooses by layer kind (convolution or dense) and position: the first weighted
layer of the forward pass is the input layer, whose input relevance is the pixel relevance
(the model's ``normalize`` is elementwise, so relevance passes it unchanged). The choices
follow Zennit's composites and Montavon et al. (2019): rules that favour positive evidence
(z+, gamma, alpha-beta) in the convolutions, epsilon in the dense layers, and for the input
layer optionally a rule made for pixels (flat, or z^B on the pixel box [0, 1] as the model's
``normalize`` maps it). The "gamma" composite keeps epsilon in the dense layers, and "flat"
is epsilon everywhere but flat in the input layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from trustmap.errors import ConfigError, did_you_mean
from trustmap.explain.canonize import merged_batchnorm
from trustmap.explain.core import Target, as_targets, check_inputs, frozen_parameters
from trustmap.explain.lrp import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Rule,
    ZBox,
    forward_order,
    propagate,
    zplus,
)
from trustmap.explain.structure import require_weighted_modules


@dataclass(frozen=True)
class Composite:
    """Rules by layer kind and position: `conv` for convolutions, `dense` for Linear layers,
    `first` (when given) for the input layer whatever its kind.

    `lrp` hands `choose` to the forward pass, which knows the input layer when it reaches it,
    so no extra pass is needed; `rules` lists the choice for a model up front.
    """

    name: str
    description: str
    conv: Rule
    dense: Rule
    first: Rule | None = None

    def choose(self, name: str, module: nn.Module, is_input: bool) -> Rule:
        """The rule of one weighted layer; `propagate` asks as its forward pass goes."""
        if is_input and self.first is not None:
            return self.first
        return self.dense if isinstance(module, nn.Linear) else self.conv

    def assign(self, layers: Sequence[tuple[str, nn.Module]]) -> dict[str, Rule]:
        """{layer name: rule} for weighted layers given in forward order."""
        return {name: self.choose(name, module, index == 0)
                for index, (name, module) in enumerate(layers)}

    def rules(self, model: nn.Module, x: torch.Tensor) -> dict[str, Rule]:
        """{layer name: rule} for the model, its forward order found by one pass on x[:1]."""
        return self.assign(forward_order(model, x))

    def configured(self, epsilon: float | None = None, gamma: float | None = None) -> Composite:
        """The composite with the epsilon of its epsilon rules and the gamma of its gamma rules
        replaced; asking for a parameter no rule of the composite has raises."""
        kinds = {"epsilon": (epsilon, Epsilon), "gamma": (gamma, Gamma)}
        chosen = self
        for parameter, (value, kind) in kinds.items():
            if value is None:
                continue
            slots = {slot: getattr(chosen, slot) for slot in ("conv", "dense", "first")}
            matching = {s: r for s, r in slots.items() if isinstance(r, kind)}
            if not matching:
                raise ConfigError(f"composite {self.name!r} has no {parameter} rule, so "
                                  f"{parameter}={value!r} would have no effect")
            changed = {s: dataclasses.replace(r, **{parameter: value}) for s, r in matching.items()}
            chosen = dataclasses.replace(chosen, **changed)
        return chosen


def _composites() -> dict[str, Composite]:
    eps, plus, gamma, ab21 = Epsilon(), zplus(), Gamma(), AlphaBeta(2.0, 1.0)
    flat = Flat()
    return {c.name: c for c in (
        Composite("epsilon", "epsilon in every layer", eps, eps),
        Composite("gamma", "gamma in convolutions, epsilon in dense layers", gamma, eps),
        Composite("alpha2-beta1", "alpha2-beta1 in every layer", ab21, ab21),
        Composite("alpha1-beta0", "alpha1-beta0 in every layer", AlphaBeta(1.0, 0.0),
                  AlphaBeta(1.0, 0.0)),
        Composite("zplus", "z+ (deep Taylor) in every layer", plus, plus),
        Composite("flat", "flat in the input layer, epsilon elsewhere", eps, eps, flat),
        Composite("epsilon-plus", "z+ in convolutions, epsilon in dense layers", plus, eps),
        Composite("epsilon-plus-flat", "as epsilon-plus, flat in the input layer", plus, eps,
                  flat),
        Composite("epsilon-gamma-box", "z^B in the input layer, gamma in convolutions, "
                  "epsilon in dense layers", gamma, eps, ZBox()),
        Composite("epsilon-alpha2-beta1", "alpha2-beta1 in convolutions, epsilon in dense "
                  "layers", ab21, eps),
        Composite("epsilon-alpha2-beta1-flat", "as epsilon-alpha2-beta1, flat in the input "
                  "layer", ab21, eps, flat),
    )}


COMPOSITES: dict[str, Composite] = _composites()
"""The named composites; each is also the method ``"lrp-" + name``."""


def composite_named(composite: str | Composite) -> Composite:
    """A composite by name (a Composite is returned as is); unknown names list the known."""
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, str) and composite in COMPOSITES:
        return COMPOSITES[composite]
    hint = did_you_mean(composite, COMPOSITES)
    raise ConfigError(f"unknown LRP composite {composite!r}{hint}; known composites: "
                      f"{', '.join(COMPOSITES)}")


def input_bounds(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest values the input layer can see: the pixel bounds 0 and 1 pushed
    through the model's ``normalize`` (per channel), or 0 and 1 for a model without one."""
    low, high = torch.zeros_like(x[:1]), torch.ones_like(x[:1])
    normalize = getattr(model, "normalize", None)
    if isinstance(normalize, nn.Module):
        with torch.no_grad():
            low, high = normalize(low), normalize(high)
    return low, high


def lrp(model: nn.Module, x: torch.Tensor, target: Target, *,
        composite: str | Composite = "epsilon-plus", canonize: bool = True,
        epsilon: float | None = None, gamma: float | None = None) -> torch.Tensor:
    """Layer-wise relevance of every pixel for the target logit, one forward and one backward.

    The relevance at the output is the target logit; the composite's rules carry it down to
    the input of the first weighted layer. `canonize` folds BatchNorm layers into the
    convolutions before them while the explanation runs (they must be in eval mode). `epsilon`
    and `gamma` replace the parameters of the composite's epsilon and gamma rules.

    The rules sit on Linear and Conv modules, so a model that computes a linear map any other
    way (F.linear, F.conv2d, a matmul, a ConvTranspose2d) or is TorchScript is refused with a
    ModelError naming the place (``structure.require_weighted_modules``). Activations applied
    as functions (F.relu, torch.tanh) are fine: elementwise activations and pooling pass
    relevance with their ordinary gradient whether they are modules or not.
    """
    chosen = composite_named(composite).configured(epsilon, gamma)
    if not isinstance(canonize, bool):
        raise ConfigError(f"canonize must be True or False, got {canonize!r}")
    x = check_inputs(model, x)
    targets = as_targets(target, len(x), getattr(model, "num_classes", None))
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.is_floating_point():
        x = x.to(parameter.dtype)  # a float64 model explains in float64
    require_weighted_modules(model, x)  # before folding, which hooks the model's modules
    folding = merged_batchnorm(model, x[:1]) if canonize else nullcontext()
    with frozen_parameters(model), folding:
        relevance = propagate(model, x, targets, chosen.choose, bounds=input_bounds(model, x))
    return relevance.detach().float()


def _method(name: str) -> Callable[..., torch.Tensor]:
    def method(model: nn.Module, x: torch.Tensor, target: Target, *, canonize: bool = True,
               epsilon: float | None = None, gamma: float | None = None) -> torch.Tensor:
        return lrp(model, x, target, composite=name, canonize=canonize, epsilon=epsilon,
                   gamma=gamma)

    method.__name__ = method.__qualname__ = "lrp_" + name.replace("-", "_")
    method.__doc__ = f"LRP with the {name!r} composite: {COMPOSITES[name].description}."
    return method


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    f"lrp-{name}": _method(name) for name in COMPOSITES}
"""Method name -> ``method(model, x, target, *, canonize, epsilon, gamma)``."""
