from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.evaluate.sanity import parameter_randomisation, randomise, weighted_layers
from trustmap.explain.similarity import spearman
from trustmap.models import build

LENET_LAYERS = ["head.fc2", "head.fc1", "features.conv2", "features.conv1"]


def gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).gather(1, target.view(-1, 1)).sum(), x)
    return grad


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Springenberg et al.: ReLUs pass back only positive gradients, where their input was > 0."""
    def positive(_module, grad_input, _grad_output):
        return (grad_input[0].clamp(min=0),)

    hooks = [m.register_full_backward_hook(positive) for m in model.modules()
             if isinstance(m, nn.ReLU)]
    try:
        return gradient(model, x, target)
    finally:
        for hook in hooks:
            hook.remove()


def the_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return x.clone()


@pytest.fixture(scope="module")
def digits(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:8], mnist_test.labels[:8]


def test_columns_steps_and_layer_order(trained_lenet, digits):
    x, y = digits
    table = parameter_randomisation(trained_lenet, x, y, gradient)
    assert list(table.columns) == ["step", "layer", "similarity", "sem"]
    assert table.step.tolist() == list(range(len(LENET_LAYERS) + 1))
    assert pd.isna(table.layer[0]) and table.layer[1:].tolist() == LENET_LAYERS
    assert table.similarity[0] == pytest.approx(1.0)


def test_gradient_loses_similarity_input_keeps_it(trained_lenet, digits):
    x, y = digits
    grad = parameter_randomisation(trained_lenet, x, y, gradient)
    assert grad.similarity.iloc[-1] < 0.5
    # Removing the learned weights changes the gradient more and more.
    assert grad.similarity.iloc[-1] < grad.similarity.iloc[1]
    flat = parameter_randomisation(trained_lenet, x, y, the_input)
    assert flat.similarity.tolist() == pytest.approx([1.0] * 5)
    assert flat["sem"].tolist() == pytest.approx([0.0] * 5)


def test_similarity_is_spearman_against_trained_maps(trained_lenet, digits):
    """Step 1 by hand: randomise fc2 of a copy with the same generator and compare."""
    x, y = digits
    table = parameter_randomisation(trained_lenet, x, y, gradient, seed=5, absolute=False)
    reference = gradient(trained_lenet, x, y)
    copy = build("lenet")
    copy.load_state_dict(trained_lenet.state_dict())
    copy.eval()
    randomise(copy.head.fc2, torch.Generator().manual_seed(5))
    values = spearman(reference, gradient(copy, x, y)).double()
    assert table.similarity[1] == pytest.approx(float(values.mean()), abs=1e-6)
    assert table["sem"][1] == pytest.approx(float(values.std()) / math.sqrt(len(x)), abs=1e-6)


def test_user_model_unchanged(digits):
    x, y = digits
    torch.manual_seed(0)
    model = build("lenet", dropout=0.25).train()
    model.head.drop2.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    parameter_randomisation(model, x[:2], y[:2], gradient)
    assert [m.training for m in model.modules()] == flags
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_reproducible_with_seed(trained_lenet, digits):
    x, y = digits
    first = parameter_randomisation(trained_lenet, x, y, gradient, seed=1)
    again = parameter_randomisation(trained_lenet, x, y, gradient, seed=1)
    pd.testing.assert_frame_equal(first, again)
    other = parameter_randomisation(trained_lenet, x, y, gradient, seed=2)
    assert not first.similarity[1:].equals(other.similarity[1:])


def test_randomise_keeps_scale_and_changes_values():
    layer = nn.Linear(50, 40)
    before = torch.cat([p.detach().flatten() for p in layer.parameters()]).clone()
    randomise(layer, torch.Generator().manual_seed(0))
    after = torch.cat([p.detach().flatten() for p in layer.parameters()])
    assert after.std().item() == pytest.approx(before.std(correction=0).item(), rel=0.1)
    assert abs(torch.corrcoef(torch.stack([before, after]))[0, 1].item()) < 0.1


def test_guided_backprop_survives_top_layer_randomisation(trained_lenet, digits):
    """Adebayo et al. (2018): guided backprop barely changes when the top layers are random."""
    x, y = digits
    grad = parameter_randomisation(trained_lenet, x, y, gradient)
    guided = parameter_randomisation(trained_lenet, x, y, guided_backprop)
    for step in (1, 2):
        assert guided.similarity[step] > grad.similarity[step] + 0.1
    assert guided.similarity[2] > 0.7


def test_target_defaults_to_trained_prediction(trained_lenet, digits):
    x, _ = digits
    with torch.no_grad():
        predicted = trained_lenet(x).argmax(1)
    pd.testing.assert_frame_equal(parameter_randomisation(trained_lenet, x, None, gradient),
                                  parameter_randomisation(trained_lenet, x, predicted, gradient))


def test_named_layers_and_resnet_default(digits):
    x, y = digits
    torch.manual_seed(0)
    model = build("resnet18", width=8).eval()
    names = weighted_layers(model, x)
    weighted = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert sorted(names) == sorted(weighted)
    assert names[0] == weighted[-1]  # the output layer first
    table = parameter_randomisation(model, x[:2], y[:2], gradient, layers=["features"])
    assert table.layer[1:].tolist() == ["features"]
    assert table.similarity[1] < 0.5  # the whole block at once


@pytest.mark.parametrize("kwargs, error, match", [
    ({"layers": ["head.fc9"]}, ConfigError, "no layer named"),
    ({"layers": ["features.relu1"]}, ConfigError, "no parameters"),
    ({"similarity": "pearson"}, ConfigError, "similarity"),
    ({"similarity": lambda a, b: a.mean()}, DataError, "one value per input"),
])
def test_bad_arguments_raise(trained_lenet, digits, kwargs, error, match):
    x, y = digits
    with pytest.raises(error, match=match):
        parameter_randomisation(trained_lenet, x[:2], y[:2], gradient, **kwargs)


def test_bad_maps_and_target_raise(trained_lenet, digits):
    x, y = digits
    with pytest.raises(DataError, match="shaped like"):
        parameter_randomisation(trained_lenet, x[:2], y[:2], lambda m, x, t: x[:, 0])
    with pytest.raises(DataError, match="target"):
        parameter_randomisation(trained_lenet, x[:2], 12, gradient)
