"""Layer-wise relevance propagation as a modified gradient: the rules and the one backward pass.

Invariant: the relevance at the input ``a`` of every layer is ``a * grad``, where grad is the
gradient of the explained logit as the rules modify it. Elementwise homogeneous layers (ReLU,
max- and average-pooling, flatten, dropout, identity) and the residual sum keep this invariant
with their ordinary gradient, so they need no rule: at a sum ``y = r + s`` both branches get
y's gradient ``R / y``, so each gets ``R`` in proportion to its value, the z-rule at the
addition (an unfolded BatchNorm, being affine, passes ``a * grad`` and its shift absorbs
relevance; see canonize). A layer with weights gets
its rule through a forward hook that keeps the layer's output value y (later layers see the
true activations) but reroutes its gradient g: the rule gives modified outputs ``z_k``,
differentiable in a, and constants ``s_k = c_k y / stabilize(z_k)``, and ``g * s_k`` flows
back into each z_k. As ``R_out = y * g``, the input gets ``a * grad_a = sum_k c_k a *
dz_k/da^T (R_out / stabilize(z_k))``: the rule. A weighted layer without a rule propagates
LRP-0 with its plain gradient.

The first weighted layer of the forward pass is the input layer, and so is every layer that
reads the same tensor (a residual block's projection skip). Relevance is taken at that tensor
itself, so it arrives through everything that reads it (an identity skip too); rules that need
more than the input (flat and w² on a tensor of ones, z^B on the input bounds) get extra
leaves, so the input relevance is ``sum(value * grad)`` over the input and all leaves.

The rules are built from small functions of a linear map (contributions, box, shares); an
explicit backward (the recurrent cells' LRP) applies the same functions one step at a time
through ``redistribute``, so both engines share the formulas and the zero-denominator
convention (``stabilize``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.explain.core import as_targets

# WEIGHTED, the layers the rules apply to, is defined with the audit that refuses linear maps
# computed anywhere else.
from trustmap.explain.structure import WEIGHTED as WEIGHTED
from trustmap.explain.structure import require_weighted_modules

Part = tuple[torch.Tensor, torch.Tensor]
"""(z, s): a modified output, differentiable, and the constant its gradient is scaled by."""

Chooser = Callable[[str, nn.Module, bool], "Rule | None"]
"""(layer name, layer, whether it is the input layer) -> its rule, or None for LRP-0."""

Layer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A weighted layer's linear map, ``(input, weight) -> output`` with no bias: ``F.linear``, or
a convolution with its stride, padding and groups (``partial(apply_layer, module)``)."""

STABILIZER = 1e-6
"""The epsilon every rule adds to its denominators by default."""


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = 1 (and sign(-0) = -1): never zero."""
    return z + torch.copysign(z.new_full((), epsilon), z)


def apply_layer(module: nn.Module, a: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's operation (stride, padding, groups kept) with other weights and bias."""
    if isinstance(module, nn.Linear):
        return F.linear(a, weight, bias)
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return module._conv_forward(a, weight, bias)
    raise ConfigError(f"LRP rules apply to {', '.join(t.__name__ for t in WEIGHTED)} layers, "
                      f"not to {type(module).__name__}")


def _shaped_bias(module: nn.Module, bias: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The bias shaped to add to the layer's output y: a Linear adds it along the last dim,
    a convolution along dim 1."""
    return bias if isinstance(module, nn.Linear) else bias.view(-1, *([1] * (y.ndim - 2)))


def _stackable(module: nn.Module) -> bool:
    """Whether inputs and weights can be stacked along channels (not for grouped convs)."""
    return isinstance(module, nn.Linear) or getattr(module, "groups", 1) == 1


def _stacked(layer: Layer, inputs: Sequence[torch.Tensor],
             weights: Sequence[Sequence[torch.Tensor]], stackable: bool) -> list[torch.Tensor]:
    """Outputs ``sum_i W[k][i] inputs[i]`` for every k (no bias), in one layer call.

    Inputs are stacked along the input channels and weights along input and output channels,
    so the modified outputs of a rule cost one call and one backward instead of one each: on a
    CPU the backward of a convolution with one input channel (the pixel layer) costs about 5x
    its forward, and stacking the one-channel inputs of a rule makes their backwards one. A
    layer that cannot stack (a grouped convolution) is called once per input and weight.
    """
    if not stackable:
        return [sum(layer(a, w) for a, w in zip(inputs, row, strict=True)) for row in weights]
    if len(inputs) == 1 and len(weights) == 1:
        return [layer(inputs[0], weights[0][0])]
    channels = -1 if weights[0][0].ndim == 2 else 1  # a dense layer's features come last
    stacked = torch.cat([torch.cat(list(row), 1) for row in weights], 0)
    out = layer(torch.cat(list(inputs), channels), stacked)
    return list(out.chunk(len(weights), dim=channels))


def contributions(layer: Layer, a: torch.Tensor, weight: torch.Tensor, negative: bool = True,
                  stackable: bool = True) -> list[torch.Tensor]:
    """[z+] or, with `negative`, [z+, z-]: per output the sum of its positive contributions
    ``a_i w_ij``, ``z+ = W+ a+ + W- a-``, and of its negative ones, ``z- = W- a+ + W+ a-`` (no
    bias); for inputs >= 0 just ``W+ a`` and ``W- a``.

    Each is computed on its own, not as the output minus the other, so where an output has no
    contribution of a kind its sum is exactly zero and so are the relevance shares it gives.
    """
    up, down = weight.clamp(min=0), weight.clamp(max=0)
    pairs = [[up, down], [down, up]] if negative else [[up, down]]
    if not bool((a < 0).any()):
        return _stacked(layer, [a], [pair[:1] for pair in pairs], stackable)
    return _stacked(layer, [a.clamp(min=0), a.clamp(max=0)], pairs, stackable)


def box(layer: Layer, a: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
        weight: torch.Tensor, stackable: bool = True) -> torch.Tensor:
    """The z^B rule's masses summed per output for inputs in the box [low, high]:
    ``(a - low) W+ + (a - high) W-`` (no bias). Every term is >= 0 as computed, so a sum is zero
    only where all its terms are: where the receptive field sits at its least favourable bound.
    """
    pair = [weight.clamp(min=0), weight.clamp(max=0)]
    return _stacked(layer, [a - low, a - high], [pair], stackable)[0]


def shares(relevance: torch.Tensor, terms: Sequence[tuple[float | torch.Tensor, torch.Tensor]],
           epsilon: float) -> list[Part]:
    """Parts (z, c R / stabilize(z)) for terms (c, z): each term shares the output relevance R
    in proportion to its contributions; c is a number or a tensor like R."""
    numerator = relevance.detach()
    parts = []
    for coefficient, z in terms:
        scale = numerator / stabilize(z.detach(), epsilon)
        if not isinstance(coefficient, float) or coefficient != 1.0:
            scale = scale.mul_(coefficient)
        parts.append((z, scale))
    return parts


def _products(values: Sequence[torch.Tensor],
              grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """``value * grad`` for each input: its relevance; zeros where the parts do not use it."""
    return [value.detach() * grad if grad is not None else torch.zeros_like(value)
            for value, grad in zip(values, grads, strict=True)]


def redistribute(build: Callable[..., Sequence[Part]],
                 *inputs: torch.Tensor) -> list[torch.Tensor]:
    """One rule step written out, for an explicit backward: the relevance of each input,
    ``value * d(sum_k z_k . s_k)/d input`` for the parts (z_k, s_k) that `build` makes from
    copies of the inputs; the hooked pass gets the same through its own backward."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in inputs]
        parts = build(*leaves)
        grads = torch.autograd.grad([z for z, _ in parts], leaves, [s for _, s in parts],
                                    allow_unused=True)
    return _products(leaves, grads)


def _number(what: str, value: object, strict: bool = False) -> float:
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else float("nan")
    if not (number > 0 if strict else number >= 0) or number == float("inf"):
        raise ConfigError(f"{what} must be a finite number {'>' if strict else '>='} 0, "
                          f"got {value!r}")
    return number


@dataclass(frozen=True)
class Rule(ABC):
    """How a weighted layer redistributes the relevance of its outputs onto its inputs.

    ``epsilon`` (keyword-only, > 0) stabilises every denominator: ``z + epsilon sign(z)``.
    """

    epsilon: float = field(default=STABILIZER, kw_only=True)
    name: ClassVar[str]
    input_only: ClassVar[bool] = False
    """Rules whose relevance is not ``a * grad`` of the real input fit only the input layer."""
    leaves: ClassVar[tuple[str, ...]] = ()
    """Extra inputs the rule differentiates: "ones" (like a) or "low"/"high" (input bounds)."""

    def __post_init__(self) -> None:
        _number("epsilon", self.epsilon, strict=True)

    @abstractmethod
    def parts(self, module: nn.Module, a: torch.Tensor, y: torch.Tensor,
              leaves: Mapping[str, torch.Tensor], relevance: torch.Tensor) -> list[Part]:
        """Pairs (z_k, s_k) such that the relevance of the inputs (a and the leaves) is
        ``sum over inputs of value * d(sum_k z_k s_k)/d input``, for output relevance
        `relevance`; y is the layer's real output, differentiable in a."""


@dataclass(frozen=True)
class Epsilon(Rule):
    """``R_i = sum_j a_i w_ij / (z_j + eps sign z_j) R_j`` with z = W a + b: LRP-0 plus a
    stabiliser that absorbs the relevance of weak, contradictory outputs."""

    name: ClassVar[str] = "epsilon"

    def parts(self, module: nn.Module, a: torch.Tensor, y: torch.Tensor,
              leaves: Mapping[str, torch.Tensor], relevance: torch.Tensor) -> list[Part]:
        return shares(relevance, [(1.0, y)], self.epsilon)  # z is the layer's own output


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """``R = alpha R+ - beta R-``: positive contributions ``z+ = W+ a+ + W- a-`` and negative
    ones ``z- = W- a+ + W+ a-`` each share the layer's relevance in proportion.

    The bias is left out of z+ and z- by default (``bias=False``), so the rule conserves
    relevance wherever z+ and z- are not zero; with ``bias=True`` b+ joins z+ and b- joins z-,
    absorbing relevance. alpha=1, beta=0 is the z+ rule of deep Taylor decomposition.
    """

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = False
    name: ClassVar[str] = "alpha-beta"

    def __post_init__(self) -> None:
        super().__post_init__()
        alpha, beta = _number("alpha", self.alpha), _number("beta", self.beta)
        if abs(alpha - beta - 1.0) > 1e-12:
            raise ConfigError(f"alpha - beta must be 1 (so relevance is conserved), got alpha="
                              f"{self.alpha}, beta={self.beta}; e.g. alpha=2, beta=1")

    def parts(self, module: nn.Module, a: torch.Tensor, y: torch.Tensor,
              leaves: Mapping[str, torch.Tensor], relevance: torch.Tensor) -> list[Part]:
        weight, bias = module.weight, module.bias if self.bias else None
        parts = contributions(partial(apply_layer, module), a, weight, negative=self.beta != 0,
                              stackable=_stackable(module))
        if bias is not None:  # b+ joins the positive part, b- the negative one
            parts = [part + _shaped_bias(module, b, part) for part, b
                     in zip(parts, (bias.clamp(min=0), bias.clamp(max=0)), strict=False)]
        return shares(relevance, list(zip((self.alpha, -self.beta), parts, strict=False)),
                      self.epsilon)


def zplus(epsilon: float = STABILIZER) -> AlphaBeta:
    """The z+ rule of deep Taylor decomposition: alpha1-beta0 (defined for signed inputs too)."""
    return AlphaBeta(1.0, 0.0, epsilon=epsilon)


@dataclass(frozen=True)
class Gamma(Rule):
    """Montavon's gamma rule, ``z = (W + gamma W+) a + (b + gamma b+)``, for signed inputs too.

    As Zennit does, contributions with the sign of the output are favoured: a positive output
    ``y_j`` shares its relevance by ``(W + g W+) a+ + (W + g W-) a- + b + g b+``, a negative one
    by ``(W + g W-) a+ + (W + g W+) a- + b + g b-``, a zero one not at all. For inputs >= 0 and
    positive outputs this is exactly Montavon's rule; gamma = 0 is LRP-0, large gamma
    approaches z+ (for positive outputs).
    """

    gamma: float = 0.25
    name: ClassVar[str] = "gamma"

    def __post_init__(self) -> None:
        super().__post_init__()
        _number("gamma", self.gamma)

    def parts(self, module: nn.Module, a: torch.Tensor, y: torch.Tensor,
              leaves: Mapping[str, torch.Tensor], relevance: torch.Tensor) -> list[Part]:
        # With the positive part P = W+ a+ + W- a- + b+ and y = P + N, the two modified outputs
        # are y + g P (for y > 0) and y + g N = (1 + g) y - g P (for y < 0): one extra layer
        # call for P, and the gradient flows through y and P only. Each denominator is at
        # least |y| in size, so no scale blows up.
        weight, bias, g = module.weight, module.bias, self.gamma
        if bool((a < 0).any()):  # P - b+ = (W a + |W| |a|) / 2, with W a = y - b
            linear = y if bias is None else y - _shaped_bias(module, bias, y)
            positive = (linear + apply_layer(module, a.abs(), weight.abs())) / 2
        else:
            positive = apply_layer(module, a, weight.clamp(min=0))
        if bias is not None:
            positive = positive + _shaped_bias(module, bias.clamp(min=0), y)
        value, part = y.detach(), positive.detach()
        negative = value < 0
        # the favoured part: P where y > 0, N = y - P where y < 0 (torch.where is slow on CPU)
        z = value.sub(part, alpha=2).mul_(negative).add_(part).mul_(g).add_(value)
        scale = relevance.detach() / stabilize(z, self.epsilon)
        scale.mul_(value.sign().abs_())  # outputs of 0 share nothing
        on_y = scale * (negative * g + 1.0)
        on_positive = scale.mul_(value.sign()).mul_(g)
        return [(y, on_y), (positive, on_positive)]


@dataclass(frozen=True)
class Flat(Rule):
    """Every output's relevance spread uniformly over its receptive field (input layer only):
    z = (all-ones weights, no bias) applied to ones."""

    name: ClassVar[str] = "flat"
    input_only: ClassVar[bool] = True
    leaves: ClassVar[tuple[str, ...]] = ("ones",)

    def parts(self, module: nn.Module, a: torch.Tensor, y: torch.Tensor,
              leaves: Mapping[str, torch.Tensor], relevance: torch.Tensor) -> list[Part]:
        z = apply_layer(module, leaves["ones"], torch.ones_like(module.weight))
        return shares(relevance, [(1.0, z)], self.epsilon)


@dataclass(frozen=True)
class WSquare(Rule):
    """Relevance shared by squared weights, whatever the input (input layer only): z = W² ones,
    no bias, so relevance is conserved."""

    name: ClassVar[str] = "wsquare"
    input_only: ClassVar[bool] = True
    leaves: ClassVar[tuple[str, ...]] = ("ones",)

    def parts(self, module: nn.Module, a: torch.Tensor, y: torch.Tensor,
              leaves: Mapping[str, torch.Tensor], relevance: torch.Tensor) -> list[Part]:
        z = apply_layer(module, leaves["ones"], module.weight.square())
        return shares(relevance, [(1.0, z)], self.epsilon)


@dataclass(frozen=True)
class ZBox(Rule):
    """The z^B rule for bounded inputs l <= a <= h (input layer only):
    ``R = a W^T s - l W+^T s - h W-^T s``, ``s = R_out / (W a - W+ l - W- h)``, the denominator
    summed as the masses ``(a - l) W+ + (a - h) W- >= 0`` (see box). The bias is left out (as in
    Zennit, where the bias terms cancel).
    """

    name: ClassVar[str] = "zb"
    input_only: ClassVar[bool] = True
    leaves: ClassVar[tuple[str, ...]] = ("low", "high")

    def parts(self, module: nn.Module, a: torch.Tensor, y: torch.Tensor,
              leaves: Mapping[str, torch.Tensor], relevance: torch.Tensor) -> list[Part]:
        z = box(partial(apply_layer, module), a, leaves["low"], leaves["high"], module.weight,
                _stackable(module))
        return shares(relevance, [(1.0, z)], self.epsilon)


RULES: dict[str, Callable[[], Rule]] = {
    "epsilon": Epsilon,
    "gamma": Gamma,
    "alpha2-beta1": lambda: AlphaBeta(2.0, 1.0),
    "alpha1-beta0": lambda: AlphaBeta(1.0, 0.0),
    "zplus": zplus,
    "flat": Flat,
    "wsquare": WSquare,
    "zb": ZBox,
}
"""Rule names to factories of the rule with its default parameters."""


def rule(name: str) -> Rule:
    """A rule by name with its default parameters."""
    if not isinstance(name, str) or name not in RULES:
        raise ConfigError(f"unknown LRP rule {name!r}; known rules: {', '.join(RULES)}")
    return RULES[name]()


class _Rerouted(torch.autograd.Function):
    """The layer's output value, with the gradient g sent to the parts: ``g * s_k`` to z_k."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, scales: tuple[torch.Tensor, ...],
                *modified: torch.Tensor) -> torch.Tensor:
        ctx.scales = scales
        return value.clone()  # a new tensor: later in-place layers cannot touch the parts

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, None, *(grad * scale for scale in ctx.scales))


def _leaves(names: Sequence[str], a: torch.Tensor,
            bounds: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """New leaves shaped like a: ones, or the lowest/highest input values per position."""
    made = {}
    for name in names:
        if name == "ones":
            made[name] = torch.ones_like(a).requires_grad_()
            continue
        if bounds is None:
            raise ConfigError("the z^B rule needs the input bounds (low, high) of the input layer")
        bound = (bounds[0] if name == "low" else bounds[1]).to(a)
        if bound.numel() == a[0].numel() and bound.ndim != a.ndim:
            bound = bound.reshape(1, *a.shape[1:])  # e.g. image-shaped bounds, flat input layer
        try:
            fits = torch.broadcast_shapes(bound.shape, a.shape) == a.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ConfigError(f"input bounds of shape {list(bound.shape)} do not fit the input "
                              f"layer's input {list(a.shape)}")
        made[name] = bound.expand_as(a).clone().requires_grad_()
    return made


def layer_relevance(module: nn.Module, rule: Rule, a: torch.Tensor, relevance: torch.Tensor,
                    bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The relevance of one layer's input a, given the relevance of its outputs: one rule step.

    Input-only rules (flat, w², z^B) treat a as the input layer's input; `bounds` (low, high)
    broadcast to a's shape.
    """
    def build(leaf: torch.Tensor, *extra: torch.Tensor) -> list[Part]:
        leaves = dict(zip(rule.leaves, extra, strict=True))
        return rule.parts(module, leaf, module(leaf), leaves, relevance)

    return sum(redistribute(build, a, *_leaves(rule.leaves, a, bounds).values()))


def check_batchnorm_eval(model: nn.Module) -> None:
    """Refuse BatchNorm layers in training mode: they would normalise by the batch and update
    their running statistics, changing the model being explained."""
    training = [name for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if training:
        raise ConfigError(f"LRP needs BatchNorm layers in eval mode (normalising with their "
                          f"running statistics), but {', '.join(training[:3])} are in training "
                          "mode, where a forward pass would update them; call .eval() on them "
                          "(MC dropout needs only the Dropout layers in training mode)")


def dry_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model on x's first input, leaving no trace: no gradients, and the random numbers
    dropout draws are given back, so an MC dropout stream continues as if it had not run."""
    check_batchnorm_eval(model)
    devices = []
    if x.device.type == "cuda":
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        return model(x[:1])


def forward_order(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """The weighted layers (name, module) in the order a forward pass on x[:1] first calls
    them; layers the pass does not call are left out."""
    order: dict[str, nn.Module] = {}
    names = {module: name for name, module in model.named_modules()
             if isinstance(module, WEIGHTED)}

    def seen(module: nn.Module, args: object) -> None:
        order.setdefault(names[module], module)

    handles = [module.register_forward_pre_hook(seen) for module in names]
    try:
        dry_forward(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return list(order.items())


def _chooser(model: nn.Module, rules: Mapping[str, Rule]) -> Chooser:
    """A rule mapping as a chooser, after checking that it names weighted layers."""
    modules = dict(model.named_modules())
    for name in rules:
        if name not in modules or name == "":
            raise ConfigError(f"LRP rules name a layer the model does not have: {name!r}")
        if not isinstance(modules[name], WEIGHTED):
            raise ConfigError(f"layer {name!r} is a {type(modules[name]).__name__}; LRP rules "
                              f"apply to {', '.join(t.__name__ for t in WEIGHTED)} layers")
    return lambda name, module, is_input: rules.get(name)


def propagate(model: nn.Module, x: torch.Tensor, target: int | torch.Tensor,
              rules: Mapping[str, Rule] | Chooser,
              bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Relevance of the input layer's input, shaped like x, for the target logit of each row.

    `rules` maps names of weighted layers to rules (others propagate LRP-0), or chooses each
    layer's rule as the forward pass reaches it; `bounds` are the lowest and highest values of
    the input layer's input, for the z^B rule. One forward with the rules' hooks, one backward
    from the one-hot target logits. Call it with the model's parameters frozen
    (``core.frozen_parameters``) so no weight gradients are computed.

    A model that computes a linear map outside Linear and Conv modules (F.linear, F.conv2d, a
    matmul, a ConvTranspose2d...) or is TorchScript gets a ModelError saying where
    (``structure.require_weighted_modules``): relevance would pass such a map with its plain
    gradient instead of its rule. Activations applied as functions are fine (see there).
    """
    choose = _chooser(model, rules) if isinstance(rules, Mapping) else rules
    check_batchnorm_eval(model)
    require_weighted_modules(model, x)
    names = {module: name for name, module in model.named_modules()
             if isinstance(module, WEIGHTED)}
    state: dict[str, Any] = {"leaves": []}

    def enter(module: nn.Module, args: tuple[Any, ...]) -> None:
        state.setdefault("input", args[0])

    def modify(module: nn.Module, args: tuple[torch.Tensor, ...],
               output: torch.Tensor) -> torch.Tensor | None:
        name, is_input = names[module], args[0] is state.get("input")
        chosen = choose(name, module, is_input)
        if chosen is None:
            return None
        if chosen.input_only and not is_input:
            raise ConfigError(f"the {chosen.name} rule applies to the input layer only, but "
                              f"layer {name!r} does not read the first weighted layer's input")
        leaves = _leaves(chosen.leaves, args[0], bounds) if is_input else {}
        state["leaves"] += leaves.values()
        parts = chosen.parts(module, args[0], output, leaves, output)
        return _Rerouted.apply(output.detach(), tuple(s for _, s in parts),
                               *(z for z, _ in parts))

    handles = [m.register_forward_pre_hook(enter) for m in names]
    handles += [m.register_forward_hook(modify) for m in names]
    try:
        with torch.enable_grad():
            # x is copied from a leaf, so that the input layer's input, whatever reads it (a
            # residual skip too), is part of the graph, and may still be changed in place
            logits = model(x.detach().requires_grad_().clone())
            if "input" not in state:
                raise ConfigError("LRP found no weighted layer (Linear or Conv) in the model")
            if logits.ndim != 2:
                raise DataError(f"LRP explains logits [N, K], the model returned "
                                f"{list(logits.shape)}")
            targets = as_targets(target, len(x), logits.shape[1]).to(logits.device)
            start = torch.zeros_like(logits).scatter_(1, targets.view(-1, 1), 1.0)
            inputs = [state["input"], *state["leaves"]]
            grads = torch.autograd.grad(logits, inputs, start, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    relevance = sum(_products(inputs, grads))
    if relevance[0].numel() != x[0].numel():
        raise ConfigError(f"the input layer takes {list(relevance.shape[1:])} per input, which "
                          f"is not a reshaping of the images {list(x.shape[1:])}; LRP returns the "
                          "relevance of the first weighted layer's input as pixel relevance")
    return relevance.reshape(x.shape)
