"""`trustmap study influence` end to end on a tiny configuration: files, maps, curves, reuse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trustmap.atomic import Outputs
from trustmap.data import Dataset, load
from trustmap.errors import ConfigError
from trustmap.explain import influence
from trustmap.predictive import Prediction
from trustmap.report.results import PROJECTION_KEYS, InfluenceResults
from trustmap.studies import influence_maps, influence_page
from trustmap.studies.influence_maps import top_pixels
from trustmap.studies.registry import load_settings, run_study
from trustmap.training import forward_in_batches, load_ensemble
from trustmap.uncertainty import entropy

pytestmark = pytest.mark.slow  # trains and runs the whole study end to end

TINY = {"architecture": "lenet5", "members": 2, "epochs": 1, "images": 64, "curve_taus": 5}
STEPS = ["prediction", "projection", "influence", "members", "performance",
         "uncertainty", "curves"]


@dataclass
class Study:
    out: Path
    report: Path
    results: InfluenceResults
    log: list[str]


def _settings(**changes: object) -> object:
    return load_settings("influence", overrides={"influence": {**TINY, **changes}})


def _run(out: Path, **changes: object) -> Study:
    """Run the study, keeping what it handed to the (real) report writer."""
    handed: list[InfluenceResults] = []
    writer = influence_page.write_influence_report

    def recording(results: InfluenceResults, out_dir: Path, outputs: Outputs | None = None
                  ) -> Path:
        handed.append(results)
        return writer(results, out_dir, outputs)

    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(influence_page, "write_influence_report", recording)
        report = run_study("influence", _settings(**changes), out, progress=False,
                           log=lines.append)
    return Study(out, report, handed[0], lines)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    return _run(tmp_path_factory.mktemp("study") / "influence")


@pytest.fixture(scope="module")
def recomputed(study: Study) -> dict[str, torch.Tensor]:
    """The maps again, from the saved members and the first 64 test images."""
    (directory,) = (study.out / "checkpoints").glob("lenet5-*")
    ensemble = load_ensemble(directory)
    test = load("mnist-embedded", "test")
    images, labels = test.images[:64], test.labels[:64]
    logits = torch.stack([forward_in_batches(m, images) for m in ensemble.members])
    probabilities = logits.softmax(-1)
    projection = influence.project(images)
    mean = probabilities.mean(0)
    correct = (mean.argmax(1) == labels).double()
    scores = entropy(Prediction(logits))
    return {"influence": influence.influence_map(projection, mean)[:, 0],
            "members": torch.stack([projection.difference(p)[:, 0] for p in probabilities]),
            "accuracy": projection.difference(correct)[0, 0],
            "entropy": projection.difference(scores)[0, 0],
            "constant": images.std(0)[0] == 0, "mean_image": images.mean(0)[0]}


def test_writes_the_page_metrics_maps_and_the_ensemble(study: Study) -> None:
    assert study.report == study.out / "influence.html" and study.report.is_file()
    assert len(list((study.out / "checkpoints").glob("lenet5-*/member-1.safetensors"))) == 1
    assert not list(study.out.glob(".*tmp")), "a temporary file was left behind"
    metrics = json.loads((study.out / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist-embedded" and metrics["architecture"] == "lenet5"
    assert tuple(metrics["projection"]) == PROJECTION_KEYS
    assert metrics["projection"]["pixels"] == 784
    assert [row["model"] for row in metrics["accuracy"]] == ["member 0", "member 1", "ensemble"]
    assert [row["step"] for row in metrics["timings"]] == STEPS
    assert set(metrics["max_abs_influence"]) == set(study.results.classes)
    assert set(metrics["max_abs_performance"]) == {"accuracy", "log-loss"}
    assert set(metrics["max_abs_uncertainty"]) == {"entropy", "mutual_information"}
    header = metrics["header"]
    assert header["title"] == ("trustmap: influence and performance maps by entropic "
                               "projection (mnist-embedded)")
    assert header["config"]["images"] == 64 and header["images"] == 64
    maps = load_file(str(study.out / influence_maps.MAPS_FILE))
    assert set(maps) == {"influence", "member_maps", "member_std", "performance_accuracy",
                         "performance_log-loss", "uncertainty_entropy",
                         "uncertainty_mutual_information", "constant", "not_converged"}
    assert maps["influence"].shape == (10, 28, 28)
    assert maps["member_maps"].shape == (2, 10, 28, 28)
    assert maps["performance_accuracy"].shape == maps["constant"].shape == (28, 28)
    assert maps["constant"].dtype == torch.bool


def test_maps_match_a_projection_recomputed_from_the_saved_members(study, recomputed) -> None:
    maps = load_file(str(study.out / influence_maps.MAPS_FILE))
    torch.testing.assert_close(maps["influence"], recomputed["influence"], rtol=0, atol=1e-12)
    torch.testing.assert_close(maps["member_maps"], recomputed["members"], rtol=0, atol=1e-12)
    torch.testing.assert_close(maps["performance_accuracy"], recomputed["accuracy"], rtol=0,
                               atol=1e-12)
    torch.testing.assert_close(maps["uncertainty_entropy"], recomputed["entropy"], rtol=0,
                               atol=1e-9)
    assert torch.equal(maps["constant"], recomputed["constant"])
    assert float(maps["influence"].abs().max()) > 0.05  # a trained model's maps are not flat
    assert float(maps["influence"][:, recomputed["constant"]].abs().max()) == 0


def test_member_std_is_the_spread_of_the_member_maps(study: Study) -> None:
    maps = load_file(str(study.out / influence_maps.MAPS_FILE))
    torch.testing.assert_close(maps["member_std"], maps["member_maps"].std(0), rtol=0, atol=0)
    difference = (maps["member_maps"][0] - maps["member_maps"][1]).abs()
    torch.testing.assert_close(maps["member_std"], difference / 2 ** 0.5)  # two members


def test_results_carry_what_the_page_draws(study: Study, recomputed) -> None:
    results = study.results
    assert results.classes == [str(c) for c in range(10)]
    torch.testing.assert_close(results.mean_image, recomputed["mean_image"])
    assert results.influence.shape == results.member_std.shape == (10, 28, 28)
    assert set(results.performance) == {"accuracy", "log-loss"}
    assert all(m.shape == (28, 28) for m in [*results.performance.values(),
                                            *results.uncertainty.values()])
    assert results.not_converged.shape == (28, 28) and not results.not_converged.any()
    assert results.projection["constant_pixels"] == int(recomputed["constant"].sum())
    assert list(results.accuracy.columns) == ["model", "accuracy"]
    assert list(results.timings.columns) == ["step", "seconds"]
    assert results.curve_targets.shape == results.curve_converged.shape == (5, 4)
    assert results.curve_values.shape == (5, 4, 10)


def test_curves_follow_the_strongest_pixel_of_the_strongest_classes(study: Study) -> None:
    results = study.results
    strength = results.influence.abs().flatten(1)  # [K, P]
    classes = strength.amax(1).argsort(descending=True)[:4]
    width = results.influence.shape[-1]
    expected_pixels = [(int(p) // width, int(p) % width) for p in strength[classes].argmax(1)]
    assert len(set(expected_pixels)) == 4  # else the fallback to the next pixels applies
    assert results.curve_pixels == expected_pixels
    # tau = +-1 of a curve are the influence maps' two projections: their difference agrees.
    change = results.curve_values[-1] - results.curve_values[0]  # [Q, K]
    expected = torch.stack([results.influence[:, r, c] for r, c in results.curve_pixels])
    torch.testing.assert_close(change, expected, rtol=0, atol=1e-9)


def test_top_pixels_takes_one_pixel_per_class_then_the_strongest_left() -> None:
    maps = torch.zeros(2, 3, 4)
    maps[0, 2, 1], maps[1, 0, 3], maps[1, 1, 1], maps[0, 1, 1] = 0.5, -0.9, -0.5, 0.1
    assert top_pixels(maps, 2) == [(0, 3), (2, 1)]  # class 1's best, then class 0's
    assert top_pixels(maps, 4) == [(0, 3), (2, 1), (1, 1), (0, 0)]  # then by strength, ties
    shared = torch.zeros(2, 2, 2)
    shared[:, 1, 0] = torch.tensor([0.4, 0.3])
    shared[1, 0, 1] = 0.2
    assert top_pixels(shared, 2) == [(1, 0), (0, 1)]  # both classes peak at one pixel


def test_a_second_run_reuses_the_trained_members(study: Study) -> None:
    (weights,) = (study.out / "checkpoints").glob("lenet5-*/member-0.safetensors")
    before = weights.stat().st_mtime_ns
    again = _run(study.out)
    assert weights.stat().st_mtime_ns == before
    assert sum("reused from" in line for line in again.log) == 2
    assert not any("trained, validation" in line for line in again.log)
    torch.testing.assert_close(again.results.influence, study.results.influence, rtol=0, atol=0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"architecture": "lenet55"}, "did you mean 'lenet5'"),
    ({"architecture": "gru"}, "not an image classifier"),
    ({"metrics": ["acuracy"]}, "'acuracy' is not allowed \\(did you mean 'accuracy'"),
    ({"measures": ["entropie"]}, "'entropie' is not allowed"),
    ({"measures": ["gradcam_cv"]}, "computes no explanation maps"),
    ({"members": 0}, "influence.members: input should be greater than or equal to 1"),
    ({"images": 1}, "at least 2"),
    ({"images": -5}, "influence.images: input should be greater than or equal to 0"),
    ({"curve_taus": 2}, "influence.curve_taus: input should be greater than or equal to 3"),
    ({"curve_pixels": 0}, "influence.curve_pixels"),
    ({"alpha": 0.5}, "influence.alpha: input should be less than 0.5"),
    ({"tol": 0.0}, "influence.tol: input should be greater than 0"),
])
def test_bad_settings_are_config_errors(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings(**changes)


def test_colour_images_stop_the_study_before_training(monkeypatch, tmp_path) -> None:
    colour = Dataset("colour", "test", torch.rand(4, 3, 28, 28), torch.arange(4),
                     tuple("abcd"))
    monkeypatch.setattr(influence_maps, "load", lambda name, split: colour)
    monkeypatch.setattr("trustmap.studies.base.load", lambda name, split: colour)
    with pytest.raises(ConfigError, match="3-channel images; seed 004's maps are per grayscale"):
        run_study("influence", _settings(images=0), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(("changes", "message"), [
    ({"images": 10**6}, "test set has only"),
    ({"curve_pixels": 785}, "only 784 pixels"),
])
def test_sizes_beyond_the_test_split_stop_the_study(changes, message, tmp_path) -> None:
    with pytest.raises(ConfigError, match=message):
        run_study("influence", _settings(**changes), tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()
