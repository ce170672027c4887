"""Maps of every sample of a predictive, their summaries, and explanation-disagreement measures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.explain import disagreement
from trustmap.explain.aggregate import (
    attribute_samples,
    class_saliency,
    cosine_disagreement,
    rank_disagreement,
    seed000_uncertainty,
    summarize,
)
from trustmap.explain.gradient import gradient
from trustmap.explain.methods import get
from trustmap.models import build
from trustmap.predictive import Ensemble, EnsembleMC, MCDropout, Single
from trustmap.uncertainty import MEASURES


@pytest.fixture(scope="module")
def members() -> list[nn.Module]:
    made = []
    for seed in range(3):
        torch.manual_seed(seed)
        made.append(build("lenet", dropout=0.25).eval())
    return made


@pytest.fixture(scope="module")
def x(mnist_test) -> torch.Tensor:  # noqa: ANN001
    return mnist_test.images[:6]


def test_ensemble_samples_are_each_members_maps(members: list[nn.Module], x: torch.Tensor
                                                ) -> None:
    predictive = Ensemble(members)
    target = predictive.predict(x).predicted
    samples = attribute_samples("gradient", predictive, x)
    expected = torch.stack([gradient(m, x, target) for m in members])
    torch.testing.assert_close(samples, expected)
    assert attribute_samples("gradient", Single(members[0]), x).shape == (1, *x.shape)


def test_mc_dropout_samples_vary_reproducibly_and_reduce_to_eval_without_dropout(
        members: list[nn.Module], x: torch.Tensor) -> None:
    predictive = MCDropout(members[0], samples=4, seed=3)
    first = attribute_samples("gradient", predictive, x, 1)
    assert first.shape == (4, *x.shape)
    assert not torch.allclose(first[0], first[1])  # other masks, other maps
    torch.testing.assert_close(attribute_samples("gradient", predictive, x, 1), first)
    assert all(not m.training for m in members[0].modules())  # dropout back in eval mode
    rates = [m.p for m in predictive.dropouts]
    try:
        for module in predictive.dropouts:
            module.p = 0.0
        without = attribute_samples("gradient", predictive, x, 1)
    finally:
        for module, rate in zip(predictive.dropouts, rates, strict=True):
            module.p = rate
    expected = gradient(members[0], x, 1)
    for t in range(4):
        torch.testing.assert_close(without[t], expected)


def test_ensemble_mc_pools_members_times_passes(members: list[nn.Module], x: torch.Tensor
                                                ) -> None:
    samples = attribute_samples("gradcam", EnsembleMC(members, samples=2), x[:2])
    assert samples.shape == (6, 2, *x.shape[1:])


def test_multi_pass_methods_are_refused_under_mc_dropout(members: list[nn.Module],
                                                         x: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="new masks"):
        attribute_samples("occlusion", MCDropout(members[0], samples=2), x)
    with pytest.raises(ConfigError, match="unknown attribution method"):
        attribute_samples("gradcan", Ensemble(members), x)


def test_summary_formulas() -> None:
    samples = torch.tensor([[1.0, 0.0, -2.0], [3.0, 0.0, 2.0]]).view(2, 1, 1, 1, 3)
    summary = summarize(samples)
    torch.testing.assert_close(summary.mean.flatten(), torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(summary.std.flatten(), torch.tensor([1.0, 0.0, 2.0]))
    torch.testing.assert_close(summary.cv.flatten(), torch.tensor([0.5, 0.0, 0.0]))


def _seed000_numpy(maps: np.ndarray) -> np.ndarray:
    """Seed 000's loop, written out: min-max each map, CV per pixel over members, mean."""
    s, n = maps.shape[:2]
    result = np.zeros(n)
    for i in range(n):
        normalised = []
        for m in range(s):
            heat = maps[m, i].astype(np.float64)
            span = heat.max() - heat.min()
            normalised.append((heat - heat.min()) / span if span > 0 else heat * 0)
        stack = np.stack(normalised)
        mean, std = stack.mean(0), stack.std(0)
        cv = np.divide(std, mean, out=np.zeros_like(std), where=mean != 0)
        result[i] = cv.mean()
    return result


def test_seed000_measure_equals_the_written_out_loop_and_its_bound() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.relu(torch.randn(5, 4, 1, 7, 7, generator=generator))
    values = seed000_uncertainty(maps)
    np.testing.assert_allclose(values.numpy(), _seed000_numpy(maps.numpy()), rtol=1e-5)
    assert float(values.max()) <= math.sqrt(5 - 1)
    same = maps[:1].expand(5, -1, -1, -1, -1)
    torch.testing.assert_close(seed000_uncertainty(same), torch.zeros(4))
    with pytest.raises(DataError, match="non-negative"):
        seed000_uncertainty(maps - 1)


def test_rank_and_cosine_disagreement() -> None:
    generator = torch.Generator().manual_seed(2)
    samples = torch.randn(3, 2, 1, 4, 4, generator=generator)
    importance = samples.sum(2).abs().flatten(2).numpy()
    expected = [1 - np.mean([stats.spearmanr(importance[a, i], importance[b, i])[0]
                             for a in range(3) for b in range(3) if a != b]) for i in range(2)]
    np.testing.assert_allclose(rank_disagreement(samples).numpy(), expected, rtol=1e-5)
    same = samples[:1].expand(3, -1, -1, -1, -1)
    torch.testing.assert_close(rank_disagreement(same), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_disagreement(same), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_disagreement(torch.stack([samples[0], -samples[0]])),
                               torch.full((2,), 2.0))
    torch.testing.assert_close(rank_disagreement(samples[:1]), torch.zeros(2))


def test_disagreement_measures_read_the_maps_of_their_method(members: list[nn.Module],
                                                             x: torch.Tensor) -> None:
    assert {m.method for m in disagreement.MEASURES.values()} == set(disagreement.METHODS)
    assert not set(disagreement.MEASURES) & set(MEASURES)  # two registries, no name in both
    predictive = Ensemble(members)
    maps = attribute_samples("gradcam", predictive, x)
    scores = disagreement.compute({"gradcam": maps}, ["gradcam_cv", "gradcam_rank_disagreement"])
    torch.testing.assert_close(scores["gradcam_cv"], seed000_uncertainty(maps))
    torch.testing.assert_close(scores["gradcam_rank_disagreement"], rank_disagreement(maps))
    assert disagreement.by_method(["gradient_rank_disagreement", "gradcam_cv",
                                   "gradient_cosine_disagreement"]) == {
        "gradient": ["gradient_rank_disagreement", "gradient_cosine_disagreement"],
        "gradcam": ["gradcam_cv"]}
    with pytest.raises(ConfigError, match="read the 'gradient' maps"):
        disagreement.compute({"gradcam": maps}, ["gradient_rank_disagreement"])
    with pytest.raises(ConfigError, match="did you mean 'gradcam_cv'"):
        disagreement.by_method(["gradcam_vc"])


def test_class_saliency_is_mean_and_standard_error() -> None:
    generator = torch.Generator().manual_seed(4)
    maps = torch.rand(9, 1, 5, 5, generator=generator)
    found = class_saliency(maps, label=3, explained=3)
    torch.testing.assert_close(found.mean, maps.mean(0))
    np.testing.assert_allclose(found.sem.numpy(), stats.sem(maps.numpy(), axis=0), rtol=1e-5)
    assert (found.label, found.explained, found.n) == (3, 3, 9)
    with pytest.raises(DataError, match="at least 2"):
        class_saliency(maps[:1], 0, 0)


@pytest.mark.parametrize("method", ["lrp-epsilon-plus", "gradcam", "guided-backprop"])
def test_channels_last_engine_equals_direct_calls_on_a_batchnorm_resnet(method: str) -> None:
    """The engine holds models channels-last (and LRP folds BatchNorm inside that): the maps
    and the models afterwards are as with plain calls."""
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        model = build("resnet18", width=8).eval()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        members.append(model)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in members]
    samples = attribute_samples(method, Ensemble(members), x, 3)
    direct = torch.stack([get(method)(m, x, 3) for m in members])
    torch.testing.assert_close(samples, direct, atol=1e-6 * float(direct.abs().max()), rtol=1e-4)
    for model, state in zip(members, before, strict=True):
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert all(p.is_contiguous() for p in model.parameters())
