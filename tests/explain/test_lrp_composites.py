"""Named LRP methods on whole networks: conservation, known identities, and a model left intact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustmap.errors import ConfigError
from trustmap.explain.composites import COMPOSITES, METHODS, Composite, input_bounds, lrp
from trustmap.explain.lrp import Epsilon, Flat, Gamma, forward_order, propagate
from trustmap.models import build


def zoo_model(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("resnet"):
        kwargs["width"] = 8
    return build(name, **kwargs).eval()


def bias_free(model: nn.Module) -> nn.Module:
    """Float64, every bias zero, BatchNorm an unbiased scaling: LRP must then conserve."""
    torch.manual_seed(1)
    model.double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.bias.zero_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return model


def options_for(name: str, epsilon: float) -> dict[str, float]:
    composite = COMPOSITES[name]
    has_epsilon = any(isinstance(r, Epsilon) for r in (composite.conv, composite.dense))
    return {"epsilon": epsilon} if has_epsilon else {}


def snapshot(model: nn.Module) -> tuple[dict, list, list]:
    state = {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()}
    flags = [(name, m.training) for name, m in model.named_modules()]
    grads = [(name, p.requires_grad) for name, p in model.named_parameters()]
    return state, flags, grads


def assert_unchanged(model: nn.Module, before: tuple[dict, list, list]) -> None:
    state, flags, grads = before
    now = model.state_dict(keep_vars=True)
    assert list(now) == list(state)
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert [(name, m.training) for name, m in model.named_modules()] == flags
    assert [(name, p.requires_grad) for name, p in model.named_parameters()] == grads
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks


@pytest.fixture(scope="module")
def digits(mnist_test) -> torch.Tensor:
    return mnist_test.images[:4]


@pytest.mark.parametrize("name", list(COMPOSITES))
@pytest.mark.parametrize("model_name", ["lenet", "mlp"])
def test_relevance_is_conserved_without_biases(model_name, name, digits) -> None:
    torch.manual_seed(2)
    if model_name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32),
                              nn.ReLU(), nn.Linear(32, 10))
    else:
        model = zoo_model(model_name)
    model = bias_free(model)
    relevance = lrp(model, digits, 3, composite=name, **options_for(name, 1e-12))
    logit = model(digits.double())[:, 3].float()
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["epsilon", "gamma", "epsilon-gamma-box", "flat"])
def test_canonized_resnet_conserves_relevance(name, digits) -> None:
    """Folded BatchNorms and the residual sums conserve. (z+ and alpha-beta need not here: a
    residual branch's output may be negative, so relevant, with no positive contribution.)"""
    model = bias_free(zoo_model("resnet18"))
    relevance = lrp(model, digits, 7, composite=name, **options_for(name, 1e-12))
    logit = model(digits.double())[:, 7].float()
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", ["lenet", "cnn", "resnet18"])
def test_epsilon_to_zero_is_gradient_times_input(model_name, digits) -> None:
    """On a bias-free ReLU network LRP-0 is gradient x input (of the normalised input; with
    mean 0 and std 1 that is the image)."""
    model = bias_free(zoo_model(model_name, mean=0.0, std=1.0))
    x = digits.double().requires_grad_()
    (grad,) = torch.autograd.grad(model(x)[:, 5].sum(), x)
    relevance = lrp(model, digits, 5, composite="epsilon", epsilon=1e-12)
    torch.testing.assert_close(relevance, (x * grad).detach().float(), rtol=1e-4, atol=1e-7)


def test_epsilon_absorbs_relevance_of_biased_models(digits) -> None:
    """With biases and a large epsilon the sum falls short of the logit: the test above is not
    vacuous, and epsilon is really passed through."""
    model = zoo_model("lenet").double()
    small = lrp(model, digits, 1, composite="epsilon", epsilon=1e-9)
    large = lrp(model, digits, 1, composite="epsilon", epsilon=10.0)
    assert not torch.allclose(small, large)
    assert large.abs().sum() < small.abs().sum()


@pytest.mark.parametrize("model_name", ["lenet", "cnn", "resnet18"])
def test_composites_are_not_aliases_of_one_rule_set(model_name, digits) -> None:
    """Distinct names give distinct maps. (test_method_contract runs every method on every
    model; this checks the names are not aliases.)"""
    model = zoo_model(model_name)
    maps = {name: METHODS[name](model, digits[:2], torch.tensor([1, 2]))
            for name in ("lrp-epsilon", "lrp-epsilon-plus", "lrp-epsilon-plus-flat")}
    assert not torch.allclose(maps["lrp-epsilon"], maps["lrp-epsilon-plus"])
    assert not torch.allclose(maps["lrp-epsilon-plus"], maps["lrp-epsilon-plus-flat"])


def test_model_is_restored_after_an_exception(digits) -> None:
    model = zoo_model("resnet18")
    before = snapshot(model)

    def fail(module: nn.Module, args: object, output: torch.Tensor) -> None:
        raise RuntimeError("boom")

    handle = model.head.fc.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            lrp(model, digits, 0, composite="epsilon-gamma-box")
    finally:
        handle.remove()
    assert_unchanged(model, before)
    assert model.features.stem.conv.bias is None  # the temporary folded bias is gone
    broken = Composite("broken", "flat inside", Flat(), Epsilon())
    with pytest.raises(ConfigError, match="input layer only"):
        lrp(model, digits, 0, composite=broken)
    assert_unchanged(model, before)


def test_mc_dropout_models(digits) -> None:
    model = zoo_model("lenet", dropout=0.25)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    before = snapshot(model)
    torch.manual_seed(5)
    relevance = lrp(model, digits, 4, composite="epsilon-gamma-box")
    after_lrp = torch.rand(3)
    torch.manual_seed(5)
    model(digits)  # the dry passes draw no random numbers: only the explained forward does
    assert torch.equal(after_lrp, torch.rand(3))
    assert bool(torch.isfinite(relevance).all())
    assert_unchanged(model, before)
    # Two draws explain two different stochastic models.
    assert not torch.allclose(relevance, lrp(model, digits, 4, composite="epsilon-gamma-box"))
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    sampled = lrp(model, digits, 4, composite="epsilon-gamma-box")
    model.eval()
    torch.testing.assert_close(sampled, lrp(model, digits, 4, composite="epsilon-gamma-box"))


def test_composites_choose_rules_by_kind_and_position(digits) -> None:
    model = zoo_model("lenet")
    layers = forward_order(model, digits)
    assert [name for name, _ in layers] == ["features.conv1", "features.conv2", "head.fc1",
                                            "head.fc2"]
    rules = COMPOSITES["epsilon-gamma-box"].rules(model, digits)
    assert [r.name for r in rules.values()] == ["zb", "gamma", "epsilon", "epsilon"]
    rules = COMPOSITES["epsilon-plus-flat"].configured(epsilon=0.5).rules(model, digits)
    assert [r.name for r in rules.values()] == ["flat", "alpha-beta", "epsilon", "epsilon"]
    assert rules["head.fc1"] == Epsilon(epsilon=0.5)
    rules = COMPOSITES["gamma"].configured(gamma=1.5).assign(layers)
    assert rules["features.conv1"] == Gamma(gamma=1.5)


def test_bad_names_and_options_raise(digits) -> None:
    model = zoo_model("lenet")
    with pytest.raises(ConfigError, match="known composites: epsilon, gamma"):
        lrp(model, digits, 0, composite="epsilon-pluss")
    with pytest.raises(ConfigError, match="no gamma rule"):
        lrp(model, digits, 0, composite="epsilon-plus", gamma=0.5)
    with pytest.raises(ConfigError, match="no epsilon rule"):
        METHODS["lrp-zplus"](model, digits, 0, epsilon=0.1)
    with pytest.raises(ConfigError, match="canonize"):
        lrp(model, digits, 0, canonize="yes")
    with pytest.raises(ConfigError, match="epsilon"):
        lrp(model, digits, 0, composite="epsilon", epsilon=-1.0)


def test_batchnorm_in_training_mode_is_refused(digits) -> None:
    model = zoo_model("resnet18")
    model.features.stage1[0].bn1.train()
    before = snapshot(model)
    for canonize in (True, False):
        with pytest.raises(ConfigError, match="eval mode"):
            lrp(model, digits, 0, canonize=canonize)
    assert_unchanged(model, before)


def test_canonizing_changes_the_explanation_not_the_model(digits) -> None:
    model = zoo_model("resnet18")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.bias.uniform_(-0.5, 0.5)
    before = snapshot(model)
    folded = lrp(model, digits, 2, composite="epsilon-plus")
    plain = lrp(model, digits, 2, composite="epsilon-plus", canonize=False)
    assert bool(torch.isfinite(plain).all()) and not torch.allclose(folded, plain)
    assert_unchanged(model, before)


def test_zb_bounds_are_the_normalised_pixel_box() -> None:
    torch.manual_seed(0)
    model = build("lenet", in_channels=2, mean=[0.2, 0.5], std=[0.3, 0.25]).double().eval()
    x = torch.rand(3, 2, 28, 28)
    low, high = input_bounds(model, x.double())
    mean = torch.tensor([0.2, 0.5], dtype=torch.float64).view(1, 2, 1, 1)
    std = torch.tensor([0.3, 0.25], dtype=torch.float64).view(1, 2, 1, 1)
    torch.testing.assert_close(low, (0 - mean).expand(1, 2, 28, 28) / std)
    torch.testing.assert_close(high, (1 - mean).expand(1, 2, 28, 28) / std)
    rules = COMPOSITES["epsilon-gamma-box"].rules(model, x.double())
    with torch.no_grad():
        expected = propagate(model, x.double(), 1, rules, bounds=((0 - mean) / std,
                                                                  (1 - mean) / std))
    torch.testing.assert_close(lrp(model, x, 1, composite="epsilon-gamma-box"), expected.float())
    wrong = propagate(model, x.double(), 1, rules, bounds=(torch.zeros(1), torch.ones(1)))
    assert not torch.allclose(wrong.float(), expected.float())
