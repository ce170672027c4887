"""Gradient-family attributions equal Captum's and explicit formulas.

The contract all methods share (shapes, model left alone, errors) is in test_method_contract.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from explain_support import (
    assert_same,
    assert_untouched,
    hooked_modules,
    sampling_lenet,
    state,
    zoo_model,
)
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.explain import gradient as G

pytestmark = [pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning"),
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not:UserWarning")]


@pytest.fixture(scope="module")
def digits(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:3].clone(), mnist_test.labels[:3].clone()


@pytest.mark.parametrize("name", ["lenet", "resnet18", "cnn1000"])
def test_equals_captum(name, digits):
    x, labels = digits
    model = zoo_model(name)
    assert_same(G.gradient(model, x, labels), Saliency(model).attribute(x, labels, abs=False))
    assert_same(G.gradient(model, x, 3), Saliency(model).attribute(x, 3, abs=False))
    assert_same(G.gradient_x_input(model, x, labels), InputXGradient(model).attribute(x, labels))
    assert_same(G.guided_backprop(model, x, labels), GuidedBackprop(model).attribute(x, labels))
    assert_same(G.deconvnet(model, x, labels), Deconvolution(model).attribute(x, labels))


def test_guided_backprop_and_deconvnet_differ_from_the_gradient(digits):
    x, labels = digits
    model = zoo_model("lenet")
    plain = G.gradient(model, x, labels)
    assert not torch.allclose(G.guided_backprop(model, x, labels), plain)
    assert not torch.allclose(G.deconvnet(model, x, labels), plain)


def test_guided_relu_rules_on_a_hand_computed_case():
    # y = w2 . relu(w1 * x): one pixel feeds two hidden units, one active and one not.
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False), nn.ReLU(),
                          nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [-1.0]]))  # hidden: (x, -x), x > 0
        model[3].weight.copy_(torch.tensor([[-2.0, 3.0]]))
    x = torch.full((1, 1, 1, 1), 0.5)
    # Gradient: only unit 0 is active: -2 * 1. Guided: its gradient -2 is negative: 0.
    # Deconvnet: relu(-2) * 1 + relu(3) * (-1) = -3.
    assert G.gradient(model, x, 0).item() == -2.0
    assert G.guided_backprop(model, x, 0).item() == 0.0
    assert G.deconvnet(model, x, 0).item() == -3.0


@pytest.mark.parametrize("name", ["lenet", "resnet18"])
@pytest.mark.parametrize("method", G.IG_METHODS)
def test_integrated_gradients_equal_captum(name, method, digits):
    x, labels = digits
    model = zoo_model(name)
    ig = IntegratedGradients(model)
    assert_same(G.integrated_gradients(model, x, labels, steps=6, method=method),
                ig.attribute(x, baselines=0.0, target=labels, n_steps=6, method=method))
    baseline = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert_same(G.integrated_gradients(model, x, labels, baseline=baseline[0], steps=5,
                                       method=method, chunk_size=4),
                ig.attribute(x, baselines=baseline, target=labels, n_steps=5, method=method))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 1000])
def test_integrated_gradients_chunks_give_the_same_result(chunk_size, digits):
    x, labels = digits
    model = zoo_model("lenet")
    whole = G.integrated_gradients(model, x, labels, steps=5, baseline=0.25)
    assert_same(G.integrated_gradients(model, x, labels, steps=5, baseline=0.25,
                                       chunk_size=chunk_size), whole)


@pytest.mark.parametrize("name", ["lenet", "resnet18"])
def test_integrated_gradients_are_complete(name, digits):
    x, labels = digits
    model = zoo_model(name)
    baseline = torch.full_like(x, 0.5)
    with torch.no_grad():
        rows = torch.arange(len(x))
        gap = model(x)[rows, labels] - model(baseline)[rows, labels]
    ig = G.integrated_gradients(model, x, labels, baseline=baseline, steps=128)
    torch.testing.assert_close(ig.sum((1, 2, 3)), gap, rtol=0.01, atol=0.01 * gap.abs().max())


def noisy_gradients_one_by_one(model, x, labels, samples, sigma, seed) -> torch.Tensor:
    """The explicit formula: the same noise, and one gradient per noisy image."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(x) * samples, *x.shape[1:]), generator=generator) * sigma
    noise = noise.view(len(x), samples, *x.shape[1:])
    grads = torch.empty_like(noise)
    for i in range(len(x)):
        for s in range(samples):
            point = (x[i] + noise[i, s]).unsqueeze(0).requires_grad_()
            logit = model(point)[0, labels[i]]
            grads[i, s] = torch.autograd.grad(logit, point)[0][0]
    return grads


def test_smoothgrad_and_vargrad_follow_their_formulas(digits):
    x, labels = digits
    model = zoo_model("lenet")
    grads = noisy_gradients_one_by_one(model, x, labels, samples=4, sigma=0.2, seed=7)
    assert_same(G.smoothgrad(model, x, labels, samples=4, sigma=0.2, seed=7), grads.mean(1))
    variance = grads.square().mean(1) - grads.mean(1).square()
    assert_same(G.vargrad(model, x, labels, samples=4, sigma=0.2, seed=7), variance, rel=1e-4)


@pytest.mark.parametrize("name", ["lenet", "resnet18"])
def test_smoothgrad_and_vargrad_equal_captum_noise_tunnel(name, digits):
    x, labels = digits
    model = zoo_model(name)
    tunnel = NoiseTunnel(Saliency(model))
    for kind, ours in (("smoothgrad", G.smoothgrad), ("vargrad", G.vargrad)):
        # Captum draws from the global generator; seeded alike, it draws our noise.
        torch.manual_seed(11)
        theirs = tunnel.attribute(x, nt_type=kind, nt_samples=5, stdevs=0.1, target=labels,
                                  abs=False)
        assert_same(ours(model, x, labels, samples=5, sigma=0.1, seed=11), theirs, rel=1e-4)


def test_smoothgrad_leaves_the_global_rng_alone_and_repeats_with_its_seed(digits):
    x, labels = digits
    model = zoo_model("lenet")
    rng = torch.get_rng_state()
    first = G.smoothgrad(model, x, labels, samples=3, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(G.smoothgrad(model, x, labels, samples=3, seed=1), first)
    assert not torch.equal(G.smoothgrad(model, x, labels, samples=3, seed=2), first)
    # Without noise every sample is x itself.
    assert_same(G.smoothgrad(model, x, labels, samples=2, sigma=0.0), G.gradient(model, x, labels))
    assert G.vargrad(model, x, labels, samples=2, sigma=0.0).abs().max() == 0


def test_smoothgrad_does_not_clamp_noisy_images():
    # f(x) = relu(x - 1) summed: zero gradient inside [0, 1]; only unclamped noise crosses 1.
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 1), nn.ReLU())
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].bias.fill_(-1.0)
    x = torch.ones(1, 1, 1, 1)
    assert 0.3 < G.smoothgrad(model, x, 0, samples=200, sigma=0.5).item() < 0.7


def test_methods_explain_the_stochastic_forward_of_mc_dropout(digits):
    x, labels = digits
    model = sampling_lenet()
    before = state(model)
    torch.manual_seed(5)
    ours = G.gradient(model, x, labels)
    torch.manual_seed(5)
    leaf = x.clone().requires_grad_()
    logits = model(leaf)
    (expected,) = torch.autograd.grad(logits[torch.arange(len(x)), labels].sum(), leaf)
    assert_same(ours, expected)
    torch.manual_seed(6)
    guided = G.guided_backprop(model, x, labels)
    torch.manual_seed(6)
    assert_same(guided, GuidedBackprop(model).attribute(x, labels))
    # Two draws differ: the dropout layers really sampled.
    assert not torch.equal(G.gradient(model, x, labels), G.gradient(model, x, labels))
    assert_untouched(model, before)


def test_bad_options_and_baselines_are_refused(digits):
    x, labels = digits
    model = zoo_model("lenet")
    ig = G.integrated_gradients
    for bad in ({"steps": 0}, {"steps": 1.5}, {"method": "simpson"}, {"chunk_size": 0},
                {"steps": 1, "method": "riemann_trapezoid"}, {"baseline": "zero"}):
        with pytest.raises(ConfigError):
            ig(model, x, labels, **bad)
    with pytest.raises(DataError):
        ig(model, x, labels, baseline=torch.full((1, 28, 28), float("nan")))
    with pytest.raises(DataError):
        ig(model, x, labels, baseline=torch.zeros(5, 1, 28, 28))
    for bad in ({"samples": 0}, {"sigma": -0.1}, {"sigma": float("inf")}, {"seed": 0.5}):
        with pytest.raises(ConfigError):
            G.smoothgrad(model, x, labels, **bad)
        with pytest.raises(ConfigError):
            G.vargrad(model, x, labels, **bad)
    assert hooked_modules(model) == []
