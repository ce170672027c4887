"""Folding BatchNorm into the layer before it: same function inside, same tensors afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustmap.errors import ConfigError
from trustmap.explain.canonize import batchnorm_pairs, merged_batchnorm
from trustmap.models import build
from trustmap.models.resnet import Add


def randomize_batchnorms(model: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_()
                module.running_var.uniform_(0.2, 3.0)
                module.weight.normal_()
                module.bias.normal_()
    return model.eval()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorms(build("resnet18", width=8).double())


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, by name, as the objects themselves (no copies)."""
    return dict(model.state_dict(keep_vars=True))


def test_folded_resnet_computes_the_same_and_is_restored_exactly() -> None:
    model = resnet()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    expected = model(x)
    originals = {name: (t, t.detach().clone()) for name, t in tensors(model).items()}
    with merged_batchnorm(model) as pairs:
        # stem + 2 per block + 3 projection shortcuts: every BatchNorm follows a convolution
        assert len(pairs) == 1 + 2 * 8 + 3
        assert ("features.stem.conv", "features.stem.bn") in pairs
        assert model.features.stem.conv.bias is not None
        assert not torch.equal(model.features.stem.conv.weight, originals[
            "features.stem.conv.weight"][1])
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-12)
    after = tensors(model)
    assert list(after) == list(originals)
    for name, (tensor, copy) in originals.items():
        assert after[name] is tensor and torch.equal(tensor, copy), name
    assert model.features.stem.conv.bias is None
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(model(x), expected)


def test_float32_folding_is_close() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorms(build("resnet34", width=8))
    x = torch.rand(2, 1, 28, 28)
    expected = model(x)
    with merged_batchnorm(model, x):
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_restored_after_an_exception() -> None:
    model = resnet()
    originals = {name: t.detach().clone() for name, t in tensors(model).items()}
    with pytest.raises(RuntimeError, match="inside"), merged_batchnorm(model):
        raise RuntimeError("inside")
    assert all(torch.equal(tensors(model)[n], t) for n, t in originals.items())
    assert model.features.stem.conv.bias is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class Branches(nn.Module):
    """conv1 -> bn1 (foldable); conv2 with a bias -> bn2, whose input is also read by `add`
    (not foldable); bn0 on the input (no layer before it); linear -> bn3 (BatchNorm1d)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(2)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.add = Add()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(4 * 25, 6)
        self.bn3 = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.bn1(self.conv1(self.bn0(x))))
        return self.bn3(self.linear(self.flatten(self.add(self.bn2(y), y))))


def test_only_batchnorms_reading_a_layer_alone_are_folded() -> None:
    torch.manual_seed(1)
    model = randomize_batchnorms(Branches().double())
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    assert batchnorm_pairs(model, x) == [("conv1", "bn1"), ("linear", "bn3")]
    expected = model(x)
    conv1_bias = model.conv1.bias
    with merged_batchnorm(model, x):
        assert model.conv1.bias is conv1_bias  # a present bias is changed in place
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(model(x), expected)


def test_batchnorm_in_training_mode_and_missing_examples_raise() -> None:
    model = resnet()
    model.features.stem.bn.train()
    stats = model.features.stem.bn.running_mean.clone()
    with pytest.raises(ConfigError, match="eval mode"), merged_batchnorm(model):
        pass
    assert torch.equal(model.features.stem.bn.running_mean, stats)
    with pytest.raises(ConfigError, match="example input"), merged_batchnorm(Branches().eval()):
        pass
