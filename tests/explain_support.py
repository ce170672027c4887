"""Helpers the attribution tests share: the zoo's models, map comparison, model-state checks.

Not a test file; pytest's ``pythonpath = ["tests"]`` makes it importable from any test.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import nn

from trustmap.models import build

ZOO: dict[str, dict[str, Any]] = {
    "lenet": {}, "lenet5": {}, "cnn": {}, "cnn1000": {}, "alexnet": {},
    "resnet18": {"width": 8}, "resnet34": {"width": 8},
}
"""Every zoo model, resnets narrow so the tests stay fast."""


@cache
def zoo_model(name: str) -> nn.Module:
    """One eval-mode model per name, seeded; tests must not change it (they check that)."""
    torch.manual_seed(0)
    return build(name, **ZOO[name]).eval()


def sampling_lenet() -> nn.Module:
    """A seeded lenet with dropout whose Dropout layers sample (MC dropout), the rest in eval."""
    torch.manual_seed(0)
    model = build("lenet", dropout=0.25).eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    return model


def assert_same(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to `rel` of the expected map's scale (which must not be zero)."""
    expected = expected.detach()
    scale = float(expected.abs().max())
    assert scale > 0, "a vacuous comparison: the expected map is all zeros"
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


def hooked_modules(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
            or m._backward_pre_hooks]


def state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool], dict[str, bool]]:
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    training = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    return weights, training, grads


def assert_untouched(model: nn.Module, before: tuple) -> None:
    """Weights, modes and requires_grad as before; no hooks left and no .grad written."""
    weights, training, grads = state(model)
    assert training == before[1]
    assert grads == before[2]
    assert weights.keys() == before[0].keys()
    assert all(torch.equal(weights[k], before[0][k]) for k in weights)
    assert hooked_modules(model) == []
    assert all(p.grad is None for p in model.parameters())
