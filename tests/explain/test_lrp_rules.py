"""Every LRP rule against its explicit formula, on one Linear and one Conv2d layer.

The formulas are written per output over the input vector (for a convolution, over each
unfolded patch), independently of the hook machinery they check.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustmap.errors import ConfigError
from trustmap.explain.lrp import (
    RULES,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    WSquare,
    ZBox,
    layer_relevance,
    propagate,
    rule,
    zplus,
)

EPS = 1e-6


def stab(z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return z + eps * (2 * (z >= 0).to(z.dtype) - 1)


def share(contributions: torch.Tensor, denominator: torch.Tensor,
          relevance: torch.Tensor) -> torch.Tensor:
    """R_i = sum_j contributions[i, j] / denominator[j] * R_j, per row m: [M, I, O] -> [M, I]."""
    return (contributions / denominator[:, None, :] * relevance[:, None, :]).sum(-1)


# Each formula maps (W [O, I], b [O] or None, a [M, I], R [M, O], u, l, h [M, I]) to R_in [M, I];
# u marks the real inputs (0 in a convolution's padding), l and h are the bounds of z^B.


def epsilon_formula(w, b, a, r, u, low, high, eps=EPS):
    z = a @ w.T + (0 if b is None else b)
    return share(a[:, :, None] * w.T, stab(z, eps), r)


def alpha_beta_formula(w, b, a, r, u, low, high, alpha=2.0, beta=1.0, bias=False):
    wp, wn, ap, an = w.clamp(min=0), w.clamp(max=0), a.clamp(min=0), a.clamp(max=0)
    positive = ap[:, :, None] * wp.T + an[:, :, None] * wn.T
    negative = ap[:, :, None] * wn.T + an[:, :, None] * wp.T
    zp, zn = positive.sum(1), negative.sum(1)
    if bias and b is not None:
        zp, zn = zp + b.clamp(min=0), zn + b.clamp(max=0)
    return alpha * share(positive, stab(zp), r) - beta * share(negative, stab(zn), r)


def gamma_formula(w, b, a, r, u, low, high, gamma=0.25):
    up, down = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
    ap, an = a.clamp(min=0), a.clamp(max=0)
    favour_pos = ap[:, :, None] * up.T + an[:, :, None] * down.T
    favour_neg = ap[:, :, None] * down.T + an[:, :, None] * up.T
    y = a @ w.T + (0 if b is None else b)
    zp, zn = favour_pos.sum(1), favour_neg.sum(1)
    if b is not None:
        zp, zn = zp + b + gamma * b.clamp(min=0), zn + b + gamma * b.clamp(max=0)
    return (share(favour_pos, stab(zp), r * (y > 0)) + share(favour_neg, stab(zn), r * (y < 0)))


def flat_formula(w, b, a, r, u, low, high):
    contributions = u[:, :, None].expand(-1, -1, w.shape[0])
    return share(contributions, stab(contributions.sum(1)), r)


def wsquare_formula(w, b, a, r, u, low, high):
    contributions = u[:, :, None] * w.T.square()
    return share(contributions, stab(contributions.sum(1)), r)


def zbox_formula(w, b, a, r, u, low, high):
    contributions = (a[:, :, None] * w.T - low[:, :, None] * w.clamp(min=0).T
                     - high[:, :, None] * w.clamp(max=0).T)
    return share(contributions, stab(contributions.sum(1)), r)


CASES = [
    ("epsilon", Epsilon(), epsilon_formula),
    ("epsilon-large", Epsilon(epsilon=0.3), lambda *args: epsilon_formula(*args, eps=0.3)),
    ("alpha2-beta1", AlphaBeta(2.0, 1.0), alpha_beta_formula),
    ("alpha2-beta1-bias", AlphaBeta(2.0, 1.0, bias=True),
     lambda *args: alpha_beta_formula(*args, bias=True)),
    ("alpha1-beta0", AlphaBeta(1.0, 0.0), lambda *args: alpha_beta_formula(*args, 1.0, 0.0)),
    ("alpha3-beta2", AlphaBeta(3.0, 2.0), lambda *args: alpha_beta_formula(*args, 3.0, 2.0)),
    ("zplus", zplus(), lambda *args: alpha_beta_formula(*args, 1.0, 0.0)),
    ("gamma", Gamma(), gamma_formula),
    ("gamma-1", Gamma(gamma=1.0), lambda *args: gamma_formula(*args, gamma=1.0)),
    ("flat", Flat(), flat_formula),
    ("wsquare", WSquare(), wsquare_formula),
    ("zb", ZBox(), zbox_formula),
]
IDS = [case[0] for case in CASES]


def linear_layer(bias: bool = True) -> nn.Linear:
    """5 -> 4; the last output is a_0 - a_1, zero for `inputs` (the gamma rule gives an output
    of 0 no relevance, though its contributions are not 0)."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 4, bias=bias).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.weight[-1] = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0])
        if bias:
            layer.bias.normal_(0, 0.5)
            layer.bias[-1] = 0.0
    return layer


def inputs(signed: bool, shape: tuple[int, ...], low: torch.Tensor,
           high: torch.Tensor) -> torch.Tensor:
    """Random inputs inside [low, high] (signed), or inside [0, high] (as after a ReLU); vectors
    get equal first two entries."""
    torch.manual_seed(1)
    fraction = torch.rand(shape, dtype=torch.float64)
    bottom = low if signed else torch.zeros_like(low)
    values = bottom + fraction * (high - bottom)
    if values.ndim == 2:
        values[:, 1] = values[:, 0]
    return values


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "positive"])
@pytest.mark.parametrize(("name", "chosen", "formula"), CASES, ids=IDS)
def test_linear_rule_matches_formula(name, chosen, formula, signed) -> None:
    layer = linear_layer()
    low = torch.tensor([[-1.0, -0.5, -2.0, -1.0, -0.3]], dtype=torch.float64)
    high = torch.tensor([[1.0, 2.0, 0.5, 1.5, 0.7]], dtype=torch.float64)
    a = inputs(signed, (4, 5), low, high)
    r_out = torch.randn(4, 4, dtype=torch.float64)
    got = layer_relevance(layer, chosen, a, r_out, bounds=(low, high))
    expected = formula(layer.weight.detach(), layer.bias.detach(), a, r_out, torch.ones_like(a),
                       low.expand_as(a), high.expand_as(a))
    assert got.shape == a.shape
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "chosen", "formula"), CASES, ids=IDS)
def test_conv_rule_matches_unfolded_formula(name, chosen, formula) -> None:
    torch.manual_seed(2)
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    with torch.no_grad():
        layer.bias.normal_(0, 0.5)
    low = torch.tensor([-1.0, -0.5], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 5, 5)
    high = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 5, 5)
    a = inputs(True, (2, 2, 5, 5), low, high)
    r_out = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    got = layer_relevance(layer, chosen, a, r_out, bounds=(low, high))

    def patches(t: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N * L, C * 9]
        unfolded = F.unfold(t.expand_as(a), 3, padding=1, stride=2)
        return unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])

    per_patch = formula(layer.weight.detach().reshape(3, -1), layer.bias.detach(), patches(a),
                        r_out.flatten(2).transpose(1, 2).reshape(-1, 3),
                        patches(torch.ones_like(a)), patches(low), patches(high))
    expected = F.fold(per_patch.reshape(2, 9, -1).transpose(1, 2), (5, 5), 3, padding=1, stride=2)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_gamma_is_montavons_rule_for_positive_inputs_and_outputs() -> None:
    layer = linear_layer()
    a = torch.rand(6, 5, dtype=torch.float64)
    w, b, g = layer.weight.detach(), layer.bias.detach(), 0.25
    y = a @ w.T + b
    r_out = torch.rand(6, 4, dtype=torch.float64) * (y > 0)  # only positive outputs matter
    modified = w + g * w.clamp(min=0)
    z = (a @ modified.T + b + g * b.clamp(min=0)).where(y > 0, 1.0)  # others: no relevance
    expected = (a[:, :, None] * modified.T / z[:, None, :] * r_out[:, None, :]).sum(-1)
    got = layer_relevance(layer, Gamma(gamma=g, epsilon=1e-300), a, r_out)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "chosen", "formula"), CASES, ids=IDS)
def test_hooked_network_matches_composed_formulas(name, chosen, formula) -> None:
    """Through propagate: the second layer sees the true activations, the ReLU passes
    relevance, and the backward starts from the target logit."""
    torch.manual_seed(3)
    first = linear_layer()
    second = nn.Linear(4, 4).double()
    model = nn.Sequential(first, nn.ReLU(), second)
    low = torch.full((1, 5), -1.0, dtype=torch.float64)
    high = torch.full((1, 5), 1.5, dtype=torch.float64)
    a = inputs(True, (6, 5), low, high)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    inner = Epsilon(epsilon=0.01) if chosen.input_only else chosen
    got = propagate(model, a, target, {"0": chosen, "2": inner}, bounds=(low, high))

    hidden = torch.relu(a @ first.weight.detach().T + first.bias.detach())
    logits = hidden @ second.weight.detach().T + second.bias.detach()
    r_top = F.one_hot(target, 4) * logits
    inner_formula = (lambda *args: epsilon_formula(*args, eps=0.01)) if chosen.input_only \
        else formula
    r_hidden = inner_formula(second.weight.detach(), second.bias.detach(), hidden, r_top,
                             torch.ones_like(hidden), None, None)
    expected = formula(first.weight.detach(), first.bias.detach(), a, r_hidden,
                       torch.ones_like(a), low.expand_as(a), high.expand_as(a))
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


def test_layer_without_rule_propagates_lrp0() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(linear_layer(bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    model.double()
    a = torch.randn(5, 5, dtype=torch.float64)
    got = propagate(model, a, 1, {})
    leaf = a.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(leaf)[:, 1].sum(), leaf)
    torch.testing.assert_close(got, a * grad)


def test_rule_names_and_parameters_are_checked() -> None:
    for name in RULES:
        assert rule(name).epsilon == EPS
    assert rule("alpha1-beta0") == AlphaBeta(1.0, 0.0) == zplus()
    with pytest.raises(ConfigError, match="known rules: epsilon, gamma"):
        rule("epsilom")
    with pytest.raises(ConfigError, match="alpha - beta must be 1"):
        AlphaBeta(2.0, 2.0)
    with pytest.raises(ConfigError, match="epsilon"):
        Epsilon(epsilon=0.0)
    with pytest.raises(ConfigError, match="gamma"):
        Gamma(gamma=-1.0)
    with pytest.raises(ConfigError, match="beta"):
        AlphaBeta(0.5, -0.5)


def test_input_only_rules_refuse_inner_layers_and_clean_up() -> None:
    model = nn.Sequential(linear_layer(), nn.ReLU(), nn.Linear(4, 2).double())
    with pytest.raises(ConfigError, match="input layer only"):
        propagate(model, torch.rand(2, 5, dtype=torch.float64), 0, {"2": Flat()})
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="does not have"):
        propagate(model, torch.rand(2, 5, dtype=torch.float64), 0, {"fc": Flat()})
    with pytest.raises(ConfigError, match="apply to"):
        propagate(model, torch.rand(2, 5, dtype=torch.float64), 0, {"1": Epsilon()})
    with pytest.raises(ConfigError, match="bounds"):
        propagate(model, torch.rand(2, 5, dtype=torch.float64), 0, {"0": ZBox()})


def test_in_place_activations_after_a_ruled_layer() -> None:
    torch.manual_seed(5)
    plain = nn.Sequential(linear_layer(), nn.ReLU(), nn.Linear(4, 3).double())
    in_place = nn.Sequential(plain[0], nn.ReLU(inplace=True), plain[2])
    a = torch.randn(4, 5, dtype=torch.float64)
    rules = {"0": Gamma(), "2": Epsilon()}
    torch.testing.assert_close(propagate(in_place, a, 2, rules), propagate(plain, a, 2, rules))


@pytest.mark.parametrize("chosen", [AlphaBeta(2.0, 1.0), AlphaBeta(1.0, 0.0, bias=True), ZBox()],
                         ids=["alpha2-beta1", "alpha1-beta0-bias", "zb"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "positive"])
def test_grouped_conv_equals_its_block_diagonal_dense_twin(chosen, signed) -> None:
    """Grouped convs cannot stack channels, so rules take their unstacked path there; it must
    agree with the stacked path on the same layer written as a dense block-diagonal conv."""
    torch.manual_seed(3)
    grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    dense = nn.Conv2d(4, 6, 3, padding=1).double()
    with torch.no_grad():
        dense.weight.zero_()
        dense.weight[:3, :2] = grouped.weight[:3]
        dense.weight[3:, 2:] = grouped.weight[3:]
        dense.bias.copy_(grouped.bias)
    low, high = torch.full((1, 4, 1, 1), -1.0).double(), torch.full((1, 4, 1, 1), 1.5).double()
    a = inputs(signed, (2, 4, 5, 5), low.expand(1, 4, 5, 5), high.expand(1, 4, 5, 5))
    r_out = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    got = layer_relevance(grouped, chosen, a, r_out, bounds=(low, high))
    expected = layer_relevance(dense, chosen, a, r_out, bounds=(low, high))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
