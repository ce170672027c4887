from __future__ import annotations

import pytest
import torch
from torch import nn

from trustmap.errors import ConfigError
from trustmap.explain.maximize import maximize_activation, total_variation
from trustmap.models import build

UNITS = [0, 3, 7]


@pytest.fixture(scope="module")
def maximised(trained_lenet) -> torch.Tensor:
    return maximize_activation(trained_lenet, units=UNITS, steps=100, lr=0.1)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_shape_and_range(maximised):
    assert maximised.shape == (3, 1, 28, 28) and maximised.dtype == torch.float32
    assert float(maximised.min()) >= 0 and float(maximised.max()) <= 1
    assert not maximised.requires_grad


def test_class_logit_far_above_start_and_real_digits(trained_lenet, maximised, mnist_test):
    logits = logits_of(trained_lenet, maximised)[torch.arange(3), UNITS]
    start = logits_of(trained_lenet, torch.full((1, 1, 28, 28), 0.5))[0, UNITS]
    noise = logits_of(trained_lenet, torch.rand(3, 1, 28, 28, generator=torch.Generator()
                                          .manual_seed(0)))[torch.arange(3), UNITS]
    assert bool((logits > start + 8).all())
    assert bool((logits > noise + 8).all())
    for row, unit in enumerate(UNITS):
        digits = mnist_test.images[mnist_test.labels == unit][:50]
        real = logits_of(trained_lenet, digits)[:, unit]
        assert logits[row] > real.mean() + 3
    # Each image is the one its own class prefers: the diagonal wins in every row.
    assert logits_of(trained_lenet, maximised).argmax(1).tolist() == UNITS


def test_hidden_channel_and_flat_layer(trained_lenet):
    captured = {}
    hook = trained_lenet.features.conv2.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("out", out.detach()))
    try:
        # Spatial means have small gradients per pixel: a lighter TV penalty suits them.
        images = maximize_activation(trained_lenet, layer="features.conv2", units=[4, 10], steps=40,
                                     lr=0.1, tv=1e-3)
        trained_lenet(images)
        after = captured["out"][torch.arange(2), [4, 10]].mean((1, 2))
        trained_lenet(torch.full((1, 1, 28, 28), 0.5))
        before = captured["out"][0, [4, 10]].mean((1, 2))
    finally:
        hook.remove()
    assert bool((after > before + 1).all())
    flat = maximize_activation(trained_lenet, layer="head.fc1", units=2, steps=5)
    assert flat.shape == (1, 1, 28, 28)


def test_tv_regulariser_lowers_total_variation(trained_lenet):
    rough = maximize_activation(trained_lenet, units=[1, 8], steps=40, lr=0.1, tv=0.0)
    smooth = maximize_activation(trained_lenet, units=[1, 8], steps=40, lr=0.1, tv=0.2)
    assert bool((total_variation(smooth) < 0.8 * total_variation(rough)).all())


def test_total_variation_formula():
    image = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    # Rows: |0.5 - 0| + |0.5 - 1|; columns: |1 - 0| + |0.5 - 0.5|.
    assert total_variation(image).tolist() == [2.0]


def test_reproducible_with_seed(trained_lenet):
    first = maximize_activation(trained_lenet, units=4, steps=10, start="random", seed=3)
    assert torch.equal(first, maximize_activation(trained_lenet, units=4, steps=10, start="random",
                                                  seed=3))
    assert not torch.equal(first, maximize_activation(trained_lenet, units=4, steps=10,
                                                      start="random", seed=4))
    jittered = maximize_activation(trained_lenet, units=4, steps=10, seed=3)
    assert not torch.equal(jittered, maximize_activation(trained_lenet, units=4, steps=10, seed=4))


def test_model_left_as_found():
    torch.manual_seed(0)
    model = build("resnet18", width=8, dropout=0.25).train()
    model.head.eval()
    first = next(model.parameters())
    first.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    maximize_activation(model, units=[0, 1], steps=2)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert not first.requires_grad
    assert all(p.requires_grad for p in list(model.parameters())[1:])


@pytest.mark.parametrize("kwargs, match", [
    ({"layer": "features.conv9", "units": 0}, "no layer named"),
    ({"units": 10}, r"\[0, 10\)"),
    ({"units": [-1, 2]}, r"\[0, 10\)"),
    ({"layer": "features.conv1", "units": 20}, r"\[0, 20\)"),
    ({"units": []}, "units"),
    ({"units": 1.5}, "units"),
    ({"units": 0, "steps": 0}, "steps"),
    ({"units": 0, "lr": 0.0}, "lr"),
    ({"units": 0, "tv": -1.0}, "tv"),
    ({"units": 0, "start": 1.0}, "start"),
    ({"units": 0, "start": "zeros"}, "start"),
    ({"units": 0, "jitter": -1}, "jitter"),
    ({"units": 0, "shape": (28, 28)}, "shape"),
])
def test_bad_arguments_raise(trained_lenet, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        maximize_activation(trained_lenet, **kwargs)
