"""The run's conformal, selective and combined tables and the feature detectors' checks, on
small hand-made inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trustmap import per_sample
from trustmap.data import Dataset
from trustmap.errors import ConfigError, DataError
from trustmap.evaluate import conformal
from trustmap.evaluate.selective import selective_metrics
from trustmap.predictive import Prediction
from trustmap.studies import trust_tables
from trustmap.studies.feature_detection import DetectorScores, check_fit_split, member_table
from trustmap.studies.registry import load_settings
from trustmap.studies.settings import ConformalSettings


def _dataset(labels: list[int], classes: int = 3, name: str = "toy") -> Dataset:
    return Dataset(name, "test", torch.rand(len(labels), 1, 4, 4), torch.tensor(labels),
                   tuple(str(k) for k in range(classes)), {"source": "made in the test"})


def test_calibration_share_is_seeded_per_class_and_leaves_every_class_on_both_sides() -> None:
    test = _dataset([0] * 10 + [1] * 2 + [2] * 7)
    mask = trust_tables.calibration_mask(test, 0.5, seed=3)
    assert torch.equal(mask, trust_tables.calibration_mask(test, 0.5, seed=3))
    assert not torch.equal(mask, trust_tables.calibration_mask(test, 0.5, seed=4))
    for label, total in ((0, 10), (1, 2), (2, 7)):
        inside = int(mask[test.labels == label].sum())
        assert 1 <= inside <= total - 1
    assert int(mask[test.labels == 0].sum()) == 5


def test_a_class_missing_from_the_test_images_is_named() -> None:
    with pytest.raises(DataError, match="holds no image of class '2'"):
        trust_tables.calibration_mask(_dataset([0, 0, 1, 1]), 0.5, seed=0)


def _predictions(probs: torch.Tensor) -> dict[str, Prediction]:
    return {"ensemble": Prediction(probs.log()[None])}


def test_conformal_sets_are_calibrated_on_the_share_and_measured_on_the_rest() -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.ones(3)).sample((200,))
    labels = torch.multinomial(probs, 1, generator=generator).flatten()
    mask = torch.zeros(200, dtype=torch.bool)
    mask[:100] = True
    other = torch.softmax(torch.randn(30, 3, generator=generator), 1)
    settings = ConformalSettings(alpha=(0.2,), methods=("lac",))
    sets, table, by_class = trust_tables.conformal_sets(
        settings, 0, "id", mask, labels, ("0", "1", "2"),
        {"id": _predictions(probs), "ood": _predictions(other)})
    fitted = conformal.calibrate(probs[mask].double(), labels[mask], 0.2, "lac",
                                 classes=("0", "1", "2"))
    expected = conformal.prediction_sets(fitted, probs.double())
    assert torch.equal(sets["id"]["ensemble"]["conformal_lac_0.2"], expected)
    held = table[table["set"] == "id"].iloc[0]
    summary = conformal.set_summary(expected[~mask], labels[~mask], ("0", "1", "2"))
    assert held["coverage"] == pytest.approx(summary["coverage"])
    assert held["n_calibration"] == 100 and held["target"] == pytest.approx(0.8)
    ood = table[table["set"] == "ood"].iloc[0]
    assert pd.isna(ood["coverage"])
    size = sets["ood"]["ensemble"]["conformal_lac_0.2"].sum(1).double().mean()
    assert ood["mean_size"] == pytest.approx(float(size))
    assert set(by_class["class"]) == {"0", "1", "2"}


def test_selective_table_is_selective_metrics_per_predictive_and_score() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 0])
    scores = {"ensemble": {"entropy": torch.tensor([0.1, 0.7, 0.3, 0.69])}}
    table = trust_tables.selective_table(labels, _predictions(probs), scores)
    correct = torch.tensor([True, False, True, True])
    expected = selective_metrics(scores["ensemble"]["entropy"], correct)
    assert table.iloc[0]["aurc"] == pytest.approx(expected["aurc"])
    assert list(table[["predictive", "measure"]].iloc[0]) == ["ensemble", "entropy"]


def test_combined_table_needs_two_ood_sets() -> None:
    one = {"ensemble": {"entropy": torch.rand(5)}}
    assert trust_tables.combined_table(one, one, {"letters": one}, ["ensemble"]).empty


def test_per_sample_sets_are_lists_of_class_names() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    sets = {"ensemble": {"conformal_lac_0.1": torch.tensor([[True, False, False],
                                                             [True, True, True]])}}
    frame = per_sample.rows("id", "id", labels=torch.tensor([0, 2]), label_names=["0", "2"],
                            classes=["a", "b", "c"], predictions=_predictions(probs),
                            class_sets=sets, calibration=torch.tensor([True, False]))
    assert [list(v) for v in frame["conformal_lac_0.1"]] == [["a"], ["a", "b", "c"]]
    assert frame["conformal_calibration"].tolist() == [True, False]


def test_detector_fit_split_checks_name_what_to_change(mnist_small: Dataset) -> None:
    settings = load_settings(None, overrides={"detectors": {"k": 601}})
    ctx = type("Ctx", (), {"settings": settings})()
    with pytest.raises(ConfigError, match="lower detectors.k to at most 600"):
        check_fit_split(ctx, mnist_small)  # type: ignore[arg-type]
    one = mnist_small.subset(torch.cat([torch.arange(1), (mnist_small.labels != 0)
                                        .nonzero().flatten()]), "one zero")
    ctx.settings = load_settings(None)
    with pytest.raises(DataError, match="class '0' has 1 training image"):
        check_fit_split(ctx, one)  # type: ignore[arg-type]


def test_member_table_scores_each_member_and_their_mean() -> None:
    ids = [{"knn": torch.tensor([0.1, 0.2, 0.3])}, {"knn": torch.tensor([0.3, 0.2, 0.1])}]
    oods = [{"knn": torch.tensor([0.4, 0.5])}, {"knn": torch.tensor([0.0, 0.05])}]
    found = DetectorScores(["knn"], {"knn": "d_k"}, members={"id": ids, "letters": oods})
    table = member_table(found, "id", ["letters"], near=["letters"])
    assert list(table["member"]) == ["0", "1", "mean"] and set(table["group"]) == {"near"}
    assert table["auroc"].tolist()[:2] == [1.0, 0.0]
    # means: id (0.2, 0.2, 0.2), letters (0.2, 0.275): ties count half -> (3*0.5 + 3) / 6
    assert table["auroc"].iloc[2] == pytest.approx(np.mean([0.5, 1.0]))
