from __future__ import annotations

import pytest
import torch
from torch import nn

from trustmap.errors import ConfigError, DataError, ModelError
from trustmap.models import build
from trustmap.predictive import (
    Ensemble,
    EnsembleMC,
    MCDropout,
    Prediction,
    Single,
    make_predictive,
    predict_kinds,
)


@pytest.fixture(scope="module")
def x(mnist_test) -> torch.Tensor:
    return mnist_test.images[:40]


def _members(n: int, **kwargs) -> list[nn.Module]:
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(build("lenet", **kwargs).eval())
    return models


def test_prediction_votes_hand_computed() -> None:
    # 3 samples, 2 inputs, 3 classes.
    probs = torch.tensor([
        [[0.6, 0.3, 0.1], [0.1, 0.5, 0.4]],
        [[0.2, 0.7, 0.1], [0.1, 0.3, 0.6]],
        [[0.5, 0.4, 0.1], [0.3, 0.3, 0.4]],
    ])
    p = Prediction.from_probs(probs)
    assert torch.allclose(p.sample_probs, probs)
    assert torch.allclose(p.mean_probs[0], torch.tensor([1.3, 1.4, 0.3]) / 3)
    assert p.predicted.tolist() == [1, 2]  # mean: class 1 (1.4/3) and class 2 (1.4/3)
    assert p.votes.tolist() == [[2, 1, 0], [0, 1, 2]]
    assert p.majority_vote.tolist() == [0, 2]  # voting and averaging disagree on input 0
    assert torch.allclose(p.vote_ratio, torch.tensor([2 / 3, 2 / 3]))


def test_single_is_softmax_of_the_model(x) -> None:
    model = _members(1)[0]
    probs = Single(model, batch_size=7).sample_probs(x)
    assert probs.shape == (1, 40, 10)
    with torch.no_grad():
        assert torch.allclose(probs[0], model(x).softmax(1), atol=1e-6)


def test_ensemble_stacks_members(x) -> None:
    members = _members(3)
    logits = Ensemble(members).sample_logits(x)
    assert logits.shape == (3, 40, 10)
    with torch.no_grad():
        for m, member in enumerate(members):
            assert torch.allclose(logits[m], member(x), atol=1e-5)
    assert Ensemble(members).num_samples == 3


def test_mc_dropout_mean_converges_to_the_deterministic_network() -> None:
    # Inverted dropout keeps the expectation: E[W dropout(x)] = W x for a linear layer.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 3))
    x = torch.rand(5, 1, 4, 4)
    samples = MCDropout(model, samples=4000, seed=1).sample_logits(x)
    with torch.no_grad():
        expected = model.eval()(x)
    assert samples.shape == (4000, 5, 3)
    assert samples.std(0).min() > 0.01  # passes really differ
    assert torch.allclose(samples.mean(0), expected, atol=0.05)


def test_mc_dropout_keeps_batchnorm_in_eval_and_is_seeded(x) -> None:
    torch.manual_seed(0)
    model = build("resnet18", width=8, dropout=0.5)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    running_mean = bn.running_mean.clone()
    rng_state = torch.get_rng_state()
    mc = MCDropout(model, samples=4, seed=3, batch_size=9)
    first, second = mc.sample_logits(x[:10]), mc.sample_logits(x[:10])
    assert torch.equal(first, second)  # seeded
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    assert torch.equal(bn.running_mean, running_mean)  # BatchNorm statistics not updated
    assert not bn.training and not model.training  # dropout switched back off
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(MCDropout(model, samples=4, seed=4).sample_logits(x[:10]), first)


def test_mc_dropout_refuses_models_without_dropout() -> None:
    with pytest.raises(ModelError, match="dropout"):
        MCDropout(build("lenet"), samples=3)


def test_ensemble_mc_is_the_mixture_of_member_mc(x) -> None:
    members = _members(2, dropout=0.3)
    mixture = EnsembleMC(members, samples=5, seed=10).sample_logits(x)
    assert mixture.shape == (10, 40, 10)
    expected = torch.cat([MCDropout(m, 5, 10 + i).sample_logits(x) for i, m in enumerate(members)])
    assert torch.equal(mixture, expected)


def test_make_predictive_and_bad_inputs(x) -> None:
    members = _members(2, dropout=0.3)
    assert make_predictive("ensemble-mc", members, samples=3).num_samples == 6
    assert make_predictive("single", members).num_samples == 1
    with pytest.raises(ConfigError, match="single, ensemble"):
        make_predictive("bayes", members)
    with pytest.raises(ConfigError, match="at least one"):
        Ensemble([])
    bad = x.clone()
    bad[3, 0, 5, 5] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        Ensemble(members).predict(bad)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        Single(members[0]).predict(x * 255)


def test_predict_kinds_equals_each_predictive_alone(x) -> None:
    members = _members(3, dropout=0.3)
    kinds = ["single", "ensemble", "mc-dropout", "ensemble-mc"]
    shared = predict_kinds(kinds, members, x, samples=4, seed=2)
    assert list(shared) == kinds
    for kind in kinds:
        alone = make_predictive(kind, members, samples=4, seed=2).predict(x)
        assert torch.equal(shared[kind].sample_logits, alone.sample_logits), kind
    only_single = predict_kinds(["single"], members, x)
    assert list(only_single) == ["single"] and only_single["single"].sample_logits.shape[0] == 1
    with pytest.raises(ConfigError, match="ensemble-mc"):
        predict_kinds(["bayes"], members, x)


@pytest.mark.parametrize(("name", "shape"), [
    ("lenet", (1, 28, 28)), ("cnn", (1, 28, 28)), ("cnn1000", (1, 28, 28)),
    ("alexnet", (1, 28, 28)), ("resnet18", (3, 28, 28)), ("rnn-deep", (1, 28, 84)),
    ("lstm", (1, 28, 84))])
def test_mc_dropout_runs_the_layers_before_dropout_once(name: str,
                                                        shape: tuple[int, ...]) -> None:
    """Sharing what comes before the first dropout draws the same masks (same order, same
    memory layout) and gives the same logits up to the float rounding of those layers on
    another batch size, for every zoo model with dropout."""
    torch.manual_seed(0)
    model = build(name, shape[0], 10, dropout=0.3)
    x = torch.rand(7, *shape, generator=torch.Generator().manual_seed(1))
    predictive = MCDropout(model, samples=4, seed=5, batch_size=12)  # chunks of 3 inputs
    rows: list[int] = []
    first = next(m for m in model.modules()
                 if isinstance(m, nn.Conv2d | nn.Linear | nn.LSTM | nn.ReLU))
    handle = first.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    shared = predictive.sample_logits(x)  # rnn-deep drops inside its cell: run T times
    handle.remove()
    plain = predictive._passes(x, shared=False)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)
    if name in ("lenet", "cnn", "alexnet", "resnet18"):  # their first layer is before dropout
        assert sum(rows) == len(x)  # it saw every input once, not once per pass


def test_mc_dropout_on_the_default_run_model_is_bit_identical() -> None:
    """The default run's lenet at the default batch: the shared trunk changes no bit."""
    torch.manual_seed(0)
    predictive = MCDropout(build("lenet", 1, 10, dropout=0.25), samples=10, seed=2)
    x = torch.rand(250, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    assert torch.equal(predictive.sample_logits(x), predictive._passes(x, shared=False))
