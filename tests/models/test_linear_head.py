"""models.features.linear_head: the last Linear's weight and bias, only where the logits are
exactly that layer applied to the features (what ViM and ReAct recompute)."""

from __future__ import annotations

import torch
from torch import nn

from trustmap.models import build
from trustmap.models.features import features, linear_head


def _small() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_the_head_of_a_zoo_model_reproduces_its_logits() -> None:
    torch.manual_seed(0)
    model = build("lenet").eval()
    images = torch.rand(6, 1, 28, 28)
    weight, bias = linear_head(model, images)
    torch.testing.assert_close(features(model, images) @ weight.T + bias, model(images),
                               rtol=1e-5, atol=1e-5)
    assert weight.shape == (10, features(model, images).shape[1])


def test_a_named_layer_that_feeds_the_last_linear_is_accepted() -> None:
    model, images = _small(), torch.rand(5, 1, 4, 4)
    weight, bias = linear_head(model, images, layer="2")  # the ReLU's output is fc's input
    assert torch.equal(weight, model[3].weight.detach()) and torch.equal(bias, model[3].bias)


def test_a_model_that_computes_after_its_last_linear_is_refused() -> None:
    class Tempered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _small()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x) / 2.0  # a temperature after the last Linear

    reason = linear_head(Tempered().eval(), torch.rand(4, 1, 4, 4))
    assert isinstance(reason, str) and "computes more after that layer" in reason


def test_features_of_another_width_are_refused() -> None:
    reason = linear_head(_small(), torch.rand(4, 1, 4, 4), layer="0")  # 16-d, fc takes 8
    assert isinstance(reason, str) and "have 16 dimensions" in reason and "takes 8" in reason
