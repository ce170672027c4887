from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trustmap.errors import ConfigError, DataError
from trustmap.evaluate.calibration import (
    TEMPERATURE_RANGE,
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    reliability_bins,
)
from trustmap.training import evaluate_logits

# Five inputs, three classes; confidence, correctness and 15-bin index written beside each.
PROBS = torch.tensor([
    [0.90, 0.05, 0.05],  # label 0: conf 0.90, right, bin 13 (0.8667, 0.9333]
    [0.92, 0.05, 0.03],  # label 1: conf 0.92, wrong, bin 13
    [0.20, 0.50, 0.30],  # label 1: conf 0.50, right, bin 7 (0.4667, 0.5333]
    [0.30, 0.48, 0.22],  # label 2: conf 0.48, wrong, bin 7
    [0.05, 0.10, 0.85],  # label 2: conf 0.85, right, bin 12 (0.8, 0.8667]
], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 2, 2])


def test_hand_computed_metrics() -> None:
    metrics = calibration_metrics(PROBS, LABELS)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    nll = -(math.log(0.90) + math.log(0.05) + math.log(0.50) + math.log(0.22) + math.log(0.85)) / 5
    assert metrics["nll"] == pytest.approx(nll)
    # Per input sum_k (p_k - onehot_k)^2: 0.015, 1.7498, 0.38, 0.9288, 0.035.
    assert metrics["brier"] == pytest.approx(3.1086 / 5)
    # Bin 13: acc 1/2, conf 0.91, gap 0.41; bin 7: acc 1/2, conf 0.49, gap 0.01;
    # bin 12: acc 1, conf 0.85, gap 0.15.
    assert metrics["ece"] == pytest.approx((2 * 0.41 + 2 * 0.01 + 1 * 0.15) / 5)  # 0.198
    assert metrics["mce"] == pytest.approx(0.41)


def test_reliability_table_of_the_hand_example() -> None:
    table = reliability_bins(PROBS, LABELS)
    assert list(table.columns) == ["bin_lower", "bin_upper", "confidence", "accuracy", "count"]
    assert len(table) == 15
    assert np.allclose(table.bin_lower, np.arange(15) / 15)
    assert np.allclose(table.bin_upper, np.arange(1, 16) / 15)
    occupied = table[table["count"] > 0]
    assert occupied.index.tolist() == [7, 12, 13]
    assert occupied["count"].tolist() == [2, 1, 2]
    assert np.allclose(occupied.confidence, [0.49, 0.85, 0.91])
    assert np.allclose(occupied.accuracy, [0.5, 1.0, 0.5])
    empty = table[table["count"] == 0]
    assert empty.confidence.isna().all() and empty.accuracy.isna().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bins_include_their_upper_edge(dtype: torch.dtype) -> None:
    # Confidence 1/15 (uniform over 15 classes) is in bin 0; 0.8 = 12/15 in bin 11, not 12;
    # 1.0 in the last bin.
    uniform = torch.full((15,), 1 / 15, dtype=dtype)
    edge = torch.zeros(15, dtype=dtype)
    edge[:2] = torch.tensor([0.8, 0.2], dtype=dtype)
    certain = F.one_hot(torch.tensor(3), 15).to(dtype)
    table = reliability_bins(torch.stack([uniform, edge, certain]), torch.tensor([0, 0, 3]))
    assert table["count"][[0, 11, 14]].tolist() == [1, 1, 1]
    assert table["count"].sum() == 3


def test_fewer_bins_and_a_perfectly_calibrated_case() -> None:
    # Two bins, (0, 0.5] and (0.5, 1]: confidence 0.75 with 3 of 4 right, 0.5 with 1 of 2 right.
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 0, 1])
    metrics = calibration_metrics(probs, labels, bins=2)
    assert metrics["ece"] == pytest.approx(0) and metrics["mce"] == pytest.approx(0)
    assert reliability_bins(probs, labels, bins=2)["count"].tolist() == [2, 4]
    # Both 0.5 inputs right: that bin's gap is 0.5, weighted 2/6.
    labels[5] = 0
    metrics = calibration_metrics(probs, labels, bins=2)
    assert metrics["ece"] == pytest.approx(1 / 6) and metrics["mce"] == pytest.approx(0.5)
    # One bin: accuracy 5/6 against mean confidence 4/6.
    metrics = calibration_metrics(probs, labels, bins=1)
    assert metrics["ece"] == pytest.approx(1 / 6) and metrics["mce"] == pytest.approx(1 / 6)


def test_accuracy_and_nll_agree_with_training() -> None:
    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(1))
    metrics = calibration_metrics(logits.softmax(1).numpy(), labels.numpy())
    accuracy, nll = evaluate_logits(logits, labels)
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5)


def _sample(true_temperature: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and labels drawn from softmax(z / true_temperature)."""
    generator = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(n, 10, generator=generator, dtype=torch.float64)
    probs = (logits / true_temperature).softmax(1)
    return logits, torch.multinomial(probs, 1, generator=generator)[:, 0]


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    logits, labels = _sample(2.5, 5000, seed=0)
    fitted = fit_temperature(logits, labels)
    # Tolerance from the Fisher information: NLL has curvature N * E[Var_p(z)] in beta = 1/T,
    # so the standard error of T = 1/beta is T^2 / sqrt(N * E[Var_p(z)]) (about 0.037 here).
    # Four standard errors: a correct fit fails about once in 16,000 seeds.
    probs = (logits / 2.5).softmax(1)
    variance = (probs * logits**2).sum(1) - (probs * logits).sum(1) ** 2
    standard_error = 2.5**2 / math.sqrt(len(labels) * float(variance.mean()))
    assert abs(fitted - 2.5) < 4 * standard_error
    assert standard_error < 0.05  # the test is tight: within 8% of 2.5


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_never_increases_nll(true_temperature: float) -> None:
    logits, labels = _sample(true_temperature, 1000, seed=3)
    fitted = fit_temperature(logits, labels)
    before = calibration_metrics(logits.softmax(1), labels)["nll"]
    after = calibration_metrics(apply_temperature(logits, fitted), labels)["nll"]
    assert after <= before + 1e-12
    assert fitted == fit_temperature(logits.numpy(), labels.numpy())  # deterministic


def test_temperature_stays_1_when_1_is_already_optimal() -> None:
    # p = 3/4 for class 0 and 3 of 4 labels are 0: the NLL is minimal at exactly T = 1. The
    # search lands within 1e-7 of it with an NLL a few ulps higher; T = 1 is kept instead.
    for k in (4, 9, 17):
        logits = torch.tensor([[math.log(k - 1), 0.0]] * k, dtype=torch.float64)
        labels = torch.tensor([0] * (k - 1) + [1])
        fitted = fit_temperature(logits, labels)
        assert F.cross_entropy(logits / fitted, labels) <= F.cross_entropy(logits, labels)
        assert fitted == 1.0


def test_temperature_at_the_range_edge_warns() -> None:
    logits = torch.randn(100, 5, generator=torch.Generator().manual_seed(4))
    with pytest.warns(RuntimeWarning, match="held-out data"):
        fitted = fit_temperature(logits, logits.argmax(1))  # perfectly separated labels
    assert fitted == pytest.approx(TEMPERATURE_RANGE[0], rel=0.02)


def test_ensemble_is_scaled_on_its_log_predictive() -> None:
    mean_probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    scaled = apply_temperature(mean_probs.log(), 2.0)
    expected = mean_probs.sqrt() / mean_probs.sqrt().sum(1, keepdim=True)  # p^(1/T), T = 2
    assert torch.allclose(scaled, expected)
    assert torch.allclose(apply_temperature(mean_probs.log(), 1.0), mean_probs)


@pytest.mark.parametrize("probs, labels, message", [
    (torch.zeros(3), [0], r"\[N, K\]"),
    (torch.tensor([[0.5, 0.6]]), [0], r"row 0 sums to 1.1\); pass softmax probabilities"),
    (torch.tensor([[1.5, -0.5]]), [0], "non-negative"),
    (torch.tensor([[float("nan"), 1.0]]), [0], "1 NaN or infinite"),
    (torch.tensor([[0.5, 0.5]]), [2], r"labels must lie in \[0, 1\]"),
    (torch.tensor([[0.5, 0.5]]), [0.0], "integer class indices"),
    (torch.tensor([[0.5, 0.5]]), [0, 1], r"shape \(1,\)"),
    (torch.tensor([[0.5, 0.5]], dtype=torch.float64)[:0], [], "non-empty"),
])
def test_bad_inputs_are_refused(probs, labels, message) -> None:
    with pytest.raises(DataError, match=message):
        calibration_metrics(probs, torch.tensor(labels))
    with pytest.raises(DataError, match=message):
        reliability_bins(probs, torch.tensor(labels))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="bins must be a positive integer"):
        calibration_metrics(PROBS, LABELS, bins=0)
    with pytest.raises(ConfigError, match="temperature must be a positive finite"):
        apply_temperature(PROBS.log(), 0.0)
    with pytest.raises(DataError, match=r"clamp_min\(1e-30\).log\(\)"):
        fit_temperature(torch.tensor([[0.0, -math.inf]]), torch.tensor([0]))
