from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from trustmap.errors import DataError
from trustmap.evaluate.selective import aurc, oracle_aurc, risk_coverage, selective_metrics


def _ordered_aurc(order: np.ndarray, correct: np.ndarray) -> float:
    """AURC when inputs are accepted in exactly this order: mean of cumulative errors / k."""
    errors = np.cumsum(~correct[order])
    return float((errors / np.arange(1, len(order) + 1)).mean())


def _brute_force_tie_average(uncertainty: np.ndarray, correct: np.ndarray) -> float:
    """Average AURC over every order of the inputs within each tie group."""
    groups = [np.flatnonzero(uncertainty == value) for value in np.unique(uncertainty)]
    orders = itertools.product(*(itertools.permutations(group) for group in groups))
    return float(np.mean([_ordered_aurc(np.concatenate(order), correct) for order in orders]))


def test_hand_computed_curve_without_ties() -> None:
    # Accepted in order 0.1 (right), 0.4 (wrong), 0.7 (right), 0.9 (wrong):
    # risk = 0/1, 1/2, 1/3, 2/4; AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = 1/3.
    uncertainty = torch.tensor([0.9, 0.1, 0.4, 0.7])
    correct = torch.tensor([False, True, False, True])
    coverage, risk = risk_coverage(uncertainty, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 2, 1 / 3, 2 / 4])
    assert aurc(uncertainty, correct) == pytest.approx(1 / 3)
    # Oracle: both right first, then risk 1/3 and 2/4: (0 + 0 + 1/3 + 1/2) / 4 = 5/24.
    assert oracle_aurc(correct) == pytest.approx(5 / 24)


def test_hand_computed_ties() -> None:
    # Groups by uncertainty: 0.1 {right}, 0.5 {wrong, right, right}, 0.9 {wrong}.
    # Inside the 0.5 group each accepted input is wrong with probability 1/3:
    # k=1: 0 -> 0; k=2: 1/3 errors -> 1/6; k=3: 2/3 -> 2/9; k=4: 1 -> 1/4; k=5: 2 -> 2/5.
    # AURC = (0 + 1/6 + 2/9 + 1/4 + 2/5) / 5 = (0 + 30 + 40 + 45 + 72) / 180 / 5 = 187/900.
    uncertainty = np.array([0.5, 0.1, 0.5, 0.9, 0.5])
    correct = np.array([False, True, True, False, True])
    _, risk = risk_coverage(uncertainty, correct)
    np.testing.assert_allclose(risk, [0, 1 / 6, 2 / 9, 1 / 4, 2 / 5])
    assert aurc(uncertainty, correct) == pytest.approx(187 / 900)
    assert aurc(uncertainty, correct) == pytest.approx(
        _brute_force_tie_average(uncertainty, correct))


def test_ties_equal_the_average_over_all_orders_of_tied_inputs() -> None:
    # Two tie groups of 3 and 4 plus singletons: 3! * 4! = 144 orders, all averaged.
    uncertainty = np.array([0.2, 0.7, 0.2, 0.7, 0.0, 0.7, 0.2, 0.7, 1.0])
    correct = np.array([True, False, False, True, True, False, True, True, False])
    expected = _brute_force_tie_average(uncertainty, correct)
    assert aurc(torch.from_numpy(uncertainty), torch.from_numpy(correct)) == pytest.approx(
        expected, abs=1e-12)
    # A stable sort's arbitrary order among ties would give another value.
    assert _ordered_aurc(np.argsort(uncertainty, kind="stable"), correct) != pytest.approx(
        expected)


def test_all_tied_is_the_full_risk_everywhere() -> None:
    # One group of 4 with 1 error: expected risk (r / 4) / r = 1/4 at every k.
    _, risk = risk_coverage(torch.zeros(4), torch.tensor([True, False, True, True]))
    np.testing.assert_allclose(risk, 0.25)


def test_oracle_closed_form_matches_a_perfect_score() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random(500) < 0.8
    perfect = (~correct).astype(float)  # every error above every right prediction
    assert oracle_aurc(correct) == pytest.approx(aurc(perfect, correct), abs=1e-12)
    metrics = selective_metrics(perfect, correct)
    assert metrics["excess_aurc"] == pytest.approx(0.0, abs=1e-12)


def test_oracle_is_a_lower_bound() -> None:
    rng = np.random.default_rng(1)
    correct = rng.random(300) < 0.7
    for uncertainty in (rng.random(300), rng.integers(0, 4, 300), (~correct) + rng.random(300)):
        assert oracle_aurc(correct) <= aurc(uncertainty, correct) + 1e-12


def test_a_random_score_has_aurc_near_the_full_risk() -> None:
    rng = np.random.default_rng(2)
    correct = torch.from_numpy(rng.random(20_000) < 0.7)
    metrics = selective_metrics(torch.from_numpy(rng.normal(size=20_000)), correct)
    assert metrics["full_coverage_risk"] == pytest.approx(1 - correct.double().mean().item())
    assert metrics["aurc"] == pytest.approx(metrics["full_coverage_risk"], abs=0.01)
    assert metrics["oracle_aurc"] < metrics["aurc"] - 0.2


def test_selective_metrics_pick_the_fewest_inputs_reaching_the_coverage() -> None:
    # Accepted in index order (uncertainty = index); errors at indices 3, 8 and 9 of 10.
    # 80%: k = 8 -> 1 error / 8; 90%: k = 9 -> 2/9; full: 3/10.
    correct = np.ones(10, bool)
    correct[[3, 8, 9]] = False
    metrics = selective_metrics(np.arange(10.0), correct)
    assert metrics["risk_at_80"] == pytest.approx(1 / 8)
    assert metrics["risk_at_90"] == pytest.approx(2 / 9)
    assert metrics["full_coverage_risk"] == pytest.approx(3 / 10)
    assert metrics["excess_aurc"] == pytest.approx(metrics["aurc"] - metrics["oracle_aurc"])
    # With N = 7, 80% needs k = ceil(5.6) = 6 (coverage 6/7 >= 0.8, 5/7 < 0.8).
    correct = np.array([True, True, True, True, True, False, False])
    assert selective_metrics(np.arange(7.0), correct)["risk_at_80"] == pytest.approx(1 / 6)


def test_all_correct_and_all_wrong() -> None:
    metrics = selective_metrics(torch.rand(50), torch.ones(50, dtype=torch.bool))
    assert metrics["aurc"] == metrics["oracle_aurc"] == metrics["excess_aurc"] == 0.0
    assert metrics["full_coverage_risk"] == 0.0
    assert aurc(torch.rand(5), torch.zeros(5, dtype=torch.bool)) == 1.0
    assert oracle_aurc(torch.zeros(5, dtype=torch.bool)) == pytest.approx(1.0)


def test_infinite_uncertainty_is_ranked_last() -> None:
    # Order: 0.0 (right), 1.0 (right), inf (wrong): risk 0, 0, 1/3.
    correct = torch.tensor([False, True, True])
    assert aurc(torch.tensor([float("inf"), 0.0, 1.0]), correct) == pytest.approx(1 / 9)


@pytest.mark.parametrize(("uncertainty", "correct", "match"), [
    (torch.rand(4), torch.ones(3, dtype=torch.bool), "same inputs"),
    (torch.rand(0), torch.ones(0, dtype=torch.bool), "non-empty"),
    (torch.tensor([0.1, float("nan"), 0.3]), torch.ones(3, dtype=torch.bool), "NaN.*index 1"),
    (torch.rand(3), torch.ones(3), "boolean"),
    (torch.rand(3), torch.tensor([1, 0, 1]), "predicted == labels"),
    (torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool), "numeric"),
    (torch.rand(2, 2), torch.ones(2, 2, dtype=torch.bool), "1-D"),
])
def test_bad_input(uncertainty: torch.Tensor, correct: torch.Tensor, match: str) -> None:
    with pytest.raises(DataError, match=match):
        selective_metrics(uncertainty, correct)


def test_oracle_rejects_non_boolean_correct() -> None:
    with pytest.raises(DataError, match="boolean"):
        oracle_aurc(np.array([1, 0]))
