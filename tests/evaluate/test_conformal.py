from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from trustmap.errors import ConfigError, DataError
from trustmap.evaluate.conformal import (
    METHODS,
    Calibrated,
    calibrate,
    prediction_sets,
    set_summary,
)

# Four calibration inputs, three classes. With alpha = 0.4 the threshold is the
# ceil((4 + 1)(1 - 0.4)) = 3rd smallest score.
CAL = torch.tensor([
    [0.60, 0.30, 0.10],  # label 0, rank 1: lac 0.40, aps 0.60,               raps 0.60
    [0.20, 0.45, 0.35],  # label 2, rank 2: lac 0.65, aps 0.45 + 0.35 = 0.80, raps 0.80 + 0.5
    [0.10, 0.05, 0.85],  # label 2, rank 1: lac 0.15, aps 0.85,               raps 0.85
    [0.50, 0.40, 0.10],  # label 1, rank 2: lac 0.60, aps 0.50 + 0.40 = 0.90, raps 0.90 + 0.5
], dtype=torch.float64)
CAL_LABELS = torch.tensor([0, 2, 2, 1])
ALPHA = 0.4


def sets_of(mask: torch.Tensor) -> list[set[int]]:
    return [set(row.nonzero().flatten().tolist()) for row in mask]


def dirichlet(n: int, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities from Dirichlet(0.3) and labels drawn from them: a calibrated model."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.3), size=n)
    labels = (rng.random(n)[:, None] < probs.cumsum(1)).argmax(1)
    return torch.tensor(probs), torch.tensor(labels)


def test_lac_hand_computed() -> None:
    # Scores 1 - p_y: 0.40, 0.65, 0.15, 0.60; sorted 0.15, 0.40, 0.60, 0.65; 3rd = 0.60.
    calibrated = calibrate(CAL, CAL_LABELS, ALPHA, "lac")
    assert calibrated == Calibrated("lac", ALPHA, pytest.approx(0.60), 4, 3, False, 0, 0.0)
    # A class is in where 1 - p <= 0.60, i.e. p >= 0.40 (the second row sits on the threshold).
    test = torch.tensor([[0.45, 0.45, 0.10], [0.30, 0.30, 0.40], [0.35, 0.33, 0.32]],
                        dtype=torch.float64)
    assert sets_of(prediction_sets(calibrated, test)) == [{0, 1}, {2}, set()]


def test_aps_hand_computed_without_randomization() -> None:
    # Scores with U = 1, the mass up to and including y: 0.60, 0.80, 0.85, 0.90; 3rd = 0.85.
    calibrated = calibrate(CAL, CAL_LABELS, ALPHA, "aps", randomized=False)
    assert calibrated == Calibrated("aps", ALPHA, pytest.approx(0.85), 4, 3, False, 0, 0.0)
    # Masses along the ranking; classes up to 0.85 are in, and so is the next one:
    # 0.90 (class 0 alone, kept) | 0.70, 0.90 -> {0, 1} | 0.50, 0.82 (class 2), 1.0 -> all three.
    test = torch.tensor([[0.90, 0.06, 0.04], [0.70, 0.20, 0.10], [0.50, 0.18, 0.32]],
                        dtype=torch.float64)
    assert sets_of(prediction_sets(calibrated, test)) == [{0}, {0, 1}, {0, 1, 2}]


def test_aps_hand_computed_with_randomization() -> None:
    # Scores are mass above y + U p_y, one U per input, drawn in order from the generator:
    # 0 + u0 0.60, 0.45 + u1 0.35, 0 + u2 0.85, 0.50 + u3 0.40.
    u = torch.rand(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).tolist()
    scores = sorted([u[0] * 0.60, 0.45 + u[1] * 0.35, u[2] * 0.85, 0.50 + u[3] * 0.40])
    calibrated = calibrate(CAL, CAL_LABELS, ALPHA, "aps",
                           generator=torch.Generator().manual_seed(0))
    assert calibrated.randomized and calibrated.threshold == pytest.approx(scores[2])
    # A new input's classes share its U: class at rank r is in where mass above + U p_r <= q.
    test = torch.tensor([[0.50, 0.18, 0.32]], dtype=torch.float64)
    v = torch.rand(1, generator=torch.Generator().manual_seed(1), dtype=torch.float64).item()
    expected = {c for c, score in [(0, v * 0.50), (2, 0.50 + v * 0.32), (1, 0.82 + v * 0.18)]
                if score <= scores[2]}
    got = prediction_sets(calibrated, test, generator=torch.Generator().manual_seed(1))
    assert sets_of(got) == [expected]


def test_raps_hand_computed() -> None:
    # APS scores (U = 1) + 0.5 (rank - 1)^+: 0.60, 0.80 + 0.5, 0.85, 0.90 + 0.5; 3rd = 1.30.
    calibrated = calibrate(CAL, CAL_LABELS, ALPHA, "raps", randomized=False, k_reg=1, lam=0.5)
    assert calibrated == Calibrated("raps", ALPHA, pytest.approx(1.30), 4, 3, False, 1, 0.5)
    # Penalised masses along the ranking, the class past the last one within 1.30 kept:
    # 0.90, 0.96 + 0.5 -> {0, 1} | 0.70, 0.90 + 0.5 -> {0, 1} | 0.50, 0.82 + 0.5 -> {0, 2}
    # (APS took all three classes of the last row).
    test = torch.tensor([[0.90, 0.06, 0.04], [0.70, 0.20, 0.10], [0.50, 0.18, 0.32]],
                        dtype=torch.float64)
    assert sets_of(prediction_sets(calibrated, test)) == [{0, 1}, {0, 1}, {0, 2}]


def coverage_over_splits(method: str, alpha: float, randomized: bool = True,
                         splits: int = 100) -> float:
    probs, labels = dirichlet(2000)
    generator = torch.Generator().manual_seed(0)
    coverage = []
    for _ in range(splits):
        cal, test = torch.randperm(len(probs), generator=generator).chunk(2)
        calibrated = calibrate(probs[cal], labels[cal], alpha, method, randomized=randomized,
                               generator=generator)
        sets = prediction_sets(calibrated, probs[test], generator=generator)
        coverage.append(sets.gather(1, labels[test, None]).double().mean())
    return float(torch.stack(coverage).mean())


@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.01])
@pytest.mark.parametrize("method", METHODS)
def test_coverage_is_one_minus_alpha(method: str, alpha: float) -> None:
    # Over random splits of one set, coverage averages between 1 - alpha and
    # 1 - alpha + 1 / (n + 1) = 0.001 more, for 1,000 calibration inputs.
    assert coverage_over_splits(method, alpha) == pytest.approx(1 - alpha, abs=0.015)


@pytest.mark.parametrize("method", ["aps", "raps"])
def test_coverage_without_randomization_is_at_least_one_minus_alpha(method: str) -> None:
    assert coverage_over_splits(method, 0.1, randomized=False, splits=20) >= 0.9


@pytest.mark.parametrize("randomized", [True, False])
def test_raps_without_penalty_is_aps(randomized: bool) -> None:
    probs, labels = dirichlet(400)
    calibrated = {method: calibrate(probs[:200], labels[:200], 0.1, method, lam=0.0, k_reg=3,
                                    randomized=randomized,
                                    generator=torch.Generator().manual_seed(0))
                  for method in ("aps", "raps")}
    assert calibrated["aps"].threshold == calibrated["raps"].threshold
    aps, raps = (prediction_sets(calibrated[method], probs[200:],
                                 generator=torch.Generator().manual_seed(1))
                 for method in ("aps", "raps"))
    assert torch.equal(aps, raps)


def test_lac_sets_grow_as_alpha_shrinks() -> None:
    probs, labels = dirichlet(400)
    sets = [prediction_sets(calibrate(probs[:200], labels[:200], alpha, "lac"), probs[200:])
            for alpha in (0.3, 0.2, 0.1, 0.05, 0.01)]
    for larger_alpha, smaller_alpha in zip(sets, sets[1:], strict=False):
        assert (smaller_alpha >= larger_alpha).all()
    assert sets[-1].sum() > sets[0].sum()


def test_too_small_a_calibration_split_warns_and_keeps_every_class() -> None:
    # ceil((5 + 1)(1 - 0.1)) = 6 > 5: no order statistic is high enough; 9 would do
    # (ceil(10 x 0.9) = 9 <= 9, while 8 needs ceil(8.1) = 9 > 8).
    probs, labels = dirichlet(5, k=4)
    with pytest.warns(UserWarning, match=r"n=5 .*alpha=0\.1.*n >= 9 "):
        calibrated = calibrate(probs, labels, 0.1)
    assert calibrated.threshold == math.inf
    assert prediction_sets(calibrated, probs).all()
    probs, labels = dirichlet(9, k=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibrate(probs, labels, 0.1).threshold < math.inf


def test_set_summary_hand_computed() -> None:
    sets = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    # True classes a, c, b, b: covered, covered, missed (empty set), missed; sizes 2, 1, 0, 1.
    summary = set_summary(sets, torch.tensor([0, 2, 1, 1]), ["a", "b", "c", "d"])
    assert summary["coverage"] == 0.5 and summary["mean_size"] == 1.0
    assert summary["empty"] == 0.25
    nan = pytest.approx(math.nan, nan_ok=True)  # class d has no input
    assert summary["size_by_class"] == {"a": 2.0, "b": 0.5, "c": 1.0, "d": nan}
    assert summary["coverage_by_class"] == {"a": 1.0, "b": 0.0, "c": 1.0, "d": nan}


@pytest.mark.parametrize("change, error, match", [
    ({"alpha": 0.0}, ConfigError, r"alpha must be a number in \(0, 1\)"),
    ({"alpha": 1.0}, ConfigError, "alpha must be"),
    ({"alpha": True}, ConfigError, "alpha must be"),
    ({"alpha": math.nan}, ConfigError, "alpha must be"),
    ({"alpha": "0.1"}, ConfigError, "alpha must be"),
    ({"method": "rasp"}, ConfigError, r"unknown conformal method 'rasp' \(did you mean 'raps'"),
    ({"k_reg": -1}, ConfigError, "k_reg must be an integer >= 0"),
    ({"k_reg": 1.5}, ConfigError, "k_reg must be"),
    ({"lam": -0.1}, ConfigError, "lam must be a finite number >= 0"),
    ({"lam": math.inf}, ConfigError, "lam must be"),
    ({"probs": CAL.clone().fill_(math.nan)}, DataError, "NaN or infinite"),
    ({"probs": torch.where(CAL == 0.85, math.inf, CAL)}, DataError, "NaN or infinite"),
    ({"probs": CAL * torch.tensor([1.0, -1.0, 1.0])}, DataError, "non-negative.*not logits"),
    ({"probs": CAL * 1.001}, DataError, r"summing to 1 within 1e-4 \(row 0 sums to 1\.001"),
    ({"probs": CAL[0]}, DataError, r"float array \[N, K\].*shape \(3,\)"),
    ({"probs": CAL[:0]}, DataError, r"non-empty float array.*shape \(0, 3\)"),
    ({"probs": CAL.long()}, DataError, "float array"),
    ({"labels": CAL_LABELS[:3]}, DataError, r"shape \(4,\) to match the 4 rows"),
    ({"labels": CAL_LABELS.double()}, DataError, "integer class indices"),
    ({"labels": CAL_LABELS > 0}, DataError, "integer class indices"),
    ({"labels": torch.tensor([0, 2, -1, 1])}, DataError, r"\[0, 2\].*-1 .*unlabelled"),
    ({"labels": torch.tensor([0, 2, 3, 1])}, DataError, r"\[0, 2\] for 3 classes"),
    ({"classes": ["a", "b"]}, DataError, "name the 3 classes"),
    ({"labels": torch.tensor([0, 2, 2, 0]), "classes": ["zero", "one", "two"]}, DataError,
     r"no input of class\(es\) 'one'.*larger calibration split"),
])
def test_bad_input_is_refused(change: dict, error: type, match: str) -> None:
    arguments = {"probs": CAL, "labels": CAL_LABELS, "alpha": 0.1, "method": "raps"} | change
    with pytest.raises(error, match=match):
        calibrate(**arguments)


def test_prediction_sets_and_summary_refuse_bad_input() -> None:
    calibrated = calibrate(CAL, CAL_LABELS, ALPHA, "lac")
    with pytest.raises(DataError, match="have 4 classes but were calibrated on 3"):
        prediction_sets(calibrated, torch.full((2, 4), 0.25))
    with pytest.raises(DataError, match="summing to 1"):
        prediction_sets(calibrated, CAL.log_softmax(1))
    sets = prediction_sets(calibrated, CAL)
    with pytest.raises(DataError, match="bool array"):
        set_summary(sets.long(), CAL_LABELS, ["a", "b", "c"])
    with pytest.raises(DataError, match="name the 3 classes"):
        set_summary(sets, CAL_LABELS, ["a", "b"])
    with pytest.raises(DataError, match="unlabelled"):
        set_summary(sets, torch.tensor([0, 1, -1, 2]), ["a", "b", "c"])


# MAPIE, the reference: its SplitConformalClassifier takes a fitted classifier, here one whose
# predict_proba returns the rows of fixed probabilities that X indexes.


def mapie_classifier(probs: np.ndarray, score: str, alpha: float, seed: int = 0):
    base = pytest.importorskip("sklearn.base")
    classification = pytest.importorskip("mapie.classification")

    class Fixed(base.ClassifierMixin, base.BaseEstimator):
        def fit(self, x, y):
            return self

        def predict_proba(self, x):
            return probs[np.asarray(x)[:, 0]]

        def predict(self, x):
            return self.predict_proba(x).argmax(1)

    fixed = Fixed()
    fixed.classes_ = np.arange(probs.shape[1])
    return classification.SplitConformalClassifier(fixed, confidence_level=1 - alpha,
                                                   conformity_score=score, random_state=seed)


@pytest.mark.parametrize("alpha", [0.1, 0.05, 0.01])
def test_lac_sets_are_mapies(alpha: float) -> None:
    probs, labels = dirichlet(2000)
    index = np.arange(2000)[:, None]
    mapie = mapie_classifier(probs.numpy(), "lac", alpha).conformalize(index[:1000], labels[:1000])
    theirs = mapie.predict_set(index[1000:])[1][:, :, 0]
    ours = prediction_sets(calibrate(probs[:1000], labels[:1000], alpha, "lac"), probs[1000:])
    assert np.array_equal(ours.numpy(), theirs)


def test_aps_sets_without_randomization_are_mapies_at_its_threshold() -> None:
    # MAPIE calibrates APS on randomized scores whatever include_last_label says, so only the sets
    # compare: ours with randomized=False, at MAPIE's threshold (the ceil(1001 x 0.9) = 901st
    # smallest of its scores), against its include_last_label=True.
    probs, labels = dirichlet(2000)
    index = np.arange(2000)[:, None]
    mapie = mapie_classifier(probs.numpy(), "aps", 0.1).conformalize(index[:1000], labels[:1000])
    theirs = mapie.predict_set(index[1000:], {"include_last_label": True})[1][:, :, 0]
    threshold = float(np.sort(mapie.conformity_scores.ravel())[900])
    calibrated = Calibrated("aps", 0.1, threshold, 1000, 10, False, 0, 0.0)
    assert np.array_equal(prediction_sets(calibrated, probs[1000:]).numpy(), theirs)


def test_randomized_aps_matches_mapie_on_average() -> None:
    # Same variant (include_last_label="randomized"), different random numbers: over 100 splits
    # the mean coverage and set size agree within their noise (standard errors of the
    # difference about 0.001 and 0.007 here).
    probs, labels = dirichlet(2000)
    index = np.arange(2000)[:, None]
    generator = torch.Generator().manual_seed(0)
    summaries: dict[str, list[dict]] = {"ours": [], "mapie": []}
    for seed in range(100):
        cal, test = torch.randperm(2000, generator=generator).chunk(2)
        calibrated = calibrate(probs[cal], labels[cal], 0.1, "aps", generator=generator)
        ours = prediction_sets(calibrated, probs[test], generator=generator)
        mapie = mapie_classifier(probs.numpy(), "aps", 0.1, seed).conformalize(
            index[cal.numpy()], labels[cal].numpy())
        theirs = mapie.predict_set(index[test.numpy()], {"include_last_label": "randomized"})[1]
        for name, sets in [("ours", ours), ("mapie", torch.from_numpy(theirs[:, :, 0]))]:
            summaries[name].append(set_summary(sets, labels[test], list("abcdefghij")))
    for key, tolerance in [("coverage", 0.005), ("mean_size", 0.05)]:
        ours, theirs = ([summary[key] for summary in summaries[name]] for name in summaries)
        assert np.mean(ours) == pytest.approx(np.mean(theirs), abs=tolerance)
