"""The contract every registered attribution method keeps, whatever its family.

The methods come from the registry, parametrized by name, so a newly registered method is tested
here without editing this file and a failure names the method. Comparisons with Captum and
explicit formulas live in each family's own test file.
"""

from __future__ import annotations

import pytest
import torch
from explain_support import (
    ZOO,
    assert_same,
    assert_untouched,
    sampling_lenet,
    state,
    zoo_model,
)

from trustmap.errors import DataError, TrustmapError
from trustmap.explain.methods import METHODS, SINGLE_PASS, get, names
from trustmap.models import build

pytestmark = [pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning"),
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not:UserWarning")]

FAST_OPTIONS: dict[str, dict[str, int]] = {
    "integrated-gradients": {"steps": 4},
    "smoothgrad": {"samples": 3},
    "vargrad": {"samples": 3},
    "occlusion": {"window": 7, "stride": 7},
}
"""Few passes for the multi-pass methods, so every method on every zoo model stays fast."""

BATCH_NOISE = {"smoothgrad", "vargrad"}
"""Methods drawing one noise tensor for the whole batch: a row's noise depends on its batch."""


def explain(method: str, model: torch.nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    return get(method)(model, x, target, **FAST_OPTIONS.get(method, {}))


@pytest.fixture(scope="module")
def digits(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:3].clone(), mnist_test.labels[:3].clone()


def test_every_registered_method_is_covered():
    """The tests take their methods from names(); the tables above must name registered methods
    only, and a new multi-pass method must say there how to run it cheaply, not slow the suite."""
    assert set(METHODS) == set(names())
    assert set(FAST_OPTIONS) == set(names()) - SINGLE_PASS
    assert BATCH_NOISE <= set(names())


@pytest.mark.parametrize("model_name", list(ZOO))
@pytest.mark.parametrize("method", names())
def test_runs_on_every_zoo_model_and_leaves_it_untouched(method, model_name, digits):
    """What the aggregates and pages rely on: maps like x, detached, finite, and not all zero."""
    x, labels = digits
    model = zoo_model(model_name)
    before = state(model)
    maps = explain(method, model, x, labels)
    assert maps.shape == x.shape
    assert maps.dtype == torch.float32
    assert not maps.requires_grad
    assert torch.isfinite(maps).all()
    assert maps.abs().sum() > 0
    assert_untouched(model, before)


@pytest.mark.parametrize("method", [m for m in names() if m not in BATCH_NOISE])
def test_a_row_is_explained_alike_alone_or_in_a_batch(method, digits):
    """Batching (and the engines' chunking) is an implementation detail, not part of a map."""
    x, labels = digits
    model = zoo_model("resnet18")
    whole = explain(method, model, x, labels)
    for i in range(len(x)):
        alone = explain(method, model, x[i:i + 1], labels[i:i + 1])
        if whole[i].abs().max() > 0:
            assert_same(alone[0], whole[i], rel=1e-4)
        else:
            assert alone.abs().max() == 0


@pytest.mark.parametrize("method", names())
def test_needs_no_grad_mode_and_restores_the_model_after_errors(method, digits):
    """Callers explain inside torch.no_grad(), and a failing forward must not leave hooks or
    changed requires_grad flags behind."""
    x, labels = digits
    torch.manual_seed(0)
    model = build("resnet18", width=8).eval()
    model.features.stem.conv.weight.requires_grad_(False)  # a mixed set of flags to restore
    before = state(model)
    with torch.no_grad():
        assert explain(method, model, x, labels).abs().sum() > 0
    assert_untouched(model, before)

    def broken(module, args, output):
        raise RuntimeError("boom")

    handle = model.features.stage2.register_forward_hook(broken)
    with pytest.raises(RuntimeError, match="boom"):
        explain(method, model, x, labels)
    handle.remove()
    assert_untouched(model, before)


@pytest.mark.parametrize("method", names())
def test_mc_dropout_models_keep_their_sampling_layers(method, digits):
    x, labels = digits
    model = sampling_lenet()
    before = state(model)
    assert torch.isfinite(explain(method, model, x, labels)).all()
    assert_untouched(model, before)


@pytest.mark.parametrize("method", names())
def test_bad_inputs_raise_trustmap_errors(method, digits):
    """Bad data gets the project's errors, which the CLI reports, not a shape error from deep
    inside torch."""
    x, labels = digits
    model = zoo_model("lenet")
    before = state(model)
    nan = x.clone()
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(DataError):
        explain(method, model, nan, labels)
    with pytest.raises(DataError):
        explain(method, model, x[0], labels[0].item())  # no batch axis
    with pytest.raises(TrustmapError):
        explain(method, model, x[..., :20, :20].contiguous(), labels)  # not 28x28
    for target in (10, -1, labels[:2]):
        with pytest.raises(DataError):
            explain(method, model, x, target)
    assert_untouched(model, before)
