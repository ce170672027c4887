"""`trustmap study latent` end to end on a tiny configuration: files, shares, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustmap.cli import app
from trustmap.errors import ConfigError
from trustmap.studies.registry import load_settings, run_study

pytestmark = pytest.mark.slow  # trains and runs the whole study end to end

TINY = ["--architectures", "lenet5,cnn", "--members", "2", "--epochs", "1", "--vae-epochs", "1",
        "--resolution", "6", "--pairs", "12", "--mc-samples", "2", "--quiet"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("study") / "latent"
    result = CliRunner().invoke(app, ["study", "latent", "--out", str(out), *TINY],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_writes_the_page_metrics_the_vae_and_the_ensembles(tiny_study):
    out, output = tiny_study
    assert f"report: {out / 'latent.html'}" in output
    assert (out / "latent.html").is_file()
    assert len(list((out / "checkpoints").glob("vae-*/member-0.safetensors"))) == 1
    for architecture in ("lenet5", "cnn"):
        assert len(list((out / "checkpoints").glob(f"{architecture}-*/member-1.safetensors"))) == 1


def test_shares_cover_every_predictive_and_split_the_grid(tiny_study):
    metrics = json.loads((tiny_study[0] / "metrics.json").read_text())
    kinds = {(row["architecture"], row["predictive"]) for row in metrics["shares"]}
    # lenet5 has no dropout, cnn has: MC dropout only where it can sample.
    assert kinds == {("lenet5", "single"), ("lenet5", "ensemble"), ("cnn", "single"),
                     ("cnn", "ensemble"), ("cnn", "mc-dropout"), ("cnn", "ensemble-mc")}
    for row in metrics["shares"]:
        assert row["points_near"] + row["points_far"] == 36
        assert 0 <= row["share"] <= 1
        near, far = row["share_near"], row["share_far"]
        overall = (near * row["points_near"] if row["points_near"] else 0) + \
                  (far * row["points_far"] if row["points_far"] else 0)
        assert overall / 36 == pytest.approx(row["share"])
    paths = {row["path"] for row in metrics["midpoints"]}
    assert paths == {"pixel", "latent"}
    assert all(row["pairs"] == 12 for row in metrics["midpoints"])


def test_a_second_run_reuses_the_vae_and_models(tiny_study):
    out, _ = tiny_study
    weights = sorted((out / "checkpoints").glob("*/member-*.safetensors"))
    before = [w.stat().st_mtime_ns for w in weights]
    settings = load_settings("latent", overrides={
        "predictives": {"mc_samples": 2},
        "latent": {"architectures": ["lenet5"], "members": 2, "epochs": 1, "vae_epochs": 1,
                   "resolution": 4, "pairs": 4, "path_examples": 1, "steps": 3}})
    run_study("latent", settings, out, progress=False)
    assert sorted((out / "checkpoints").glob("*/member-*.safetensors")) == weights
    assert [w.stat().st_mtime_ns for w in weights] == before


@pytest.mark.parametrize(("changes", "message"), [
    ({"architectures": ["lenet55"]}, "did you mean 'lenet5'"),
    ({"architectures": ["lstm"]}, "not an image classifier"),
    ({"measures": ["mutual_information"]}, "must include 'entropy'"),
    ({"measures": ["entropy", "entropie"]}, "'entropie' is not allowed"),
    ({"steps": 4}, "odd"),
    ({"resolution": 1}, "latent.resolution: input should be greater than or equal to 2"),
    ({"bound": 0}, "latent.bound: input should be greater than 0"),
])
def test_bad_settings_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        load_settings("latent", overrides={"latent": changes})
