from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trustmap.errors import DataError
from trustmap.evaluate.ood import detection_metrics, misclassification_metrics, roc_points

KEYS = {"auroc", "aupr_in", "aupr_out", "fpr95"}


def _mann_whitney_auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """P(positive > negative) + P(tie) / 2 over all pairs: the rank-based AUROC."""
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _fpr_at_95(negative: np.ndarray, positive: np.ndarray) -> float:
    """Threshold = the ceil(0.95 P)-th largest positive; count negatives >= it."""
    threshold = np.sort(positive)[::-1][math.ceil(0.95 * len(positive)) - 1]
    return float((negative >= threshold).mean())


def test_perfect_separation() -> None:
    metrics = detection_metrics([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])
    assert metrics == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}


def test_reversed_scores() -> None:
    metrics = detection_metrics([0.7, 0.8, 0.9], [0.1, 0.2, 0.3])
    assert metrics["auroc"] == 0.0
    assert metrics["fpr95"] == 1.0  # flagging all 3 positives needs t = 0.1: every negative
    assert metrics["aupr_out"] < 0.6 and metrics["aupr_in"] < 0.6


def test_small_hand_case() -> None:
    # Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-).
    metrics = detection_metrics(np.array([0.1, 0.4]), np.array([0.35, 0.8]))
    assert metrics["auroc"] == pytest.approx(0.75)  # 3 of 4 pairs in order
    assert metrics["aupr_out"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # precision 1, then 2/3
    # Negatives first by negated score: -0.1 (-), -0.35 (+), -0.4 (-), -0.8 (+).
    assert metrics["aupr_in"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics["fpr95"] == 0.5  # t = 0.35 flags the negative at 0.4


def test_aupr_in_and_out_differ_when_the_sets_differ() -> None:
    # aupr_out ranks 0.9 (-), 0.5 (+): precision 1/2 at the one positive.
    # aupr_in ranks by negated score 0.1, 0.2, 0.3 (all -), 0.5 (+), 0.9 (-): 1, 1, 1, 4/5.
    metrics = detection_metrics([0.1, 0.2, 0.3, 0.9], [0.5])
    assert metrics["aupr_out"] == pytest.approx(0.5)
    assert metrics["aupr_in"] == pytest.approx((1 + 1 + 1 + 0.8) / 4)
    assert metrics["auroc"] == pytest.approx(0.75)


def test_fpr95_counts_negatives_tied_at_the_threshold() -> None:
    # 20 positives: 18 above 5 and 2 at 5.0, so the 19th largest (95% TPR) is t = 5.0.
    positive = np.r_[np.arange(6.0, 24.0), 5.0, 5.0]
    negative = np.r_[np.full(4, 5.0), np.full(6, 1.0)]
    # The 4 negatives tied at t are flagged with it: 4 / 10 (a strict ">" would give 0).
    assert detection_metrics(negative, positive)["fpr95"] == 0.4
    assert _fpr_at_95(negative, positive) == 0.4


def test_fpr95_is_read_at_its_threshold_not_at_a_later_corner() -> None:
    # 18 positives above 5, then ties (1 positive, 1 negative) at 5.0 and again at 4.0: the ROC
    # points after 5.0 and 4.0 are collinear, so a curve with only corners would skip t = 5.0
    # and report 2/10 instead of 1/10.
    positive = np.r_[np.arange(6.0, 24.0), 5.0, 4.0]
    negative = np.r_[5.0, 4.0, np.zeros(8)]
    assert detection_metrics(negative, positive)["fpr95"] == 0.1
    assert _fpr_at_95(negative, positive) == 0.1


def test_fpr95_takes_exactly_95_percent_tpr() -> None:
    # Positives 1..20; TPR 19/20 = 0.95 is reached at t = 2, above the negative at 1.5.
    positive = np.arange(1.0, 21.0)
    assert detection_metrics([1.5], positive)["fpr95"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_rank_based_auroc_and_explicit_fpr95(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Rounded to one decimal so ties within and across the sets are common.
    negative = rng.normal(0.0, 1.0, 300).round(1)
    positive = rng.normal(0.8, 1.0, 137).round(1)
    metrics = detection_metrics(torch.from_numpy(negative), torch.from_numpy(positive))
    assert metrics["auroc"] == pytest.approx(_mann_whitney_auroc(negative, positive), abs=1e-12)
    assert metrics["fpr95"] == _fpr_at_95(negative, positive)
    assert 0 < metrics["aupr_in"] < 1 and 0 < metrics["aupr_out"] < 1


def test_numpy_lists_and_torch_agree() -> None:
    negative, positive = [0.3, 0.1, 0.5, 0.2], [0.4, 0.9, 0.25]
    from_lists = detection_metrics(negative, positive)
    assert set(from_lists) == KEYS and all(isinstance(v, float) for v in from_lists.values())
    assert detection_metrics(np.array(negative), np.array(positive)) == from_lists
    as_torch = detection_metrics(torch.tensor(negative), torch.tensor(positive))
    assert as_torch == pytest.approx(from_lists)


def test_roc_points_run_from_origin_to_one() -> None:
    fpr, tpr = roc_points([0.1, 0.4, 0.3], [0.35, 0.8])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    area = float(((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2).sum())
    assert area == pytest.approx(detection_metrics([0.1, 0.4, 0.3], [0.35, 0.8])["auroc"])


def test_misclassification_wrong_is_positive() -> None:
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.3])
    correct = torch.tensor([False, True, False, True, True])
    assert misclassification_metrics(scores, correct)["auroc"] == 1.0
    assert misclassification_metrics(scores, ~correct)["auroc"] == 0.0
    assert misclassification_metrics(scores.numpy(), correct.numpy()) == detection_metrics(
        [0.1, 0.2, 0.3], [0.9, 0.8])


@pytest.mark.parametrize("negative, positive, message", [
    ([0.1, float("nan")], [0.5], r"scores_negative holds 1 NaN or infinite score\(s\), the first "
                                 "at index 1"),
    ([0.1], [float("inf")], "scores_positive holds 1 NaN or infinite"),
    ([], [0.5], "scores_negative is empty, so there is only one class"),
    ([0.1], np.array([]), "scores_positive is empty"),
    (np.zeros((2, 2)), [0.5], r"1-D array of scores \[N\], got shape \(2, 2\)"),
    (["a", "b"], [0.5], "numeric scores"),
    (np.array([True, False]), [0.5], "numeric scores"),
])
def test_bad_scores_are_refused(negative, positive, message) -> None:
    with pytest.raises(DataError, match=message):
        detection_metrics(negative, positive)
    with pytest.raises(DataError, match=message):
        roc_points(negative, positive)


@pytest.mark.parametrize("correct, message", [
    (torch.tensor([True, True, True]), "every one of the 3 predictions is correct"),
    (np.array([False, False, False]), "every one of the 3 predictions is wrong"),
    (torch.tensor([1, 0, 1]), "boolean array"),
    (torch.tensor([True, False]), r"shape \(2,\) but scores has shape \(3,\)"),
])
def test_misclassification_needs_both_classes(correct, message) -> None:
    with pytest.raises(DataError, match=message):
        misclassification_metrics(torch.tensor([0.1, 0.2, 0.3]), correct)
