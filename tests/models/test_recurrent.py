"""The recurrent classifiers: seed 002's architectures, read left to right in 7-column steps."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustmap.errors import ModelError
from trustmap.models import build, describe
from trustmap.models.recurrent import (
    ARCHITECTURES,
    NegativeBiasLinear,
    RecurrentClassifier,
    strips,
    unstrip,
)


def make(name: str, seed: int = 0, **options) -> RecurrentClassifier:
    torch.manual_seed(seed)
    model = build(name, **options)
    assert isinstance(model, RecurrentClassifier)
    return model


def sequences(n: int = 3, steps: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 7 * steps, generator=torch.Generator().manual_seed(seed))


def test_parameter_counts_are_the_ones_seed_002_printed():
    counts = {row.name: row.parameters for row in describe()}
    # "no. variables" in seed 002's notebook for Shallow, Deep, DeepV2 and ConvDeep.
    assert [counts[name] for name in ARCHITECTURES[:4]] == [184_330, 281_738, 347_530, 353_818]
    # The gated cells are of comparable size.
    assert 150_000 < counts["lstm"] < 200_000 and 150_000 < counts["gru"] < 200_000


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("steps", [1, 12])
def test_maps_sequences_to_logits(name, steps):
    logits = make(name).eval()(sequences(2, steps))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_build_args_rebuild_the_same_model(name):
    model = make(name).eval()
    twin = build(**json.loads(json.dumps(model.build_args)))
    twin.load_state_dict(model.state_dict())
    x = sequences()
    assert torch.equal(model(x), twin.eval()(x))
    assert model.build_args["mean"] == [0.5] and model.build_args["std"] == [0.5]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_step_reaches_the_output_and_dropout_samples_only_in_train_mode(name):
    model = make(name)
    assert model.has_dropout and model.gradcam_layer is None
    x = sequences(2).requires_grad_()
    model.eval()(x).sum().backward()
    per_step = strips(x.grad.abs()).sum((2, 3, 4))
    assert (per_step > 0).all()  # the first step too: relevance can flow back through time
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_biases_are_never_positive():
    layer = NegativeBiasLinear(4, 3)
    with torch.no_grad():
        layer.raw_bias.copy_(torch.tensor([-30.0, 0.0, 30.0]))
    assert (layer.bias <= 0).all()
    x = torch.randn(2, 4)
    assert torch.allclose(layer(x), x @ layer.weight.T - F.softplus(layer.raw_bias))


def test_shallow_is_seed_002s_recurrence_written_out():
    model = make("rnn-shallow", seed=3).eval()
    x = sequences(2, steps=3, seed=1)
    cell, head = model.features.cell, model.head.fc1
    pixels = (x - 0.5) / 0.5  # seed 002's [-1, 1] scale
    r = torch.zeros(2, 256)
    for t in range(3):
        x_t = pixels[..., 7 * t: 7 * t + 7].reshape(2, -1)
        h = torch.relu(torch.cat([x_t, r], 1) @ cell.hidden.weight.T
                       - F.softplus(cell.hidden.raw_bias))
        r = torch.relu(h @ cell.recurrent.weight.T - F.softplus(cell.recurrent.raw_bias))
    expected = h @ head.weight.T - F.softplus(head.raw_bias)
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_convdeep_pools_each_28x7_step_to_7x2():
    model = make("rnn-convdeep").eval()
    shapes = []
    model.features.step.pool2.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    model(sequences(2, steps=12))
    assert shapes == [torch.Size([24, 32, 7, 2])]  # all 2 x 12 steps in one batched call


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_gated_models_are_torch_cells_over_the_flattened_steps(name):
    model = make(name).eval()
    x = sequences(2, steps=4)
    rnn = model.features.rnn
    assert isinstance(rnn, nn.LSTM if name == "lstm" else nn.GRU)
    inputs = ((x - 0.5) / 0.5)[:, 0].unflatten(2, (4, 7)).permute(0, 2, 1, 3).flatten(2)
    output, _ = rnn(inputs)
    assert torch.allclose(model(x), model.head.fc1(output[:, -1]), atol=1e-6)


def test_strips_and_unstrip_are_inverse_and_read_left_to_right():
    x = sequences(2, steps=5)
    steps = strips(x)
    assert steps.shape == (2, 5, 1, 28, 7)
    assert torch.equal(steps[:, 2], x[..., 14:21])
    assert torch.equal(unstrip(steps), x)


@pytest.mark.parametrize("shape", [(2, 1, 28, 80), (2, 1, 27, 84), (2, 3, 28, 84), (1, 28, 84)])
def test_wrong_shapes_are_model_errors_that_say_what_fits(shape):
    with pytest.raises(ModelError, match=r"7T\].*3-maj"):
        make("rnn-deep")(torch.rand(shape))
