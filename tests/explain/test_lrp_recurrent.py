"""Seed 002's relevance methods on the recurrent models: every LRP rule against its formula,
hand-chained cells, conservation, feed-forward LRP at one step, gradients, a model left intact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from explain_support import assert_untouched, state
from torch import nn

from trustmap.errors import ConfigError, DataError, ModelError
from trustmap.explain.composites import Composite
from trustmap.explain.composites import lrp as feedforward_lrp
from trustmap.explain.gradient import guided_backprop as plain_guided_backprop
from trustmap.explain.gradient import modified_relu_gradient
from trustmap.explain.lrp import STABILIZER, AlphaBeta, ZBox, stabilize
from trustmap.explain.lrp_recurrent import (
    METHODS,
    _alpha_beta,
    _mixed,
    _split,
    _zbox,
    guided_backprop,
    lrp,
    relevance,
    sensitivity,
    simple_taylor,
    step_relevance,
)
from trustmap.models import Normalize, build
from trustmap.models.recurrent import ARCHITECTURES, NegativeBiasConv2d, NegativeBiasLinear


def model_of(name: str, seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    return build(name, mean=0.5, std=0.5, **kwargs).eval()


def bias_free(model: nn.Module) -> nn.Module:
    """Every bias zero (raw biases at -200: softplus underflows to 0), so LRP must conserve."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, NegativeBiasLinear | NegativeBiasConv2d):
                module.raw_bias.fill_(-200.0)
            elif isinstance(module, nn.Linear):
                module.bias.zero_()
            elif isinstance(module, nn.LSTM | nn.GRU):
                module.bias_ih_l0.zero_()
                module.bias_hh_l0.zero_()
    return model


def images(n: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Sparse random images [n, 1, 28, 7 steps]: half the pixels black (x' = -1, the box's
    lower bound), the rest uniform."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 1, 28, 7 * steps)
    return torch.rand(shape, generator=generator) * (torch.rand(shape, generator=generator) > 0.5)


def target_logits(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, targets.view(-1, 1)).squeeze(1)


def assert_conserved(maps: torch.Tensor, logits: torch.Tensor) -> None:
    torch.testing.assert_close(maps.sum((1, 2, 3)), logits, rtol=1e-4,
                               atol=1e-4 * float(logits.abs().max()))


# --- each rule against its formula, written out per (i, j) -------------------------------


def explicit_shares(positive: torch.Tensor, negative: torch.Tensor, alpha: float,
                    beta: float) -> torch.Tensor:
    """Shares [B, I, J] of output j's relevance for positive masses and negative contributions
    [B, I, J]: alpha pos/sum - beta neg/sum; an output with masses of one sign only gives them
    all (LRP-0), one with none gives nothing. Every sum is stabilised as the feed-forward rules
    do it, ``sum + STABILIZER sign(sum)``."""
    shares = torch.zeros_like(positive)
    batch, inputs, outputs = positive.shape
    for b in range(batch):
        for j in range(outputs):
            up, down = positive[b, :, j].sum(), negative[b, :, j].sum()
            stable_up, stable_down = stabilize(up, STABILIZER), stabilize(down, STABILIZER)
            for i in range(inputs):
                if up != 0 and down != 0:
                    shares[b, i, j] = (alpha * positive[b, i, j] / stable_up
                                       - beta * negative[b, i, j] / stable_down)
                elif up != 0:
                    shares[b, i, j] = positive[b, i, j] / stable_up
                elif down != 0:
                    shares[b, i, j] = negative[b, i, j] / stable_down
    return shares


def zb_masses(x: torch.Tensor, weight: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """q_bij = x_bi w_ji - low w_ji^+ - high w_ji^-, [B, I, J]."""
    w = weight.T[None]
    return x[:, :, None] * w - low * w.clamp(min=0) - high * w.clamp(max=0)


def random_layer(signed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs [2, 5], weights [3, 5] and output relevance [2, 3] (float64); output 0 gets
    positive weights only, so for inputs >= 0 it has no negative contribution."""
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    weight[0] = weight[0].abs()
    relevance = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    return (a if signed else a.abs()), weight, relevance


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 1.0), (1.0, 0.0), (1.5, 0.5)])
def test_alpha_beta_is_its_formula(signed, alpha, beta):
    a, weight, out = random_layer(signed)
    z = a[:, :, None] * weight.T[None]
    shares = explicit_shares(z.clamp(min=0), z.clamp(max=0), alpha, beta)
    expected = torch.einsum("bij,bj->bi", shares, out)
    torch.testing.assert_close(_alpha_beta(a, weight, out, alpha, beta), expected)
    # conserved (up to the stabiliser), also by output 0 whose contributions are all positive
    # when a >= 0
    torch.testing.assert_close(expected.sum(1), out.sum(1), rtol=1e-4, atol=1e-6)


def test_zbox_is_its_formula():
    _, weight, out = random_layer(True)
    x = torch.rand(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    x[0, :2] = -1.0  # pixels at the box's bounds
    x[1, 2] = 1.0
    q = zb_masses(x, weight, -1.0, 1.0)
    assert bool((q >= 0).all())
    expected = torch.einsum("bij,bj->bi", q / (q.sum(1, keepdim=True) + STABILIZER), out)
    torch.testing.assert_close(_zbox(x, weight, out, -1.0, 1.0), expected)


@pytest.mark.parametrize("state_zero", [False, True])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 1.0), (1.0, 0.0)])
def test_mixed_rule_is_its_formula(alpha, beta, gated, state_zero):
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(2, 4, dtype=torch.float64, generator=generator) * 2 - 1
    a = torch.randn(2, 5, dtype=torch.float64, generator=generator) * (not state_zero)
    weight_x = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    weight_a = torch.randn(3, 5, dtype=torch.float64, generator=generator)
    out = torch.randn(2, 3, dtype=torch.float64, generator=generator)
    gate = torch.rand(2, 3, dtype=torch.float64, generator=generator) if gated else None
    z = a[:, :, None] * weight_a.T[None] * (1.0 if gate is None else gate[:, None, :])
    q = zb_masses(x, weight_x, -1.0, 1.0)
    positive = torch.cat([q, z.clamp(min=0)], 1)
    negative = torch.cat([torch.zeros_like(q), z.clamp(max=0)], 1)
    expected = torch.einsum("bij,bj->bi", explicit_shares(positive, negative, alpha, beta), out)
    got_x, got_a = _mixed(x, a, weight_x, weight_a, out, alpha, beta, -1.0, 1.0, gate=gate)
    torch.testing.assert_close(torch.cat([got_x, got_a], 1), expected)
    torch.testing.assert_close(expected.sum(1), out.sum(1), rtol=1e-4, atol=1e-6)
    if state_zero:  # r_0 = 0: the pixels take everything, with alpha-beta as with z+
        torch.testing.assert_close(got_x.sum(1), out.sum(1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_split_is_its_formula(cell):
    generator = torch.Generator().manual_seed(6)
    f, i, o = torch.rand(3, 2, 4, dtype=torch.float64, generator=generator)
    old, g = torch.randn(2, 2, 4, dtype=torch.float64, generator=generator)
    g[0, 0], old[0, 0] = 0.0, 0.0  # a zero total of zero terms
    out = torch.randn(2, 4, dtype=torch.float64, generator=generator)
    eps = 1e-3
    if cell == "lstm":  # c = f c_prev + i g
        first, second = f * old, i * g
    else:  # h = z h_prev + (1 - z) n
        first, second = o * old, (1 - o) * g.tanh()
    first[1, 1], second[1, 1] = 0.25, -0.25  # a zero total of opposite terms: sign(0) is +
    total = first + second
    expected_first, expected_second = torch.zeros_like(out), torch.zeros_like(out)
    for b in range(2):
        for k in range(4):
            sign = 1.0 if total[b, k] >= 0 else -1.0
            expected_first[b, k] = first[b, k] / (total[b, k] + eps * sign) * out[b, k]
            expected_second[b, k] = second[b, k] / (total[b, k] + eps * sign) * out[b, k]
    got = _split(first, second, total, out, eps)
    torch.testing.assert_close(got, (expected_first, expected_second))
    assert got[0][0, 0] == 0 and got[1][0, 0] == 0


# --- whole models against the rules chained by hand ---------------------------------------


def step_pixels(x: torch.Tensor) -> list[torch.Tensor]:
    """The normalised pixels of each 7-column step, flattened: [N, 196] per step."""
    scaled = (x - 0.5) / 0.5
    return [scaled[..., 7 * k:7 * k + 7].flatten(1) for k in range(x.shape[-1] // 7)]


def as_map(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.view(-1, 1, 28, 7) for p in parts], 3)


def test_two_step_rnn_deep_chains_the_rules():
    model = model_of("rnn-deep")
    x, targets = images(3, 2), torch.tensor([1, 4, 9])
    fc1, cell, head = model.features.step.fc1, model.features.cell, model.head
    s1, s2 = step_pixels(x)
    with torch.no_grad():
        f1, f2 = (F.linear(s, fc1.weight, fc1.bias).relu() for s in (s1, s2))
        hidden, recurrent = cell.hidden, cell.recurrent
        in1 = torch.cat([f1, torch.zeros(3, 256)], 1)
        h1 = F.linear(in1, hidden.weight, hidden.bias).relu()
        r1 = F.linear(h1, recurrent.weight, recurrent.bias).relu()
        in2 = torch.cat([f2, r1], 1)
        h2 = F.linear(in2, hidden.weight, hidden.bias).relu()
        u = F.linear(h2, head.fc1.weight, head.fc1.bias).relu()
        logits = F.linear(u, head.fc2.weight, head.fc2.bias)
    torch.testing.assert_close(logits, model(x))
    start = torch.zeros_like(logits).scatter_(1, targets.view(-1, 1),
                                              logits.gather(1, targets.view(-1, 1)))
    r_h2 = _alpha_beta(h2, head.fc1.weight, _alpha_beta(u, head.fc2.weight, start, 2, 1), 2, 1)
    r_in2 = _alpha_beta(in2, hidden.weight, r_h2, 2, 1)
    r_h1 = _alpha_beta(h1, recurrent.weight, r_in2[:, 256:], 2, 1)
    r_in1 = _alpha_beta(in1, hidden.weight, r_h1, 2, 1)
    expected = as_map([_zbox(s, fc1.weight, r[:, :256], -1.0, 1.0)
                       for s, r in ((s1, r_in1), (s2, r_in2))])
    torch.testing.assert_close(lrp(model, x, targets), expected)


def test_two_step_rnn_shallow_chains_the_mixed_rule():
    model = model_of("rnn-shallow")
    x, targets = images(3, 2, seed=1), torch.tensor([0, 2, 5])
    cell, fc = model.features.cell, model.head.fc1
    w = cell.hidden.weight
    s1, s2 = step_pixels(x)
    with torch.no_grad():
        h1 = F.linear(torch.cat([s1, torch.zeros(3, 256)], 1), w, cell.hidden.bias).relu()
        r1 = F.linear(h1, cell.recurrent.weight, cell.recurrent.bias).relu()
        h2 = F.linear(torch.cat([s2, r1], 1), w, cell.hidden.bias).relu()
        logits = F.linear(h2, fc.weight, fc.bias)
    start = torch.zeros_like(logits).scatter_(1, targets.view(-1, 1),
                                              logits.gather(1, targets.view(-1, 1)))
    r_h2 = _alpha_beta(h2, fc.weight, start, 1, 0)
    r_x2, r_r1 = _mixed(s2, r1, w[:, :196], w[:, 196:], r_h2, 1, 0, -1.0, 1.0)
    r_h1 = _alpha_beta(h1, cell.recurrent.weight, r_r1, 1, 0)
    r_x1, _ = _mixed(s1, torch.zeros(3, 256), w[:, :196], w[:, 196:], r_h1, 1, 0, -1.0, 1.0)
    torch.testing.assert_close(lrp(model, x, targets, alpha=1, beta=0), as_map([r_x1, r_x2]))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_two_step_gated_cells_chain_the_rules(name):
    model = model_of(name)
    x, targets, eps = images(3, 2, seed=2), torch.tensor([3, 3, 8]), 1e-3
    rnn, fc = model.features.rnn, model.head.fc1
    size = rnn.hidden_size
    rows = slice(2 * size, 3 * size)
    w_x, w_h = rnn.weight_ih_l0[rows], rnn.weight_hh_l0[rows]
    pixels = step_pixels(x)
    h, c, records = torch.zeros(3, size), torch.zeros(3, size), []
    with torch.no_grad():
        for s in pixels:
            gx = F.linear(s, rnn.weight_ih_l0, rnn.bias_ih_l0)
            gh = F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
            if name == "lstm":
                i, f, g, o = (gx + gh).chunk(4, 1)
                i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                c_new = f * c + i * g
                records.append((s, h, f * c, i * g, c_new, None))
                h, c = o * torch.tanh(c_new), c_new
            else:
                r = torch.sigmoid(gx[:, :size] + gh[:, :size])
                z = torch.sigmoid(gx[:, size:2 * size] + gh[:, size:2 * size])
                n = torch.tanh(gx[:, rows] + r * gh[:, rows])
                h_new = (1 - z) * n + z * h
                records.append((s, h, z * h, (1 - z) * n, h_new, r))
                h = h_new
        torch.testing.assert_close(h, rnn(torch.stack(pixels, 1))[0][:, -1])
        logits = F.linear(h, fc.weight, fc.bias)
    start = torch.zeros_like(logits).scatter_(1, targets.view(-1, 1),
                                              logits.gather(1, targets.view(-1, 1)))
    r_h, r_c, parts = _alpha_beta(h, fc.weight, start, 2, 1), torch.zeros(3, size), []
    for s, h_prev, old, new, total, reset in reversed(records):
        old_share, new_share = _split(old, new, total, r_h + r_c, eps)
        r_x, r_state = _mixed(s, h_prev, w_x, w_h, new_share, 2, 1, -1.0, 1.0, gate=reset)
        parts.insert(0, r_x)
        if name == "lstm":
            r_h, r_c = r_state, old_share  # R(h_{t-1}) joins R(c_{t-1}) next step
        else:
            r_h = r_state + old_share
    torch.testing.assert_close(lrp(model, x, targets, epsilon=eps), as_map(parts))


# --- conservation --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lrp-deep-taylor", "lrp-alpha2-beta1"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_bias_free_models_conserve_the_logit(name, method):
    model = bias_free(model_of(name))
    x, targets = images(4, 3, seed=7), torch.tensor([0, 3, 7, 9])
    alpha, beta = (1.0, 0.0) if method == "lrp-deep-taylor" else (2.0, 1.0)
    maps = lrp(model, x, targets, alpha=alpha, beta=beta, epsilon=1e-9)
    assert maps.shape == x.shape and maps.dtype == torch.float32
    assert_conserved(maps, target_logits(model, x, targets))


@pytest.mark.parametrize("name", ["rnn-convdeep", "lstm"])
def test_twelve_steps_conserve_the_logit(name):
    model = bias_free(model_of(name))
    x, targets = images(2, 12, seed=8), torch.tensor([2, 6])
    maps = lrp(model, x, targets, epsilon=1e-9)  # alpha2-beta1
    assert_conserved(maps, target_logits(model, x, targets))
    steps = step_relevance(maps)
    assert steps.shape == (2, 12)
    torch.testing.assert_close(steps.sum(1), maps.sum((1, 2, 3)))


@pytest.mark.parametrize("name", ["rnn-shallow", "rnn-deep"])
def test_mc_dropout_explains_the_sampled_forward(name):
    """Dropout modules in train mode: LRP's forward samples the masks the model's own forward
    would with the same random state (its map sums to that forward's logit), and the pixels
    a mask scales keep their box (deep Taylor stays >= 0 for positive logits)."""
    model = bias_free(model_of(name, dropout=0.5))
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    x, targets = images(6, 3, seed=9), torch.tensor([0, 1, 2, 3, 4, 5])
    torch.manual_seed(11)
    logits = target_logits(model, x, targets)
    torch.manual_seed(11)
    maps = relevance("lrp-deep-taylor", model, x, targets)
    assert_conserved(maps, logits)
    assert bool((logits > 0).any())
    assert bool((maps[logits > 0] >= 0).all())


# --- one step: the feed-forward LRP of the same network --------------------------------------


class FeedForward(nn.Module):
    """normalize, then layers: ``composites.input_bounds`` finds the box through normalize."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.normalize = Normalize(0.5, 0.5)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))


def feedforward_copy(model: nn.Module) -> FeedForward:
    """The recurrent model at T = 1 (r_0 = 0) as a feed-forward network with the same weights:
    the cell's hidden layer keeps only its first F (feature) columns."""
    layers: list[nn.Module] = []
    with torch.no_grad():
        for layer in model.features.step:
            if isinstance(layer, NegativeBiasConv2d):
                out, inp, kernel, _ = layer.weight.shape
                conv = nn.Conv2d(inp, out, kernel, padding=layer.padding)
                conv.weight.copy_(layer.weight)
                conv.bias.copy_(layer.bias)
                layers.append(conv)
            elif isinstance(layer, NegativeBiasLinear):
                layers.append(linear_copy(layer.weight, layer.bias))
            else:
                layers.append(layer)
        hidden = model.features.cell.hidden
        layers += [linear_copy(hidden.weight[:, :model.features.cell.features], hidden.bias),
                   nn.ReLU()]
        layers += [linear_copy(layer.weight, layer.bias) if isinstance(layer, NegativeBiasLinear)
                   else layer for layer in model.head]
    return FeedForward(layers).eval()


def linear_copy(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    linear.weight.copy_(weight)
    linear.bias.copy_(bias)
    return linear


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (2.0, 1.0)])
@pytest.mark.parametrize("name", ["rnn-deep", "rnn-convdeep"])
def test_one_step_equals_feedforward_lrp(name, alpha, beta):
    model = model_of(name)
    copy = feedforward_copy(model)
    x, targets = images(4, 1, seed=10), torch.tensor([1, 3, 5, 7])
    torch.testing.assert_close(copy(x), model(x))
    rule = AlphaBeta(alpha, beta)  # both sides stabilise by STABILIZER
    composite = Composite("zb-alpha-beta", "z^B first, alpha-beta elsewhere", rule, rule, ZBox())
    expected = feedforward_lrp(copy, x, targets, composite=composite)
    maps = lrp(model, x, targets, alpha=alpha, beta=beta)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5 * scale)


# --- gradient methods -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rnn-deep", "lstm"])
def test_gradient_methods_at_the_input_scale(name):
    model = model_of(name)
    x, targets = images(3, 2, seed=12), torch.tensor([0, 5, 9])
    std = 0.5
    saliency = Saliency(model).attribute(x.clone().requires_grad_(), targets, abs=False)
    torch.testing.assert_close(sensitivity(model, x, targets), saliency.square() * std ** 2)
    scaled = ((x - 0.5) / 0.5).requires_grad_()
    logits = model.head(model.features(scaled))
    (grad,) = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), scaled)
    torch.testing.assert_close(simple_taylor(model, x, targets), scaled.detach() * grad)
    if name == "lstm":  # no ReLU module: seed 002's guided backprop is the sensitivity, which
        # the feed-forward method refuses to return under the name of guided backprop
        with pytest.raises(ModelError, match="no nn.ReLU module"):
            plain_guided_backprop(model, x, targets)
        plain = modified_relu_gradient(model, x, targets, guided=True)
    else:
        plain = plain_guided_backprop(model, x, targets)
    guided = (plain * std).square()
    torch.testing.assert_close(guided_backprop(model, x, targets), guided)
    if name == "lstm":
        torch.testing.assert_close(guided, sensitivity(model, x, targets))


def test_relevance_dispatches_every_method():
    model = model_of("rnn-deep")
    x = images(2, 2, seed=13)
    expected = {"sensitivity": sensitivity(model, x, 4),
                "simple-taylor": simple_taylor(model, x, 4),
                "guided-backprop": guided_backprop(model, x, 4),
                "lrp-alpha2-beta1": lrp(model, x, 4),
                "lrp-deep-taylor": lrp(model, x, 4, alpha=1, beta=0)}
    assert tuple(expected) == METHODS
    for method, maps in expected.items():
        torch.testing.assert_close(relevance(method, model, x, 4), maps)


def test_step_relevance_sums_each_strip():
    maps = torch.randn(2, 1, 28, 21)
    expected = torch.stack([maps[..., 7 * k:7 * k + 7].sum((1, 2, 3)) for k in range(3)], 1)
    torch.testing.assert_close(step_relevance(maps), expected)
    with pytest.raises(DataError, match="7T"):
        step_relevance(torch.zeros(2, 1, 28, 10))


@pytest.mark.parametrize("name", ["rnn-convdeep", "gru"])
def test_model_left_untouched(name):
    model = model_of(name, dropout=0.25)
    model.head.drop.train()  # MC dropout: sampling stays on, as found
    before = state(model)
    x = images(2, 2, seed=14)
    for method in METHODS:
        maps = relevance(method, model, x, torch.tensor([1, 2]))
        assert maps.shape == x.shape and not maps.requires_grad
        assert bool(torch.isfinite(maps).all())
    assert_untouched(model, before)
    with pytest.raises(DataError):
        lrp(model, torch.full((1, 1, 28, 14), float("nan")), 0)
    assert_untouched(model, before)


# --- errors ---------------------------------------------------------------------------------


def test_errors_say_what_to_do():
    model, x = model_of("rnn-deep"), images(2, 2)
    with pytest.raises(ConfigError, match="did you mean 'lrp-deep-taylor'"):
        relevance("lrp-deep-tailor", model, x, 0)
    with pytest.raises(ConfigError, match="trustmap.explain.lrp"):
        lrp(build("lenet").eval(), torch.zeros(1, 1, 28, 28), 0)
    nan = x.clone()
    nan[1, 0, 3, 3] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        sensitivity(model, nan, 0)
    with pytest.raises(DataError, match="multiple of 7"):
        lrp(model, torch.zeros(1, 1, 28, 30), 0)
    with pytest.raises(ConfigError, match="alpha - beta = 1"):
        lrp(model, x, 0, alpha=2, beta=0.5)
    with pytest.raises(ConfigError, match="pixel box"):
        lrp(build("rnn-deep", mean=0.1307, std=0.3081), x, 0)
