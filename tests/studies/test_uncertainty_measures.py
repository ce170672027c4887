"""`trustmap run` end to end on a small configuration: files, tables, reuse of the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from trustmap.cli import app
from trustmap.uncertainty import MEASURES

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
    sizes = frame.groupby("dataset").size().to_dict()
    assert sizes["mnist-embedded"] == 120 and sizes["letters"] == 120
    assert sizes["adv:pgd:0.2:ensemble"] == 40 and sizes["noise:pgd:0.2:ensemble"] == 40
    for kind in ("single", "ensemble", "mc-dropout", "ensemble-mc"):
        for measure in MEASURES:
            assert f"{kind}:{measure}" in frame.columns
    ensemble = frame[frame.dataset == "mnist-embedded"]
    assert ((ensemble["ensemble:predicted"] == ensemble["label"]).mean()) > 0.8


def test_metrics_cover_every_set_predictive_and_measure(small_run) -> None:
    out, _ = small_run
    metrics = json.loads((out / "metrics.json").read_text())
    ood = pd.DataFrame(metrics["ood"])
    expected_sets = {"letters", "noise-uniform", "adv:fgsm:0.2:ensemble", "adv:pgd:0.2:ensemble",
                     "adv:fgsm:0.2:mc-dropout", "adv:pgd:0.2:mc-dropout"}
    assert set(ood.ood_set) == expected_sets
    assert len(ood) == len(expected_sets) * 4 * len(MEASURES)
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
    assert metrics["header"]["seed"] == 0 and metrics["header"]["seconds_total"] > 0


def test_second_run_reuses_the_checkpoints_and_the_cache(small_run) -> None:
    out, _ = small_run
    first_metrics = json.loads((out / "metrics.json").read_text())
    assert first_metrics["header"]["cache"] == "nothing reused"
    result = CliRunner().invoke(app, ["run", "--config", str(out.parent / "small.toml"),
                                      "--runs-dir", str(out.parent)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    header = metrics["header"]
    assert "reused from" in header["model"]
    # From the cache: 4 attacks, then the forward passes of 11 sets (ID, letters, noise, four
    # adversarial sets and their noise controls) and of the validation split.
    assert header["cache"].startswith("16 attack and forward-pass results reused")
    assert metrics["ood"] == first_metrics["ood"]  # and give the same numbers
    assert len(list((out / "checkpoints").iterdir())) == 1


def test_a_wrong_config_key_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nmembrs = 2\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown key 'model.membrs'" in result.output and "members" in result.output
