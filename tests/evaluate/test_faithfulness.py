from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.evaluate.faithfulness import PerturbationCurve, aopc_table, region_perturbation
from trustmap.models import build


def gradient_x_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), x)
    return (grad * x).detach()


@pytest.fixture(scope="module")
def digits(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:16], mnist_test.labels[:16]


# Region r of a 4x4 image with patch 2 (row-major: top-left, top-right, bottom-left,
# bottom-right) has weight REGION_WEIGHT[r] on each of its 4 pixels in class 0's logit.
REGION_WEIGHT = [1.0, 4.0, 2.0, 3.0]
CLASS1_LOGIT = 6.0


def linear_model() -> nn.Module:
    """logit_0 = sum of weighted pixels, logit_1 = 6: a model whose curve is known by hand."""
    weight = torch.tensor(REGION_WEIGHT).view(2, 2).repeat_interleave(2, 0).repeat_interleave(2, 1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = weight.flatten()
        model[1].bias.copy_(torch.tensor([0.0, CLASS1_LOGIT]))
    return model


def hand_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = linear_model()
    x = torch.ones(1, 1, 4, 4)
    maps = gradient_x_input(model, x, torch.tensor([0]))
    return model, x, maps


def test_hand_computed_morf_curve_and_aopc():
    model, x, maps = hand_case()
    curve = region_perturbation(model, x, maps, 0, patch=2, order="morf")
    # Regions go 1 (weight 4), 3 (3), 2 (2), 0 (1); each has 4 pixels of value 1.
    expected_logits = torch.tensor([[40.0, 24.0, 12.0, 4.0, 0.0]])
    assert torch.equal(curve.logits, expected_logits)
    both = torch.stack([expected_logits[0], torch.full((5,), CLASS1_LOGIT)], 1)
    expected_probs = both.softmax(1)[:, 0]
    torch.testing.assert_close(curve.probs[0], expected_probs)
    assert torch.equal(curve.predicted, torch.tensor([[0, 0, 0, 1, 1]]))
    assert curve.steps == 4 and curve.order == "morf" and curve.patch == 2
    # AOPC = (1/5) * sum_k (f0 - fk): on logits (0 + 16 + 28 + 36 + 40) / 5 = 24.
    assert curve.aopc_of("logit").item() == 24.0
    expected_aopc = float((expected_probs[0] - expected_probs).sum() / 5)
    assert curve.aopc.item() == pytest.approx(expected_aopc, abs=1e-6)
    assert curve.flips_to_change.tolist() == [3]
    torch.testing.assert_close(curve.mean_curve, expected_probs)


def test_hand_computed_lerf_and_constant_baseline():
    model, x, maps = hand_case()
    curve = region_perturbation(model, x, maps, 0, patch=2, order="lerf", baseline=0.25)
    # Regions go 0, 2, 3, 1; each replacement lowers the logit by 4 * weight * (1 - 0.25).
    drops = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]) * 3
    expected = 40 - torch.cumsum(drops, 0)
    torch.testing.assert_close(curve.logits[0], expected)
    assert curve.aopc_of("logit").item() == pytest.approx(float((40 - expected).mean()))
    # Prediction changes once the logit drops below 6: 40, 37, 31, 22, 10 never does.
    assert curve.flips_to_change.tolist() == [5]


def test_flips_to_change_never_changed_counts_steps_plus_one():
    model, x, maps = hand_case()
    curve = region_perturbation(model, x, maps, 0, patch=2, order="morf", steps=2)
    assert curve.logits.shape == (1, 3)
    assert curve.flips_to_change.tolist() == [3]
    made = PerturbationCurve("morf", 1, torch.zeros(3, 4), torch.zeros(3, 4),
                             torch.tensor([[2, 2, 5, 2], [1, 1, 1, 1], [0, 3, 3, 3]]))
    assert made.flips_to_change.tolist() == [2, 4, 1]


def test_pixel_flipping_and_mean_baseline():
    model, _, _ = hand_case()
    x = torch.linspace(0, 1, 16).view(1, 1, 4, 4)
    maps = gradient_x_input(model, x, torch.tensor([0]))
    curve = region_perturbation(model, x, maps, 0, patch=1)
    # With a zero baseline, flipping pixel p lowers logit_0 by its contribution w_p * x_p:
    # pixel flipping removes the contributions largest first.
    contributions = maps.flatten().sort(descending=True).values
    expected = torch.cat([torch.zeros(1), contributions.cumsum(0)])
    torch.testing.assert_close(curve.logits[0], maps.sum() - expected)
    mean = region_perturbation(model, x, maps, 0, patch=1, baseline="mean")
    # Every pixel ends at the image mean 0.5, so logit_0 = 0.5 * sum of all the weights.
    assert mean.logits[0, -1].item() == pytest.approx(0.5 * 4 * sum(REGION_WEIGHT))


def test_batched_targets_and_default_steps(trained_lenet, digits):
    x, y = digits
    maps = gradient_x_input(trained_lenet, x, y)
    curve = region_perturbation(trained_lenet, x, maps, y)
    assert curve.logits.shape == curve.probs.shape == curve.predicted.shape == (16, 50)
    with torch.no_grad():
        logits = trained_lenet(x)
    torch.testing.assert_close(curve.logits[:, 0], logits.gather(1, y.view(-1, 1))[:, 0])
    assert torch.equal(curve.predicted[:, 0], logits.argmax(1))
    # Each input is perturbed on its own: the first input's curve is the same alone.
    alone = region_perturbation(trained_lenet, x[:1], maps[:1], y[:1])
    torch.testing.assert_close(alone.logits[0], curve.logits[0], atol=1e-4, rtol=1e-4)
    # All regions replaced by 0 leaves the same (blank) image for every input.
    with torch.no_grad():
        blank = trained_lenet(torch.zeros(1, 1, 28, 28))[0]
    torch.testing.assert_close(curve.logits[:, -1], blank[y], atol=1e-4, rtol=1e-4)


def test_morf_drops_faster_than_lerf_and_random(trained_lenet, digits):
    x, y = digits
    maps = gradient_x_input(trained_lenet, x, y)
    curves = {order: region_perturbation(trained_lenet, x, maps, y, order=order)
              for order in ("morf", "lerf", "random")}
    morf, lerf, rand = (curves[o].aopc_of("logit").mean().item() for o in ("morf", "lerf",
                                                                           "random"))
    assert morf > rand > lerf
    assert curves["morf"].aopc.mean() > curves["lerf"].aopc.mean()
    # A random map is no better than a random order.
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    random_map = region_perturbation(trained_lenet, x, noise, y, order="morf")
    assert morf > random_map.aopc_of("logit").mean().item()
    assert curves["morf"].flips_to_change.float().mean() < curves["lerf"].flips_to_change.float(
        ).mean()


def test_random_order_is_seeded_and_ignores_maps(trained_lenet, digits):
    x, y = digits
    x, y = x[:4], y[:4]
    maps = gradient_x_input(trained_lenet, x, y)
    first = region_perturbation(trained_lenet, x, maps, y, order="random", seed=3)
    again = region_perturbation(trained_lenet, x, torch.zeros_like(x), y, order="random", seed=3)
    other = region_perturbation(trained_lenet, x, maps, y, order="random", seed=4)
    assert torch.equal(first.logits, again.logits)
    assert not torch.equal(first.logits, other.logits)
    noisy = region_perturbation(trained_lenet, x, maps, y, baseline="uniform", seed=3)
    same = region_perturbation(trained_lenet, x, maps, y, baseline="uniform", seed=3)
    assert torch.equal(noisy.logits, same.logits)
    unseeded = region_perturbation(trained_lenet, x, maps, y, baseline="uniform")
    assert not torch.equal(noisy.logits, unseeded.logits)


def test_model_left_as_found(digits):
    x, y = digits
    torch.manual_seed(0)
    model = build("lenet", dropout=0.25).train()
    model.head.drop1.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    region_perturbation(model, x[:2], torch.rand(2, 1, 28, 28), y[:2], patch=7)
    assert model.training and not model.head.drop1.training and model.head.drop2.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


def test_aopc_table():
    model, x, maps = hand_case()
    x = torch.cat([x, x * 0.5])
    maps = torch.cat([maps, maps * 0.5])
    curves = {"grad": [region_perturbation(model, x, maps, 0, patch=2, order=o)
                       for o in ("morf", "lerf")],
              "noise": region_perturbation(model, x, torch.rand_like(x), 0, patch=2,
                                           order="random")}
    table = aopc_table(curves)
    assert list(zip(table.method, table.order, strict=True)) == [
        ("grad", "morf"), ("grad", "lerf"), ("noise", "random")]
    morf = curves["grad"][0].aopc.double()
    assert table.aopc[0] == pytest.approx(float(morf.mean()))
    assert table.aopc_sem[0] == pytest.approx(float(morf.std()) / math.sqrt(2))
    assert table.flips_to_change[0] == pytest.approx(
        float(curves["grad"][0].flips_to_change.double().mean()))
    logit_table = aopc_table(curves, output="logit")
    # Halving the image halves every drop: logit AOPCs 24 and 12.
    assert logit_table.aopc[0] == pytest.approx(18.0)
    with pytest.raises(DataError, match="twice|two curves"):
        aopc_table({"grad": [curves["grad"][0], curves["grad"][0]]})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"patch": 3}, ConfigError, "divide"),
    ({"patch": 0}, ConfigError, "positive"),
    ({"order": "best"}, ConfigError, "order"),
    ({"steps": 50}, ConfigError, "at most"),
    ({"baseline": 1.5}, ConfigError, "baseline"),
    ({"baseline": "blur"}, ConfigError, "baseline"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
])
def test_bad_options_raise(trained_lenet, digits, kwargs, error, match):
    x, y = digits
    with pytest.raises(error, match=match):
        region_perturbation(trained_lenet, x[:2], torch.zeros_like(x[:2]), y[:2], **kwargs)


def test_bad_maps_and_targets_raise(trained_lenet, digits):
    x, y = digits
    with pytest.raises(DataError, match="shaped like"):
        region_perturbation(trained_lenet, x[:2], torch.zeros(2, 28, 28), y[:2])
    with pytest.raises(DataError, match="NaN"):
        region_perturbation(trained_lenet, x[:2], torch.full_like(x[:2], math.nan), y[:2])
    with pytest.raises(DataError, match="target"):
        region_perturbation(trained_lenet, x[:2], torch.zeros_like(x[:2]), 10)
    with pytest.raises(ConfigError, match="output"):
        curve = region_perturbation(trained_lenet, x[:2], torch.zeros_like(x[:2]), 0, steps=1)
        curve.aopc_of("loss")
