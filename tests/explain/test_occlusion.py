"""Occlusion equals Captum's and a hand-computed linear case, with cut-off border windows.

The contract all methods share (shapes, model left alone, errors) is in test_method_contract.
"""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import Occlusion
from explain_support import assert_same as shared_assert_same
from explain_support import zoo_model
from torch import nn

from trustmap.errors import ConfigError
from trustmap.explain.occlusion import occlusion, window_masks
from trustmap.models import build


@pytest.fixture(scope="module")
def digits(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:3].clone(), mnist_test.labels[:3].clone()


def assert_same(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """Occlusion sums many logit differences: a looser default tolerance."""
    shared_assert_same(actual, expected, rel)


def captum(model, x, target, window, stride, baseline=0.0) -> torch.Tensor:
    c = x.shape[1]
    return Occlusion(model).attribute(x, target=target, sliding_window_shapes=(c, window, window),
                                      strides=(c, stride, stride), baselines=baseline,
                                      perturbations_per_eval=64)


@pytest.mark.parametrize("name", ["lenet", "resnet18"])
@pytest.mark.parametrize(("window", "stride", "baseline", "chunk_size"), [
    (4, 2, 0.0, 512),   # 13 x 13 windows that fit exactly
    (5, 2, 0.0, 7),     # the last window in each direction sticks out and is cut off
    (6, 4, 0.5, 1),     # cut off, a grey baseline, one image per pass
    (28, 1, 0.0, 2),    # one window: the whole image
])
def test_equals_captum(name, window, stride, baseline, chunk_size, digits):
    x, labels = digits
    model = zoo_model(name)
    ours = occlusion(model, x, labels, window=window, stride=stride, baseline=baseline,
                     chunk_size=chunk_size)
    assert_same(ours, captum(model, x, labels, window, stride, baseline))


def test_window_positions_cover_the_image_and_are_cut_off_at_the_border():
    masks = window_masks(10, 10, 4, 3)
    # ceil((10 - 4) / 3) + 1 = 3 positions per axis: 0, 3, 6; the last ends exactly at 10.
    assert masks.shape == (9, 10, 10)
    masks = window_masks(10, 10, 4, 4)  # positions 0, 4, 8: the last covers only 2 pixels
    assert masks.shape == (9, 10, 10)
    assert masks[-1].sum() == 4 and masks[-1, 8:, 8:].all()
    assert masks.any(0).all()


def linear_occlusion(weights: torch.Tensor, x: torch.Tensor, window: int, stride: int,
                     baseline: float) -> torch.Tensor:
    """By hand: for f(x) = <w, x>, hiding a patch drops f by <w, x - baseline> on the patch."""
    _, height, width = x.shape
    total, count = torch.zeros(height, width), torch.zeros(height, width)
    starts = [i * stride for i in range(math.ceil((height - window) / stride) + 1)]
    for top in starts:
        for left in starts:
            patch = (slice(None), slice(top, top + window), slice(left, left + window))
            drop = (weights[patch] * (x[patch] - baseline)).sum()
            total[patch[1:]] += drop
            count[patch[1:]] += 1
    return total / count


@pytest.mark.parametrize(("window", "stride"), [(3, 2), (4, 4), (5, 3)])
def test_a_linear_model_by_hand(window, stride):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 9 * 9, 3))
    x = torch.rand(2, 2, 9, 9)
    ours = occlusion(model, x, torch.tensor([2, 0]), window=window, stride=stride, baseline=0.25)
    weights = model[1].weight.detach().view(3, 2, 9, 9)
    for i, target in enumerate([2, 0]):
        expected = linear_occlusion(weights[target], x[i], window, stride, 0.25)
        assert_same(ours[i, 0], expected)
        assert torch.equal(ours[i, 1], ours[i, 0])  # one map, on every channel


def test_mc_dropout_model_works_and_keeps_its_modes(digits):
    x, labels = digits
    torch.manual_seed(0)
    model = build("cnn1000").eval()
    model.features.drop.train()
    maps = occlusion(model, x, labels, window=7, stride=7)
    assert torch.isfinite(maps).all()
    assert model.features.drop.training and not model.training
    assert all(p.requires_grad for p in model.parameters())


def test_bad_options_raise_config_errors(digits):
    x, labels = digits
    model = zoo_model("lenet")
    for bad in ({"window": 29}, {"window": 0}, {"window": 3, "stride": 4}, {"stride": 0},
                {"baseline": float("nan")}, {"chunk_size": 0}, {"window": 2.5}):
        with pytest.raises(ConfigError):
            occlusion(model, x, labels, **bad)
