"""Seed 002's five relevance methods for trustmap's recurrent classifiers, LRP through time.

Every method explains one logit f_c (the target) at the model's input scale x' = (x - mean)/std
(the [-1, 1] scale) and returns a map like x, [N, 1, 28, 7T]:

- sensitivity ``(df/dx')^2`` and guided backprop ``(guided df/dx')^2`` are squared, as seed 002
  defines them (relevance as the squared partial derivative), with ``df/dx' = df/dx * std``;
- simple Taylor ``x' * df/dx'``;
- LRP alpha2-beta1 and deep Taylor (alpha1-beta0) as below.

No library propagates LRP through recurrent cells, so the pass is written out: one recorded
forward (the model's own modules, so dropout layers in train mode sample their masks), then an
explicit backward of relevance, batched over the inputs and looping over steps and layers only.
Each step of it is built from the feed-forward rules' pieces in ``trustmap.explain.lrp``
(contributions, box, shares, redistribute), so both engines share their formulas and their
zero-denominator convention; only what is specific to recurrent cells lives here.

LRP. Relevance starts at the target logit's value f_c(x), on that output only. Biases are left
out of every rule (the ReLU models' biases are -softplus(.) <= 0; what they take is not passed
on). Every denominator z is stabilised as in the feed-forward rules, ``z + 1e-6 sign(z)``
(``lrp.STABILIZER``), so an output with no contribution passes no relevance.

1. Activation layers (inputs a, any sign; Linear layers and the convolution conv2): alpha-beta
   on contributions z_ij = a_i w_ij, ``R_i = sum_j (alpha z_ij^+ / sum_i z_ij^+ - beta z_ij^- /
   sum_i z_ij^-) R_j`` with alpha - beta = 1. An output whose contributions all share one sign
   gives that sign all of R_j (there alpha-beta would pass alpha R_j, and both coincide with
   LRP-0), so relevance is conserved (up to the stabiliser) wherever an output has any
   contribution.
2. Pixel layers (x' in the box [low, high]): the z^B rule, whatever the method, with masses
   ``q_ij = x_i w_ij - low w_ij^+ - high w_ij^- >= 0``: ``R_i = sum_j q_ij / sum_i q_ij R_j``.
3. Mixed layers (inputs [pixels of step t, recurrent state]): one split per output j, pixel
   masses q_ij and the state's z_ij^+ positive, the state's z_ij^- negative, then rule 1's
   formula over them. For deep Taylor this is seed 002's shared-denominator rule.
4. ReLU cells: from h_T back through time, ``cell.hidden`` splits R(h_t) over [f_t, r_{t-1}]
   (rule 1, or rule 3 for rnn-shallow whose f_t are pixels), ``cell.recurrent`` passes
   R(r_{t-1}) to h_{t-1} (rule 1). R(f_t) of all steps then go through ``features.step`` in one
   batched pass (average pooling: the z-rule; ReLU, flatten, dropout: unchanged). Where a
   sampled dropout mask scales rnn-shallow's pixels, their box scales with them.
5. LSTM (Arras et al. 2017): gates take no relevance. R(h_t) goes wholly to c_t;
   c_t = f c_{t-1} + i g shares it in proportion to its terms, ``term / (c_t + epsilon
   sign(c_t))`` (sign(0) = +); i g's share goes to g and through tanh to g's pre-activation,
   split over x_t and h_{t-1} by rule 3; R(h_{t-1}) joins R(c_{t-1}) with f c_{t-1}'s share.
6. GRU: h_t = (1 - z) n + z h_{t-1} shares R(h_t) the same way; n's share goes to its
   pre-activation, whose contributions are the pixels and r_k h_{t-1,i} W_hn[k, i] (rule 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from trustmap.errors import ConfigError, DataError, did_you_mean
from trustmap.explain import gradient
from trustmap.explain.core import Target, as_targets, check_inputs, selected
from trustmap.explain.lrp import (
    STABILIZER,
    Layer,
    Part,
    box,
    contributions,
    redistribute,
    shares,
    stabilize,
)
from trustmap.models.base import INPUT_SIZE
from trustmap.models.recurrent import (
    ARCHITECTURES,
    STEP_WIDTH,
    NegativeBiasConv2d,
    NegativeBiasLinear,
    RecurrentClassifier,
    strips,
    unstrip,
)

METHODS: tuple[str, ...] = ("sensitivity", "simple-taylor", "guided-backprop", "lrp-alpha2-beta1",
                            "lrp-deep-taylor")
"""Seed 002's relevance methods, by the names ``relevance`` takes."""

Bound = float | torch.Tensor
"""A bound of the pixel box: one number, or a tensor broadcasting to the pixels."""


def _conv(padding: int) -> Layer:
    """A stride-1 convolution with zero padding (NegativeBiasConv2d's map), channels-last (on a
    CPU about 2x faster for these small convolutions, forward and backward)."""
    return lambda a, weight: F.conv2d(a.contiguous(memory_format=torch.channels_last),
                                      weight.contiguous(memory_format=torch.channels_last),
                                      padding=padding)


_WEIGHTED = (nn.Linear, NegativeBiasLinear, NegativeBiasConv2d)
_PASSING = (nn.ReLU, nn.Dropout, nn.Identity)
"""Layers relevance passes unchanged, elementwise."""


def _layer(layer: nn.Module) -> Layer:
    return _conv(layer.padding) if isinstance(layer, NegativeBiasConv2d) else F.linear


def _conserving(relevance: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                alpha: float, beta: float) -> list[Part]:
    """Alpha-beta's parts, except that an output whose contributions all have one sign gives
    that sign all of R (where alpha-beta would pass alpha R or beta R)."""
    up = negative.detach().ne(0).to(relevance.dtype).mul_(alpha - 1.0).add_(1.0)
    down = positive.detach().ne(0).to(relevance.dtype).mul_(-beta - 1.0).add_(1.0)
    return shares(relevance, [(up, positive), (down, negative)], STABILIZER)


def _bounds(x: torch.Tensor, low: Bound, high: Bound) -> list[torch.Tensor]:
    return [torch.as_tensor(bound, dtype=x.dtype, device=x.device).expand_as(x)
            for bound in (low, high)]


def _alpha_beta(a: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor, alpha: float,
                beta: float, layer: Layer = F.linear) -> torch.Tensor:
    """Rule 1: the relevance of a layer's inputs a (any sign) from that of its outputs."""
    def build(a: torch.Tensor) -> list[Part]:
        return _conserving(relevance, *contributions(layer, a, weight.detach()), alpha, beta)

    return redistribute(build, a)[0]


def _zbox(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor, low: Bound,
          high: Bound, layer: Layer = F.linear) -> torch.Tensor:
    """Rule 2: the relevance of pixels x in the box [low, high] from that of the outputs."""
    def build(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> list[Part]:
        return shares(relevance, [(1.0, box(layer, x, low, high, weight.detach()))], STABILIZER)

    return sum(redistribute(build, x, *_bounds(x, low, high)))


def _mixed(x: torch.Tensor, a: torch.Tensor, weight_x: torch.Tensor, weight_a: torch.Tensor,
           relevance: torch.Tensor, alpha: float, beta: float, low: Bound, high: Bound,
           gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rule 3: relevance of pixels x and state a for outputs ``x W_x + gate * (a W_a)``.

    `gate` (> 0, like the outputs) scales the state's contributions (the GRU's reset gate).
    """
    def build(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
              a: torch.Tensor) -> list[Part]:
        positive, negative = contributions(F.linear, a, weight_a.detach())
        if gate is not None:
            positive, negative = positive * gate, negative * gate
        masses = box(F.linear, x, low, high, weight_x.detach())
        return _conserving(relevance, masses + positive, negative, alpha, beta)

    pixels, of_low, of_high, state = redistribute(build, x, *_bounds(x, low, high), a)
    return pixels + of_low + of_high, state


def _split(first: torch.Tensor, second: torch.Tensor, total: torch.Tensor,
           relevance: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The relevance of ``total = first + second`` shared in proportion to the two terms:
    ``term / stabilize(total, epsilon) R``, the epsilon rule's share."""
    scale = relevance / stabilize(total, epsilon)
    return first * scale, second * scale


def _pool(layer: nn.Module, a: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """The z-rule through average pooling: each input's share of its pooled mean."""
    return redistribute(lambda a: shares(relevance, [(1.0, layer(a))], STABILIZER), a)[0]


def _record(layers: nn.Sequential, a: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each layer's input and the last output of a forward through `layers`."""
    inputs = []
    for layer in layers:
        inputs.append(a)
        a = layer(a)
    return inputs, a


def _through(layers: nn.Sequential, inputs: Sequence[torch.Tensor], relevance: torch.Tensor,
             alpha: float, beta: float, box: tuple[Bound, Bound] | None) -> torch.Tensor:
    """Relevance back through recorded `layers`; with a `box`, the first weighted layer takes
    pixels (z^B) and the others rule 1."""
    weighted = [i for i, layer in enumerate(layers) if isinstance(layer, _WEIGHTED)]
    for index in reversed(range(len(layers))):
        layer, a = layers[index], inputs[index]
        if isinstance(layer, _WEIGHTED):
            if box is not None and index == weighted[0]:
                relevance = _zbox(a, layer.weight, relevance, *box, layer=_layer(layer))
            else:
                relevance = _alpha_beta(a, layer.weight, relevance, alpha, beta, _layer(layer))
        elif isinstance(layer, nn.AvgPool2d):
            relevance = _pool(layer, a, relevance)
        elif isinstance(layer, nn.Flatten):
            relevance = relevance.reshape(a.shape)
        elif not isinstance(layer, _PASSING):
            raise ConfigError(f"recurrent LRP has no rule for a {type(layer).__name__} layer; "
                              "it explains trustmap's recurrent architectures as built")
    return relevance


def _head(head: nn.Sequential, h: torch.Tensor, targets: torch.Tensor, alpha: float,
          beta: float) -> torch.Tensor:
    """R(h_T): the target logit's value, back through the head."""
    inputs, logits = _record(head, h)
    start = torch.zeros_like(logits).scatter_(1, targets.view(-1, 1),
                                              selected(logits, targets).view(-1, 1))
    return _through(head, inputs, start, alpha, beta, None)


def _relu_lrp(model: RecurrentClassifier, x: torch.Tensor, targets: torch.Tensor, alpha: float,
              beta: float, box: tuple[float, float]) -> torch.Tensor:
    """Rule 4 on normalised images x: the ReLU cells through time."""
    step, cell = model.features.step, model.features.cell
    steps = strips(x)
    n, t = steps.shape[:2]
    step_inputs, f = _record(step, steps.reshape(n * t, *steps.shape[2:]))
    f = f.view(n, t, -1)
    r = f.new_zeros(n, cell.recurrent_size)
    inputs, keeps, hidden = [], [], []
    for k in range(t):
        joined = torch.cat([f[:, k], r], 1)
        # The dropout module draws its mask on ones, so the mask is known (for the pixel box)
        # and as many random numbers are drawn as the model's own forward draws.
        keep = cell.drop(torch.ones_like(joined))
        inputs.append(joined * keep)
        h = cell.hidden_relu(cell.hidden(inputs[-1]))
        r = cell.recurrent_relu(cell.recurrent(h))
        keeps.append(keep)
        hidden.append(h)
    relevance_h = _head(model.head, hidden[-1], targets, alpha, beta)
    width = cell.features
    pixel_cell = not any(isinstance(layer, _WEIGHTED) for layer in step)  # rnn-shallow
    weight = cell.hidden.weight
    relevance_f = []
    for k in reversed(range(t)):
        a = inputs[k]
        if pixel_cell:  # rule 3, in the box the dropout mask scales
            keep = keeps[k][:, :width]
            relevance_step, relevance_r = _mixed(
                a[:, :width], a[:, width:], weight[:, :width], weight[:, width:], relevance_h,
                alpha, beta, keep * box[0], keep * box[1])
        else:
            joined = _alpha_beta(a, weight, relevance_h, alpha, beta)
            relevance_step, relevance_r = joined[:, :width], joined[:, width:]
        relevance_f.append(relevance_step)
        if k:
            relevance_h = _alpha_beta(hidden[k - 1], cell.recurrent.weight, relevance_r, alpha,
                                      beta)
    relevance = torch.stack(relevance_f[::-1], 1).flatten(0, 1)
    relevance = _through(step, step_inputs, relevance, alpha, beta, None if pixel_cell else box)
    return unstrip(relevance.reshape(steps.shape))


def _gated_lrp(model: RecurrentClassifier, x: torch.Tensor, targets: torch.Tensor, alpha: float,
               beta: float, box: tuple[float, float], epsilon: float) -> torch.Tensor:
    """Rules 5 and 6 on normalised images x: the LSTM's or GRU's forward recomputed step by step
    from its weights, then relevance back through time."""
    rnn = model.features.rnn
    lstm = isinstance(rnn, nn.LSTM)
    steps = strips(x)
    n, t = steps.shape[:2]
    pixels = steps.flatten(2)
    size = rnn.hidden_size
    candidate = slice(2 * size, 3 * size)  # g of (i, f, g, o); n of (r, z, n)
    from_x = F.linear(pixels, rnn.weight_ih_l0, rnn.bias_ih_l0)  # every step at once
    h = c = pixels.new_zeros(n, size)
    records = []
    for k in range(t):
        from_h = F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
        if lstm:
            i, f, g, o = (from_x[:, k] + from_h).chunk(4, 1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c_new = f * c + i * g
            records.append((h, f * c, i * g, c_new, None))
            h, c = o * c_new.tanh(), c_new
        else:
            x_reset, x_update, x_new = from_x[:, k].chunk(3, 1)
            h_reset, h_update, h_new = from_h.chunk(3, 1)
            reset, update = (x_reset + h_reset).sigmoid(), (x_update + h_update).sigmoid()
            new = (x_new + reset * h_new).tanh()
            kept, fresh = update * h, (1 - update) * new
            records.append((h, kept, fresh, fresh + kept, reset))
            h = fresh + kept
    # R(h_t) goes wholly to c_t in an LSTM, so one running relevance serves both cells:
    # R(c_{t-1}) = R(h_{t-1}) + f c_{t-1}'s share, and R(h_{t-1}) of a GRU has the same paths.
    relevance_h = _head(model.head, h, targets, alpha, beta)
    weight_x, weight_h = rnn.weight_ih_l0[candidate], rnn.weight_hh_l0[candidate]
    relevance_x = []
    for k in reversed(range(t)):
        h_prev, kept, fresh, total, reset = records[k]
        kept_share, fresh_share = _split(kept, fresh, total, relevance_h, epsilon)
        relevance_pixels, relevance_state = _mixed(pixels[:, k], h_prev, weight_x, weight_h,
                                                   fresh_share, alpha, beta, *box, gate=reset)
        relevance_x.append(relevance_pixels)
        relevance_h = relevance_state + kept_share
    return unstrip(torch.stack(relevance_x[::-1], 1).reshape(steps.shape))


def _prepare(model: nn.Module, x: torch.Tensor,
             target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked images [N, C, 28, 7T] on the model's device and one class per image."""
    if not isinstance(model, RecurrentClassifier):
        raise ConfigError(
            f"these relevance methods are for trustmap's recurrent models "
            f"({', '.join(ARCHITECTURES)}), got a {type(model).__name__}; explain feed-forward "
            "models with trustmap.explain.lrp (and trustmap.explain.gradient)")
    if isinstance(x, torch.Tensor) and x.ndim == 4 and (
            tuple(x.shape[1:3]) != (model.in_channels, INPUT_SIZE) or x.shape[3] == 0
            or x.shape[3] % STEP_WIDTH):
        raise DataError(f"model {model.name!r} reads images [N, {model.in_channels}, "
                        f"{INPUT_SIZE}, 7T] (T steps of {STEP_WIDTH} columns), got "
                        f"{list(x.shape)}; pad or crop the width to a multiple of {STEP_WIDTH}")
    x = check_inputs(model, x)
    return x, as_targets(target, len(x), model.num_classes).to(x.device)


def _std(model: RecurrentClassifier) -> torch.Tensor:
    return model.normalize.std


def sensitivity(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """``(df/dx')^2``: seed 002's sensitivity analysis squares the partial derivatives."""
    x, targets = _prepare(model, x, target)
    return (gradient.input_gradient(model, x, targets) * _std(model)).square()


def simple_taylor(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """``x' * df/dx'``: the first-order Taylor term at the input scale (root point x' = 0)."""
    x, targets = _prepare(model, x, target)
    with torch.no_grad():
        scaled = model.normalize(x)
    return scaled * gradient.input_gradient(model, x, targets) * _std(model)


def guided_backprop(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """``(guided df/dx')^2``, squared as seed 002 defines it; the gated cells have no ReLU
    modules, so for them it is the sensitivity."""
    x, targets = _prepare(model, x, target)
    # The engine itself, not gradient.guided_backprop: seed 002 defines guided backprop of a
    # gated cell (no ReLU module) as the sensitivity, which that function would refuse.
    modified = gradient.modified_relu_gradient(model, x, targets, guided=True)
    return (modified * _std(model)).square()


def _number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def lrp(model: nn.Module, x: torch.Tensor, target: Target, *, alpha: float = 2.0,
        beta: float = 1.0, low: float = -1.0, high: float = 1.0,
        epsilon: float = 1e-3) -> torch.Tensor:
    """LRP through time (see the module's docstring) of the target logit, as pixel relevance.

    alpha - beta must be 1 (alpha=1, beta=0 is deep Taylor); [low, high] is the box of the
    model's inputs x' (normalize maps [0, 1] to [-1, 1] for mean = std = 0.5); `epsilon`
    stabilises the gated cells' proportional splits.
    """
    alpha, beta = _number("alpha", alpha), _number("beta", beta)
    low, high, epsilon = _number("low", low), _number("high", high), _number("epsilon", epsilon)
    if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
        raise ConfigError(f"alpha and beta must be >= 0 with alpha - beta = 1 (so relevance is "
                          f"conserved), got alpha={alpha}, beta={beta}; e.g. alpha=2, beta=1")
    if not low < high or epsilon <= 0:
        raise ConfigError(f"need low < high and epsilon > 0, got low={low}, high={high}, "
                          f"epsilon={epsilon}")
    x, targets = _prepare(model, x, target)
    parameter = next(model.parameters())
    with torch.no_grad():
        scaled = model.normalize(x.to(parameter.dtype))
        slack = 1e-5 * max(1.0, abs(low), abs(high))
        if float(scaled.min()) < low - slack or float(scaled.max()) > high + slack:
            raise ConfigError(
                f"the model's inputs x' span [{float(scaled.min()):.4g}, "
                f"{float(scaled.max()):.4g}], outside the pixel box [{low}, {high}]; pass "
                "low and high = the model's normalize applied to 0 and 1")
        if model.gated:
            maps = _gated_lrp(model, scaled, targets, alpha, beta, (low, high), epsilon)
        else:
            maps = _relu_lrp(model, scaled, targets, alpha, beta, (low, high))
    return maps.float()


_FUNCTIONS: dict[str, Callable[[nn.Module, torch.Tensor, Target], torch.Tensor]] = {
    "sensitivity": sensitivity,
    "simple-taylor": simple_taylor,
    "guided-backprop": guided_backprop,
    "lrp-alpha2-beta1": lrp,
    "lrp-deep-taylor": partial(lrp, alpha=1.0, beta=0.0),
}


def relevance(method: str, model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """The map of one of METHODS for the target logit, [N, 1, 28, 7T]."""
    if method not in _FUNCTIONS:
        raise ConfigError(f"unknown recurrent relevance method {method!r}"
                          f"{did_you_mean(method, METHODS)}; choose one of {', '.join(METHODS)}")
    return _FUNCTIONS[method](model, x, target)


def step_relevance(maps: torch.Tensor) -> torch.Tensor:
    """Relevance per step, [N, T]: each map summed over its 7-column strips."""
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[3] == 0 \
            or maps.shape[3] % STEP_WIDTH:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise DataError(f"step_relevance takes maps [N, C, H, 7T], got {shape}")
    n, channels, height, width = maps.shape
    return maps.reshape(n, channels, height, width // STEP_WIDTH, STEP_WIDTH).sum((1, 2, 4))
