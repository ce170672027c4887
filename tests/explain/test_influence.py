"""Entropic projection maps against a per-pixel root-finding reference and hand-made cases."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy import optimize, special
from sklearn import metrics

from trustmap.errors import ConfigError, DataError
from trustmap.explain import influence
from trustmap.predictive import Prediction
from trustmap.uncertainty import entropy


def _images(seed: int = 0, n: int = 120, pixels: int = 12) -> np.ndarray:
    """Dense, sparse (mostly 0, like MNIST borders), skewed and constant pixels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, pixels))
    x[:, :4] = (rng.random((n, 4)) < 0.25) * rng.random((n, 4))
    x[:, 4] = rng.exponential(size=n) ** 3  # one long tail
    x[:, 5] = 0.3
    return x


def _reference(x: np.ndarray, values: np.ndarray, alpha: float = 0.05,
               taus: tuple[float, ...] = (-1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Weighted means [T, K, P] and tilts [T, P], one pixel at a time, from the formulas.

    The tilt is a bracketed root of sum_i softmax(xi z)_i z_i = goal (scipy's brentq); a
    target at the pixel's minimum or maximum is the limit: uniform weights on those images.
    """
    n, pixels = x.shape
    means = np.zeros((len(taus), values.shape[1], pixels))
    tilts = np.zeros((len(taus), pixels))
    for j in range(pixels):
        column = x[:, j]
        mean, std = column.mean(), column.std(ddof=1)
        for t, tau in enumerate(taus):
            if np.ptp(column) == 0:
                weights = np.full(n, 1 / n)
            else:
                side = mean - np.quantile(column, alpha) if tau < 0 else \
                    np.quantile(column, 1 - alpha) - mean
                goal = tau * max(side, 0) / std
                z = (column - mean) / std
                if abs(goal) < 1e-12:
                    weights = np.full(n, 1 / n)
                elif goal <= z.min() + 1e-9 or goal >= z.max() - 1e-9:
                    extreme = z == (z.min() if goal < 0 else z.max())
                    weights = extreme / extreme.sum()
                    tilts[t, j] = -np.inf if goal < 0 else np.inf
                else:
                    xi = optimize.brentq(lambda xi, z=z, goal=goal: special.softmax(xi * z) @ z
                                         - goal, -1e5, 1e5, xtol=1e-13)
                    weights = special.softmax(xi * z)
                    tilts[t, j] = xi
            means[t, :, j] = weights @ values
    return means, tilts


@pytest.fixture(scope="module")
def case() -> dict:
    x = _images()
    values = special.softmax(np.random.default_rng(1).normal(size=(len(x), 4)), axis=1)
    return {"x": x, "values": values, "projection": influence.project(torch.tensor(x))}


def test_targets_follow_ethiks_rule() -> None:
    x = _images(seed=3)
    got = influence.targets(torch.tensor(x), taus=(-1.0, -0.5, 0.0, 0.5, 1.0), alpha=0.1)
    mean = x.mean(0)
    low, high = np.quantile(x, 0.1, axis=0), np.quantile(x, 0.9, axis=0)
    for row, tau in enumerate((-1.0, -0.5, 0.0, 0.5, 1.0)):
        side = np.maximum(mean - low, 0) if tau < 0 else np.maximum(high - mean, 0)
        np.testing.assert_allclose(got[row].numpy(), mean + tau * side, rtol=0, atol=1e-12)


def test_weighted_means_and_tilts_match_the_per_pixel_reference(case: dict) -> None:
    projection = case["projection"]
    expected, tilts = _reference(case["x"], case["values"])
    got = projection.weighted_mean(torch.tensor(case["values"])).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    finite = np.isfinite(tilts) & (tilts != 0)
    np.testing.assert_allclose(projection.xi.numpy()[finite], tilts[finite], rtol=1e-5)
    assert np.array_equal(np.isinf(projection.xi.numpy()), np.isinf(tilts))


def test_every_converged_pair_reaches_its_target_mean(case: dict) -> None:
    projection, x = case["projection"], case["x"]
    pixels = torch.tensor(x)
    reached = torch.einsum("tpn,np->tp", projection.weights, pixels)
    spread = torch.einsum("tpn,tpn->tp", projection.weights,
                          (pixels.T - reached[..., None]).square()).sqrt()
    assert projection.converged.all()
    assert ((reached - projection.targets).abs() <= influence.TOLERANCE * spread + 1e-12).all()
    assert torch.allclose(projection.weights.sum(-1), torch.ones(2, x.shape[1],
                                                                 dtype=torch.float64))


def test_a_target_at_the_minimum_puts_uniform_weight_on_the_images_at_it() -> None:
    x = torch.tensor([[0.0], [0.0], [0.0], [1.0], [2.0]])
    projection = influence.project(x, alpha=0.2)  # q_0.2 = 0 = the minimum
    assert projection.at_bound[0, 0] and projection.xi[0, 0] == -torch.inf
    np.testing.assert_allclose(projection.weights[0, 0].numpy(), [1 / 3] * 3 + [0, 0])
    values = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    assert projection.weighted_mean(values)[0, 0, 0] == pytest.approx(1.0)


def test_constant_pixels_are_reported_and_have_no_influence(case: dict) -> None:
    projection = case["projection"]
    assert projection.constant.tolist() == [j == 5 for j in range(case["x"].shape[1])]
    assert (projection.xi[:, 5] == 0).all()
    maps = influence.influence_map(projection, torch.tensor(case["values"]))
    assert (maps[:, 5] == 0).all() and (maps[:, :5] != 0).all()
    assert projection.summary()["constant_pixels"] == 1


def test_a_pixel_explaining_itself_moves_by_its_target_difference(case: dict) -> None:
    """values = the pixels themselves: the weighted mean of pixel j under its own projection is
    its target, so the map's diagonal is target(+1) - target(-1)."""
    projection, x = case["projection"], torch.tensor(case["x"])
    maps = projection.difference(x)  # [P (as values), P]
    expected = projection.targets[1] - projection.targets[0]
    std = x.std(0)
    assert (maps.diagonal() - expected).abs().le(2 * influence.TOLERANCE * std + 1e-12).all()


def test_non_convergence_is_reported_per_pixel() -> None:
    x = torch.tensor(_images(seed=5))
    projection = influence.project(x, max_iterations=1)
    summary = projection.summary()
    assert summary["pairs_not_converged"] > 0
    assert summary["pixels_not_converged"] == int((~projection.converged).any(0).sum())
    assert not projection.converged[:, 5].logical_not().any()  # constant: settled, not solved
    assert torch.isfinite(projection.xi[~projection.at_bound]).all()


def test_maps_keep_the_image_shape() -> None:
    x = torch.rand(40, 1, 3, 4)
    projection = influence.project(x)
    assert influence.influence_map(projection, torch.rand(40, 7)).shape == (7, 1, 3, 4)
    assert influence.performance_map(projection, "accuracy", torch.randint(0, 7, (40,)),
                                     torch.rand(40, 7).softmax(1)).shape == (1, 3, 4)
    from_numpy = influence.project(x.numpy())  # arrays work as tensors do
    values = torch.rand(40, 7)
    torch.testing.assert_close(influence.influence_map(from_numpy, values.numpy()),
                               influence.influence_map(projection, values))


@pytest.mark.parametrize("name, reference, predicted", [
    ("accuracy", metrics.accuracy_score, lambda p: p.argmax(1)),
    ("log-loss", functools.partial(metrics.log_loss, labels=range(4)), lambda p: p),
])
def test_per_image_metrics_equal_scikit_learn_with_the_same_weights(
        case: dict, name: str, reference, predicted) -> None:
    projection, probs = case["projection"], case["values"]
    labels = np.random.default_rng(2).integers(0, 4, len(probs))
    fast = influence.performance(projection, name, torch.tensor(labels), torch.tensor(probs))
    slow = influence.performance(projection, reference, labels, predicted(probs))
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-10, atol=1e-12)
    change = influence.performance_map(projection, name, torch.tensor(labels), torch.tensor(probs))
    np.testing.assert_allclose(change.numpy(), (fast[1] - fast[0]).numpy())


def test_uncertainty_map_is_the_change_of_the_measures_mean(case: dict) -> None:
    projection = case["projection"]
    logits = torch.randn(3, len(case["x"]), 4, dtype=torch.float64)
    prediction = Prediction(logits)
    scores = entropy(prediction)
    means = torch.einsum("tpn,n->tp", projection.weights, scores)
    got = influence.uncertainty_map(projection, prediction, "entropy")
    torch.testing.assert_close(got, means[1] - means[0])


def test_member_maps_average_to_the_map_of_the_average(case: dict) -> None:
    projection = case["projection"]
    members = torch.tensor(special.softmax(
        np.random.default_rng(4).normal(size=(3, len(case["x"]), 4)), axis=2))
    spread = influence.member_maps(projection, members)
    assert spread.maps.shape == (3, 4, case["x"].shape[1])
    torch.testing.assert_close(spread.mean, influence.influence_map(projection, members.mean(0)))
    torch.testing.assert_close(spread.std, spread.maps.std(0))
    torch.testing.assert_close(spread.maps[1], influence.influence_map(projection, members[1]))
    assert (influence.member_maps(projection, members[:1]).std == 0).all()


def test_curves_run_from_the_low_to_the_high_target(case: dict) -> None:
    x, values = torch.tensor(case["x"]), torch.tensor(case["values"])
    found = influence.curves(x, values, pixels=[0, 6], taus=np.linspace(-1, 1, 5))
    assert found.values.shape == (5, 2, 4) and found.targets.shape == (5, 2)
    assert (found.targets.diff(dim=0) >= 0).all()
    torch.testing.assert_close(found.values[2], values.mean(0).expand(2, 4))
    ends = case["projection"].weighted_mean(values)[:, :, [0, 6]]  # [2, K, 2]
    torch.testing.assert_close(found.values[[0, -1]], ends.transpose(1, 2))


@pytest.mark.parametrize("images, match", [
    (torch.tensor([[0.1, float("nan")], [0.2, 0.3]]), "NaN"),
    (torch.rand(1, 4), "at least 2"),
    (torch.rand(5), "one row per image"),
])
def test_bad_images_are_refused(images: torch.Tensor, match: str) -> None:
    with pytest.raises(DataError, match=match):
        influence.project(images)


def test_bad_options_and_values_are_refused(case: dict) -> None:
    projection, x = case["projection"], torch.tensor(case["x"])
    with pytest.raises(ConfigError, match="alpha"):
        influence.project(x, alpha=0.5)
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        influence.project(x, taus=(-2.0, 1.0))
    with pytest.raises(ConfigError, match="tau = 1.0 is not among"):
        influence.project(x, taus=(-1.0, 0.0)).difference(x)
    with pytest.raises(DataError, match="N = 120"):
        projection.weighted_mean(torch.rand(7, 3))
    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        influence.performance(projection, "acuracy", torch.zeros(120), torch.rand(120, 3))
    with pytest.raises(DataError, match="class indices"):
        influence.performance(projection, "accuracy", torch.full((120,), 5), torch.rand(120, 3))
    with pytest.raises(ConfigError, match="flat indices"):
        influence.curves(x, torch.rand(120, 2), pixels=[12])
