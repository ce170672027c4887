from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from trustmap.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("train", "--model", "lenet", "--data", "mnist-embedded", "--members", "2",
                    "--epochs", "1", "--dropout", "0.25", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "ensemble test accuracy" in result.output
    accuracy = float(result.output.split("ensemble test accuracy:")[1].split()[0])
    assert accuracy > 0.85  # two members, one epoch on 3,600 real digits
    return out


def test_train_twice_resumes_instead_of_retraining(trained_run: Path) -> None:
    result = invoke("train", "--model", "lenet", "--data", "mnist-embedded", "--members", "2",
                    "--epochs", "1", "--dropout", "0.25", "--out", str(trained_run), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier") == 2


def test_predict_writes_one_row_per_input(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.parquet"
    result = invoke("predict", "--run", str(trained_run), "--data", "mnist-embedded",
                    "--predictive", "ensemble-mc", "--samples", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "6 samples per input" in result.output
    frame = pd.read_parquet(out)
    assert len(frame) == 1000
    probs = frame[[f"p_{c}" for c in "0123456789"]].to_numpy()
    assert abs(probs.sum(1) - 1).max() < 1e-4
    assert (frame["pred"] == probs.argmax(1)).all()
    assert (frame["msp"] == probs.max(1)).all()  # the maximum probability, not 1 - it
    assert list(frame.columns[:7]) == ["set", "role", "attack", "epsilon", "attacked", "index",
                                       "predictive"]
    assert set(frame["role"]) == {"id"} and set(frame["predictive"]) == {"ensemble-mc"}
    assert frame.attrs["trustmap"]["higher_means"]["msp"] == "more trustworthy"
    accuracy = float(result.output.split("accuracy on mnist-embedded (test):")[1].split()[0])
    assert accuracy == pytest.approx(frame["correct"].mean(), abs=1e-4)


def test_predict_on_an_ood_set_reports_no_accuracy(trained_run: Path) -> None:
    result = invoke("predict", "--run", str(trained_run), "--data", "noise-uniform")
    assert result.exit_code == 0, result.output
    assert "no accuracy" in result.output
    frame = pd.read_csv(trained_run / "predictions-noise-uniform-test-ensemble.csv")
    assert set(frame["role"]) == {"ood"}
    assert frame["label"].isna().all() and frame["correct"].isna().all()


def test_explain_writes_maps_scores_and_grid(trained_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from trustmap.data import load
    from trustmap.explain import attribute_samples, rank_disagreement
    from trustmap.predictive import Ensemble
    from trustmap.training import load_ensemble

    out = tmp_path / "explained"
    result = invoke("explain", "--run", str(trained_run), "--data", "mnist-embedded",
                    "--methods", "gradient,gradcam,lrp-epsilon-plus", "--n", "6",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "maps/s" in result.output
    maps = load_file(str(out / "maps.safetensors"))
    assert maps["gradcam/samples"].shape == (2, 6, 1, 28, 28)  # 2 members x 6 inputs
    torch.testing.assert_close(maps["gradient/mean"], maps["gradient/samples"].mean(0))
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 6 and "gradcam:cv" in scores.columns
    # The maps are the members' own, for the ensemble's predicted class.
    x = load("mnist-embedded", "test").images[:6]
    members = load_ensemble(trained_run).members
    expected = attribute_samples("gradient", Ensemble(members), x)
    torch.testing.assert_close(maps["gradient/samples"], expected)
    assert scores["gradient:rank_disagreement"].to_numpy() == pytest.approx(
        rank_disagreement(expected).numpy(), abs=1e-6)
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_on_an_ood_set_names_the_model_s_classes(trained_run: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from trustmap.report import explain_figures

    shown: list[str] = []
    draw = explain_figures.explanation_grid
    monkeypatch.setattr(explain_figures, "explanation_grid",
                        lambda images, labels, *rest: shown.extend(labels) or draw(images, labels,
                                                                                   *rest))
    result = invoke("explain", "--run", str(trained_run), "--data", "letters", "--methods",
                    "gradient", "--n", "3", "--out", str(tmp_path / "letters"))
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "letters" / "scores.csv")
    assert scores["label"].isna().all()  # letters are no digit: no label of the model's
    # each row is named by the digit the model predicted, never by a letter
    assert [label.split(" · ")[1] for label in shown] == [str(p) for p in scores["predicted"]]


def test_explain_lists_methods_and_refuses_unknown_ones(trained_run: Path) -> None:
    listed = invoke("explain", "--list")
    assert listed.exit_code == 0 and "lrp-epsilon-gamma-box" in listed.output
    missing = invoke("explain", "--methods", "gradient")
    assert missing.exit_code == 2 and "--run is missing" in missing.output
    wrong = invoke("explain", "--run", str(trained_run), "--methods", "gradcan")
    assert wrong.exit_code == 2 and "did you mean 'gradcam'" in wrong.output


@pytest.mark.parametrize("args, message", [
    (("train", "--data", "mnist-embeded"), "mnist-embedded"),
    (("train", "--model", "lenet9"), "lenet"),
    (("train", "--optimizer", "rmsprop-ish"), "adam"),
    (("predict", "--run", "no/such/run"), "does not exist"),
    (("predict", "--run", ".", "--out", "x.txt"), ".csv or .parquet"),
    (("data", "show", "nonsense"), "mnist"),
])
def test_bad_arguments_give_one_line_errors(args, message) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_models_and_data_listings() -> None:
    models = invoke("models", "list")
    assert models.exit_code == 0
    for name in ("lenet", "lenet5", "cnn1000", "resnet34"):
        assert name in models.output
    data = invoke("data", "list")
    assert data.exit_code == 0
    assert "mnist-embedded" in data.output and "letters" in data.output
    if "not found" in data.output:
        assert "trustmap data fetch NAME" in data.output


def test_data_show_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    result = invoke("data", "show", "mnist-embedded", "--out", str(out), "--per-class", "4")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_influence_lists_its_options_and_rejects_a_bad_architecture() -> None:
    helped = invoke("study", "influence", "--help")
    assert helped.exit_code == 0
    for option in ("--data", "--out", "--architecture", "--members", "--epochs", "--images",
                   "--curve-pixels", "--device", "--quiet"):
        assert option in helped.output
    wrong = invoke("study", "influence", "--architecture", "lstm", "--quiet")
    assert wrong.exit_code == 2
    assert "error:" in wrong.output and "not an image classifier" in wrong.output
    assert "Traceback" not in wrong.output
