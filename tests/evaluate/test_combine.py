from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from trustmap.errors import DataError
from trustmap.evaluate import combine
from trustmap.evaluate.combine import (
    LogisticCombination,
    fit_logistic,
    leave_one_out,
    rank_average,
)
from trustmap.evaluate.ood import detection_metrics

COLUMNS = ["held_out", "method", "auroc", "aupr_in", "aupr_out", "fpr95", "beats_best_single"]


def _gaussian(rng: np.random.Generator, n: int, shifts: dict[str, float]
              ) -> dict[str, torch.Tensor]:
    """Independent unit-variance normal scores, one per name, each shifted by its mean."""
    return {name: torch.from_numpy(rng.normal(shift, 1.0, n)) for name, shift in shifts.items()}


def test_rank_average_hand_computed() -> None:
    reference = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20, 30, 40])}
    scores = {"b": torch.tensor([40.0, 25, 5]), "a": torch.tensor([2.5, 0.0, 3.0])}
    # a: 2.5 -> 2 below / 4 = 0.5;  0 -> 0;  3 -> (2 below + 1 tie / 2) / 4 = 0.625.
    # b: 40 -> (3 + 1/2) / 4 = 0.875;  25 -> 2/4 = 0.5;  5 -> 0.
    # mean: (0.5 + 0.875) / 2, (0 + 0.5) / 2, (0.625 + 0) / 2.
    combined = rank_average(reference, scores)
    assert combined.dtype == torch.float64
    torch.testing.assert_close(combined, torch.tensor([0.6875, 0.25, 0.3125], dtype=torch.float64))


def test_rank_average_is_unchanged_by_a_monotone_rescaling() -> None:
    rng = np.random.default_rng(0)
    reference, scores = _gaussian(rng, 200, {"a": 0, "b": 0}), _gaussian(rng, 50, {"a": 1, "b": 1})
    rescaled = {"a": reference["a"] * 1000 + 5, "b": reference["b"].exp()}
    torch.testing.assert_close(
        rank_average(reference, scores),
        rank_average(rescaled, {"a": scores["a"] * 1000 + 5, "b": scores["b"].exp()}))


def test_rank_average_names_must_match() -> None:
    reference = {"a": torch.rand(5), "b": torch.rand(5)}
    with pytest.raises(DataError, match=r"missing \['b'\], unexpected \['c'\]"):
        rank_average(reference, {"a": torch.rand(3), "c": torch.rand(3)})


def test_fit_logistic_weights_follow_the_evidence() -> None:
    rng = np.random.default_rng(1)
    id_scores = _gaussian(rng, 1000, {"useful": 0, "reversed": 0, "noise": 0})
    ood_scores = _gaussian(rng, 1000, {"useful": 2, "reversed": -2, "noise": 0})
    combination = fit_logistic(id_scores, ood_scores)
    weights = combination.weights
    assert list(weights) == ["useful", "reversed", "noise"]
    assert weights["useful"] > 1 and weights["reversed"] < -1 and abs(weights["noise"]) < 0.2
    scored = combination.score(ood_scores)
    assert scored.shape == (1000,) and scored.dtype == torch.float64
    assert detection_metrics(combination.score(id_scores), scored)["auroc"] > 0.95


def test_fit_logistic_standardises_by_the_id_statistics() -> None:
    id_scores = {"a": torch.tensor([1.0, 3.0, 5.0]), "flat": torch.full((3,), 7.0)}
    ood_scores = {"a": torch.tensor([30.0, 50.0]), "flat": torch.tensor([9.0, 8.0])}
    combination = fit_logistic(id_scores, ood_scores)
    np.testing.assert_allclose(combination.mean, [3.0, 7.0])
    # np.std([1, 3, 5]) = sqrt(8/3); the constant ID score keeps std 1 instead of 0.
    np.testing.assert_allclose(combination.std, [np.sqrt(8 / 3), 1.0])
    assert np.isfinite(combination.score(ood_scores).numpy()).all()


def test_logistic_score_needs_the_fitted_names() -> None:
    rng = np.random.default_rng(2)
    combination = fit_logistic(_gaussian(rng, 20, {"a": 0}), _gaussian(rng, 20, {"a": 3}))
    assert isinstance(combination, LogisticCombination)
    with pytest.raises(DataError, match=r"missing \['a'\]"):
        combination.score({"b": torch.rand(4)})


def _three_sets(rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """ID validation/test and three OOD sets, each shifting two weak, independent scores."""
    shifts = {"near": 0.8, "mid": 1.0, "far": 1.2}
    return (_gaussian(rng, 2000, {"a": 0, "b": 0}), _gaussian(rng, 2000, {"a": 0, "b": 0}),
            {key: _gaussian(rng, 2000, {"a": mu, "b": mu}) for key, mu in shifts.items()})


def test_leave_one_out_never_fits_on_the_held_out_set_or_the_id_test(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    validation, test, ood = _three_sets(rng)
    fitted: list[dict[str, float]] = []

    def recording_fit(id_scores: combine.Scores, ood_scores: combine.Scores
                      ) -> LogisticCombination:
        combination = fit_logistic(id_scores, ood_scores)
        fitted.append(combination.weights)
        return combination

    monkeypatch.setattr(combine, "fit_logistic", recording_fit)
    table = leave_one_out(validation, test, ood)
    assert list(table.columns) == COLUMNS and len(table) == 9
    # Held out "far": wildly different far and ID test scores leave its fit unchanged.
    wild = {name: values * 50 + 300 for name, values in ood["far"].items()}
    wild_test = {name: -values * 20 for name, values in test.items()}
    wild_table = leave_one_out(validation, wild_test, {**ood, "far": wild})
    assert fitted[2] == fitted[5]  # third call = held-out "far", in both runs
    assert fitted[0] != fitted[3]  # "far" is training data when "near" is held out
    # The same fit, made here from the validation split and the two other sets only.
    others = {name: torch.cat([ood["near"][name], ood["mid"][name]]) for name in ("a", "b")}
    assert fit_logistic(validation, others).weights == fitted[2]
    expected = detection_metrics(fit_logistic(validation, others).score(wild_test),
                                 fit_logistic(validation, others).score(wild))
    row = wild_table.query("held_out == 'far' and method == 'logistic'").iloc[0]
    assert row[["auroc", "aupr_in", "aupr_out", "fpr95"]].to_dict() == expected


def test_two_weak_complementary_scores_beat_each() -> None:
    rng = np.random.default_rng(4)
    validation, test, ood = _three_sets(rng)
    table = leave_one_out(validation, test, ood)
    for held_out, rows in table.groupby("held_out"):
        methods = rows.set_index("method")
        (best,) = [name for name in methods.index if name.startswith("best single: ")]
        # One shifted unit normal: AUROC Phi(mu / sqrt 2); their sum: Phi(mu), clearly higher.
        assert methods.loc["logistic", "auroc"] > methods.loc[best, "auroc"] + 0.03, held_out
        assert methods.loc["logistic", "beats_best_single"]
        assert methods.loc["rank average", "beats_best_single"]
        assert not methods.loc[best, "beats_best_single"]


def test_a_perfect_single_score_is_not_beaten() -> None:
    rng = np.random.default_rng(5)

    def scores(n: int, low: float) -> dict[str, torch.Tensor]:
        return {"noise": torch.from_numpy(rng.normal(0, 1, n)),
                "perfect": torch.from_numpy(rng.uniform(low, low + 1, n))}

    table = leave_one_out(scores(300, 0.0), scores(300, 0.0),
                          {"x": scores(200, 2.0), "y": scores(200, 3.0), "z": scores(200, 5.0)})
    assert set(table["method"]) == {"best single: perfect", "rank average", "logistic"}
    assert (table.loc[table["method"] == "best single: perfect", "auroc"] == 1.0).all()
    assert not table["beats_best_single"].any()
    assert table["beats_best_single"].dtype == bool


def test_leave_one_out_needs_two_ood_sets() -> None:
    rng = np.random.default_rng(6)
    validation, test, ood = _three_sets(rng)
    with pytest.raises(DataError, match="at least two OOD sets"):
        leave_one_out(validation, test, {"near": ood["near"]})


@pytest.mark.parametrize(("where", "match"), [
    ("validation", r"id_validation\['b'\] holds 1 NaN"),
    ("test", r"id_test\['b'\] holds 1 NaN"),
    ("ood", r"ood\['mid'\]\['b'\] holds 1 NaN"),
])
def test_leave_one_out_names_a_nan_score(where: str, match: str) -> None:
    rng = np.random.default_rng(7)
    validation, test, ood = _three_sets(rng)
    target = {"validation": validation, "test": test, "ood": ood["mid"]}[where]
    target["b"] = target["b"].clone()
    target["b"][5] = float("nan")
    with pytest.raises(DataError, match=match):
        leave_one_out(validation, test, ood)


@pytest.mark.parametrize(("change", "match"), [
    (lambda sets: sets[2]["far"].pop("b"), r"ood\['far'\].*missing \['b'\]"),
    (lambda sets: sets[1].update(c=torch.rand(2000)), r"id_test.*unexpected \['c'\]"),
    (lambda sets: sets[1].update(b=torch.rand(10)), "different lengths"),
    (lambda sets: sets[0].update(b=torch.rand(0)), "non-empty"),
    (lambda sets: sets[0].clear(), "holds no scores"),
    (lambda sets: sets[1].update(b=torch.ones(2000, dtype=torch.bool)), "numeric"),
])
def test_leave_one_out_bad_inputs(change: Callable[[tuple], object], match: str) -> None:
    sets = _three_sets(np.random.default_rng(8))
    change(sets)
    with pytest.raises(DataError, match=match):
        leave_one_out(*sets)


def test_fit_logistic_needs_the_same_names_and_finite_scores() -> None:
    with pytest.raises(DataError, match=r"ood_scores.*missing \['b'\]"):
        fit_logistic({"a": torch.rand(5), "b": torch.rand(5)}, {"a": torch.rand(5)})
    with pytest.raises(DataError, match=r"id_scores\['a'\] holds 1 NaN or infinite"):
        fit_logistic({"a": torch.tensor([0.0, float("inf")])}, {"a": torch.rand(5)})


def test_leave_one_out_returns_a_frame_per_held_out_set() -> None:
    rng = np.random.default_rng(9)
    validation, test, ood = _three_sets(rng)
    table = leave_one_out(validation, test, ood)
    assert isinstance(table, pd.DataFrame)
    assert table["held_out"].tolist() == [key for key in ood for _ in range(3)]
    assert table["method"].tolist()[1:3] == ["rank average", "logistic"]
