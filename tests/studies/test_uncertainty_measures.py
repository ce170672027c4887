"""`trustmap run` end to end on a small configuration: files, tables, reuse of the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from trustmap.cli import app
from trustmap.evaluate.detectors import DETECTORS
from trustmap.explain import disagreement
from trustmap.uncertainty import MEASURES

pytestmark = pytest.mark.slow  # trains and runs the whole study end to end

EXPLAINED = ("ensemble", "mc-dropout")  # SMALL's explanations.predictives

SMALL = """
name = "small"
[data]
ood = ["letters", "noise-uniform"]
max_per_set = 120
[model]
members = 2
epochs = 1
[predictives]
mc_samples = 3
[adversarial]
attacks = ["fgsm", "pgd"]
epsilons = [0.2]
attacked = ["ensemble", "mc-dropout"]
n = 40
steps = 2
[explanations]
predictives = ["ensemble", "mc-dropout"]
faithfulness_n = 40
sanity_n = 8
[latent]
resolution = 4
vae_epochs = 1
"""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("runs")
    config = root / "small.toml"
    config.write_text(SMALL)
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--runs-dir", str(root),
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "small", result.output


def test_run_writes_report_metrics_and_per_sample(small_run) -> None:
    out, output = small_run
    assert output.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    assert (out / "report.html").is_file()
    frame = pd.read_parquet(out / "per_sample.parquet")
    kinds = ("single", "ensemble", "mc-dropout", "ensemble-mc")
    sizes = frame.groupby("set").size().to_dict()
    assert sizes["mnist-embedded"] == 120 * 4 and sizes["letters"] == 120 * 4
    assert sizes["adv:pgd:0.2:ensemble"] == 40 * 4 and sizes["noise:pgd:0.2:ensemble"] == 40 * 4
    roles = frame.groupby("set")["role"].first().to_dict()
    assert roles["mnist-embedded"] == "id" and roles["letters"] == "ood"
    assert roles["adv:pgd:0.2:ensemble"] == "adversarial"
    assert roles["noise:pgd:0.2:ensemble"] == "noise"
    attacked = frame[frame["set"] == "adv:pgd:0.2:ensemble"]
    assert set(attacked["attack"]) == {"pgd"} and set(attacked["epsilon"]) == {0.2}
    assert set(attacked["attacked"]) == {"ensemble"}
    # letters are not digits: no label in the model's classes, but their own names
    letters = frame[frame["set"] == "letters"]
    assert letters["label"].isna().all() and letters["correct"].isna().all()
    assert set(letters["label_name"]) <= set("ABCDEFGHIJ")
    assert set(frame["predictive"]) == set(kinds)
    meta = frame.attrs["trustmap"]
    assert meta["classes"] == [str(k) for k in range(10)]
    assert meta["higher_means"]["msp"] == "more trustworthy"
    assert meta["higher_means"]["entropy"] == "less trustworthy"
    probs = frame[[f"p_{k}" for k in range(10)]].to_numpy()
    assert (frame["msp"].to_numpy() == probs.max(1)).all()
    assert (frame["softmax_variance"] >= 0).all()
    for name in MEASURES:
        assert frame[name].notna().all(), name
    for name in disagreement.MEASURES:
        # explanation disagreement is scored under explanations.predictives only
        for kind in kinds:
            scored = frame.loc[frame["predictive"] == kind, name].notna()
            assert scored.all() if kind in EXPLAINED else not scored.any(), (kind, name)
    ensemble = frame[frame["predictive"] == "ensemble"]
    cv = ensemble["gradcam_cv"]
    assert cv.between(0, 1).all() and cv.std() > 0  # 2 members: CV <= sqrt(2 - 1)
    clean = ensemble[ensemble["set"] == "mnist-embedded"]
    assert clean["correct"].mean() > 0.8 and (clean["pred"] == clean["label"]).mean() > 0.8


def test_metrics_cover_every_set_predictive_and_measure(small_run) -> None:
    out, _ = small_run
    metrics = json.loads((out / "metrics.json").read_text())
    ood = pd.DataFrame(metrics["ood"])
    expected_sets = {"letters", "noise-uniform", "adv:fgsm:0.2:ensemble", "adv:pgd:0.2:ensemble",
                     "adv:fgsm:0.2:mc-dropout", "adv:pgd:0.2:mc-dropout"}
    assert set(ood.ood_set) == expected_sets
    assert len(ood) == len(expected_sets) * (4 * len(MEASURES) + 2 * len(disagreement.MEASURES)
                                             + 4 * len(DETECTORS))
    assert ood.auroc.between(0, 1).all()
    # Uniform noise is far from digits: the ensemble's entropy separates it well even here.
    row = ood[(ood.ood_set == "noise-uniform") & (ood.predictive == "ensemble")
              & (ood.measure == "entropy")]
    assert float(row.auroc.iloc[0]) > 0.9
    calibration = pd.DataFrame(metrics["calibration"])
    assert set(calibration.stage) == {"before", "after"}
    after = calibration[calibration.stage == "after"]
    assert (after.temperature > 0).all()
    adversarial = pd.DataFrame(metrics["adversarial"])
    assert set(adversarial.negatives) == {"clean", "noise"}
    assert adversarial.success_rate.between(0, 1).all()
    assert metrics["header"]["seed"] == 0
    sections = [row["section"] for row in metrics["header"]["seconds"]]
    for part in ("training lenet", "attacks", "scoring", "explanations: sanity",
                 "training vae", "latent map", "influence: projection", "drawing"):
        assert part in sections


def test_the_latent_map_splits_its_grid_under_every_predictive(small_run) -> None:
    out, _ = small_run
    shares = pd.DataFrame(json.loads((out / "metrics.json").read_text())["latent"]["shares"])
    assert list(shares.predictive) == ["single", "ensemble", "mc-dropout", "ensemble-mc"]
    assert ((shares.points_near + shares.points_far) == 16).all()  # the 4x4 grid
    assert shares.share.between(0, 1).all() and (shares.threshold > 0).all()
    assert len(list((out / "checkpoints").glob("vae-*/member-0.safetensors"))) == 1
    text = (out / "report.html").read_text()
    assert 'id="latent"' in text and "-maps-lenet.png" in text  # the run's own ensemble


def test_the_influence_maps_project_the_id_test_set(small_run) -> None:
    out, _ = small_run
    found = json.loads((out / "metrics.json").read_text())["influence"]
    assert found["images"] == 120  # data.max_per_set caps the 1,000 of the default
    assert found["projection"]["pixels"] == 784 and found["projection"]["pairs"] == 2 * 784
    assert found["projection"]["pairs_not_converged"] == 0
    assert list(found["max_abs_influence"]) == [str(k) for k in range(10)]
    assert all(0 < v <= 1 for v in found["max_abs_influence"].values())
    assert list(found["max_abs_performance"]) == ["accuracy", "log-loss"]
    assert list(found["max_abs_uncertainty"]) == ["entropy", "mutual_information"]
    text = (out / "report.html").read_text()
    assert 'id="influence"' in text and 'id="influence-spread"' in text  # the study's sections
    for name in ("influence", "spread", "performance", "uncertainty"):
        drawn = list((out / "figures").glob(f"*-{name}.png"))
        assert len(drawn) == 1 and f"figures/{drawn[0].name}" in text


def test_second_run_reuses_the_checkpoints_and_the_cache(small_run) -> None:
    out, _ = small_run
    first_metrics = json.loads((out / "metrics.json").read_text())
    assert first_metrics["header"]["cache"] == "nothing reused"  # the maps read it, not reuse
    first_columns = list(pd.read_parquet(out / "per_sample.parquet").columns)
    result = CliRunner().invoke(app, ["run", "--config", str(out.parent / "small.toml"),
                                      "--runs-dir", str(out.parent)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    header = metrics["header"]
    assert "reused from" in header["model"]
    # From the cache: 4 attacks; the forward passes of 11 sets (ID, letters, noise, four
    # adversarial sets and their noise controls) and of the validation split under each of the
    # 4 predictives; the explanation-disagreement scores of the 11 sets x 2 predictives x 4
    # methods; the ID set's passes again for the latent (4) and influence (1) maps, and the
    # latent grid's passes (4); the region-perturbation curves of the 4 methods (MoRF and
    # LeRF) and of the random order; and the detection tables computed from those scores. For
    # the combined score, the validation split's explanation-disagreement scores (2 x 4); the
    # feature detectors' scores of each of the 2 members on the 11 sets and the validation split.
    assert header["cache"].startswith("191 attack, forward-pass and explanation results reused")
    for table in ("ood", "misclassification", "adversarial"):
        assert metrics[table] == first_metrics[table], table  # and give the same numbers
    assert len(list((out / "checkpoints").glob("lenet-*"))) == 1
    # the scores come back from the cache in the measures' order, as they were computed
    assert list(pd.read_parquet(out / "per_sample.parquet").columns) == first_columns


def test_the_page_is_drawn_again_from_the_saved_results(small_run) -> None:
    out, _ = small_run
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "report.html").unlink()
    result = CliRunner().invoke(app, ["redraw", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(out / "report.html"))
    assert (out / "report.html").is_file()
    again = json.loads((out / "metrics.json").read_text())
    for table in ("ood", "calibration", "adversarial", "latent", "influence", "explanations"):
        assert again[table] == metrics[table], table
    empty = out.parent / "empty"
    empty.mkdir()
    refused = CliRunner().invoke(app, ["redraw", str(empty)])
    assert refused.exit_code == 2 and "holds no saved results" in refused.output


def test_a_wrong_config_key_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nmembrs = 2\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown key 'model.membrs'" in result.output and "members" in result.output


def test_metrics_hold_the_explanation_quality(small_run) -> None:
    out, _ = small_run
    explanations = json.loads((out / "metrics.json").read_text())["explanations"]
    assert explanations["predictive"] == "ensemble"
    assert "gradcam_cv" in explanations["measures"]
    aopc = pd.DataFrame(explanations["aopc"])
    methods = ["gradient", "gradcam", "guided-backprop", "lrp-epsilon-plus"]
    assert set(zip(aopc.method, aopc.order, strict=True)) == {
        *((m, o) for m in methods for o in ("morf", "lerf")), ("random", "random")}
    sanity = pd.DataFrame(explanations["sanity"])
    assert set(sanity.method) == set(methods)
    original = sanity[sanity.step == 0]
    assert (original.similarity > 0.99).all()  # every method repeats itself


def test_detectors_conformal_sets_and_selective_prediction_are_in_the_run(small_run) -> None:
    out, _ = small_run
    metrics = json.loads((out / "metrics.json").read_text())
    detectors = pd.DataFrame(metrics["detectors"])
    names = ["mahalanobis", "relative_mahalanobis", "knn", "vim", "react_energy", "ddu"]
    assert list(dict.fromkeys(detectors.detector)) == names
    assert set(detectors.member) == {"0", "1", "mean"}  # two members and their mean
    assert set(detectors.ood_set) == {"letters", "noise-uniform"}
    assert set(detectors.group) == {"near", "far"}
    far = detectors[(detectors.ood_set == "noise-uniform") & (detectors.member == "mean")
                    & (detectors.detector == "mahalanobis")]
    assert float(far.auroc.iloc[0]) > 0.95  # uniform noise is far from digits in feature space
    frame = pd.read_parquet(out / "per_sample.parquet")
    # the ensemble's detector score is the mean of its members', single's is member 0's
    ood = pd.DataFrame(metrics["ood"])
    assert set(names) <= set(ood.measure)
    for name in names:
        assert frame[name].notna().all(), name
    ensemble = frame[frame.predictive == "ensemble"]
    assert not (ensemble["mahalanobis"].to_numpy()
                == frame[frame.predictive == "single"]["mahalanobis"].to_numpy()).all()
    conformal = pd.DataFrame(metrics["conformal"])
    held = conformal[conformal.role == "id (held out)"]
    assert len(held) == 4 * 3 * 2  # predictives x methods x alphas
    assert held.coverage.between(0.7, 1).all() and (held.n_calibration == 60).all()
    sets = frame[(frame.set == "mnist-embedded") & (frame.predictive == "ensemble")]
    assert sets["conformal_calibration"].sum() == 60
    sizes = sets["conformal_lac_0.1"].map(len)
    row = held[(held.predictive == "ensemble") & (held.method == "lac") & (held.alpha == 0.1)]
    assert sizes[~sets["conformal_calibration"].astype(bool)].mean() == pytest.approx(
        float(row.mean_size.iloc[0]))
    selective = pd.DataFrame(metrics["selective"])
    assert (selective.aurc >= selective.oracle_aurc - 1e-12).all()
    combined = pd.DataFrame(metrics["combined"])
    assert set(combined.held_out) == {"letters", "noise-uniform"}
    assert {"rank average", "logistic"} <= set(combined.method)
    text = (out / "report.html").read_text()
    for section in ("detectors", "conformal", "selective", "combined"):
        assert f'id="{section}"' in text, section
