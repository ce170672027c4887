"""`trustmap study recurrent` end to end on a tiny configuration: files, tables, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustmap.cli import app
from trustmap.errors import ConfigError
from trustmap.studies.registry import load_settings, run_study

pytestmark = pytest.mark.slow  # trains and runs the whole study end to end

ARCHITECTURES = "rnn-shallow,lstm"
METHODS = "sensitivity,lrp-deep-taylor"
TINY = ["--architectures", ARCHITECTURES, "--methods", METHODS, "--epochs", "1", "--n", "24",
        "--aopc-n", "6", "--quiet"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("study") / "recurrent"
    result = CliRunner().invoke(app, ["study", "recurrent", "--out", str(out), *TINY],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_writes_the_report_metrics_and_one_checkpoint_per_architecture(tiny_study):
    out, output = tiny_study
    assert f"report: {out / 'recurrent.html'}" in output
    assert (out / "recurrent.html").is_file()
    for architecture in ARCHITECTURES.split(","):
        assert len(list((out / "checkpoints").glob(f"{architecture}-*/member-0.safetensors"))) \
            == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist-embedded-3-maj"
    assert metrics["chance"] == pytest.approx(2 / 3)
    assert [row["architecture"] for row in metrics["accuracy"]] == ARCHITECTURES.split(",")
    assert all(0 <= row["accuracy"] <= 1 for row in metrics["accuracy"])


def test_every_architecture_and_method_is_scored(tiny_study):
    metrics = json.loads((tiny_study[0] / "metrics.json").read_text())
    pairs = {(row["architecture"], row["method"]) for row in metrics["region"]}
    assert pairs == {(a, m) for a in ARCHITECTURES.split(",") for m in METHODS.split(",")}
    for row in metrics["region"]:
        assert 0 <= row["share"] <= 1 and 0 <= row["share_pixels"] <= 1
        assert 0 < row["n"] <= 24
    orders = {(row["architecture"], row["method"], row["order"]) for row in metrics["aopc"]}
    assert ("lstm", "random", "random") in orders
    assert ("rnn-shallow", "lrp-deep-taylor", "morf") in orders
    assert all(row["n"] == 6 and 1 <= row["flips_to_change"] <= 49 for row in metrics["aopc"])
    assert all(row["maps_per_second"] > 0 for row in metrics["speed"])


def test_a_second_run_reuses_the_trained_models(tiny_study, tmp_path):
    out, _ = tiny_study
    (weights,) = (out / "checkpoints").glob("lstm-*/member-0.safetensors")
    before = weights.stat().st_mtime_ns
    lines: list[str] = []
    settings = load_settings("recurrent", overrides={"recurrent": {
        "architectures": ["lstm"], "methods": ["sensitivity"], "epochs": 1, "explain_n": 10,
        "aopc_n": 4, "examples": 1}})
    run_study("recurrent", settings, out, progress=False, log=lines.append)
    assert not any("trained" in line for line in lines)
    assert weights.stat().st_mtime_ns == before
    # Other training settings are other checkpoints: trained beside, never mixed in.
    settings = load_settings("recurrent", overrides={"recurrent": {
        "architectures": ["lstm"], "methods": ["sensitivity"], "epochs": 2, "explain_n": 10,
        "aopc_n": 4, "examples": 1}})
    run_study("recurrent", settings, out, progress=False, log=lines.append)
    assert len(list((out / "checkpoints").glob("lstm-*/member-0.safetensors"))) == 2
    assert weights.stat().st_mtime_ns == before


@pytest.mark.parametrize(("changes", "message"), [
    ({"architectures": ["lenet"]}, "'lenet' reads 28x28 images, not sequences"),
    ({"architectures": ["lstn"]}, "did you mean 'lstm'"),
    ({"methods": ["lrp-deep-taylr"]}, "did you mean 'lrp-deep-taylor'"),
    ({"explain_n": 0}, "recurrent.explain_n: input should be greater than or equal to 1"),
    ({"val_fraction": 0.0}, "recurrent.val_fraction"),
])
def test_bad_settings_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_settings("recurrent", overrides={"recurrent": changes})


def test_the_cli_turns_bad_settings_into_one_line(tmp_path):
    result = CliRunner().invoke(app, ["study", "recurrent", "--out", str(tmp_path),
                                      "--architectures", "rnn-deeep", "--quiet"])
    assert result.exit_code == 2
    assert "did you mean 'rnn-deep'" in result.output
    assert not any(tmp_path.iterdir())  # nothing written before the settings were checked
