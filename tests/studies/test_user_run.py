"""`trustmap run` on a user's own model and images: a 32x32 RGB ImageFolder of drawn shapes and
a small CNN with functional relu and BatchNorm, given as trained checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from shapes import CLASSES, write_shapes
from typer.testing import CliRunner
from user_models import SmallCNN

from trustmap.cli import app
from trustmap.data import load
from trustmap.per_sample import KEY_COLUMNS, PREDICTION_COLUMNS

pytestmark = pytest.mark.slow  # trains three members and runs the whole study

MEMBERS = 3


def _train_members(root: Path, out: Path) -> list[Path]:
    """Three SmallCNNs fitted for a few epochs on the shapes (plain torch: the user's training)."""
    train = load(str(root), "train")
    paths = []
    for member in range(MEMBERS):
        torch.manual_seed(member)
        net = SmallCNN(len(CLASSES), 3)
        optimizer = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(12):
            order = torch.randperm(len(train))
            for start in range(0, len(train), 32):
                batch = order[start:start + 32]
                loss = F.cross_entropy(net(train.images[batch]), train.labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        paths.append(out / f"member-{member}.safetensors")
        save_file(net.eval().state_dict(), str(paths[-1]))
    return paths


@pytest.fixture(scope="module")
def user_run(tmp_path_factory) -> tuple[Path, Path, str]:
    work = tmp_path_factory.mktemp("user")
    root = write_shapes(work / "shapes")
    checkpoints = _train_members(root, work)
    config = work / "mine.toml"
    config.write_text(f"""
name = "mine"
[data]
in_distribution = "{root}"
ood = ["noise-uniform", "{root}/test/circle"]
max_per_set = 80
[model]
factory = "user_models:SmallCNN"
checkpoints = {json.dumps([str(p) for p in checkpoints])}
[adversarial]
attacks = ["fgsm"]
epsilons = [0.1]
n = 40
[explanations]
faithfulness_n = 40
sanity_n = 8
class_n = 10
""")
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--runs-dir",
                                      str(work / "runs")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return work / "runs" / "mine", root, result.output


def test_the_run_writes_the_report_and_the_per_sample_table(user_run) -> None:
    out, root, output = user_run
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file()
    frame = pd.read_parquet(out / "per_sample.parquet")
    assert list(frame.columns[:len(KEY_COLUMNS + PREDICTION_COLUMNS)]) == \
        list(KEY_COLUMNS + PREDICTION_COLUMNS)
    assert [f"p_{c}" for c in CLASSES] == [c for c in frame.columns if c.startswith("p_")]
    # no dropout in the user's model: only the predictives it can make
    assert set(frame["predictive"]) == {"single", "ensemble"}
    assert "mc-dropout, ensemble-mc left out" in output
    roles = frame.groupby("set")["role"].first().to_dict()
    assert roles[str(root)] == "id" and roles["noise-uniform"] == "ood"
    assert roles["adv:fgsm:0.1:ensemble"] == "adversarial"
    ensemble = frame[(frame["predictive"] == "ensemble") & (frame["set"] == str(root))]
    assert len(ensemble) == 80 and ensemble["correct"].mean() > 0.6
    assert set(ensemble["label_name"]) == set(CLASSES)
    noise = frame[frame["set"] == "noise-uniform"]
    assert noise["label"].isna().all()


def test_gray_ood_sets_are_converted_and_recorded(user_run) -> None:
    out, root, output = user_run
    metrics = json.loads((out / "metrics.json").read_text())
    steps = metrics["header"]["datasets"]["noise-uniform"]["provenance"]["transforms"]
    assert any("gray -> RGB" in step for step in steps), steps
    assert "noise-uniform: images [1, 28, 28] converted to [3, 32, 32]" in output


def test_methods_the_model_cannot_take_are_left_out_loudly(user_run) -> None:
    out, _, output = user_run
    # SmallCNN applies relu as a function: guided backprop would return the plain gradient
    assert "guided-backprop" in output and "left out" in output
    metrics = json.loads((out / "metrics.json").read_text())
    methods = set(pd.DataFrame(metrics["explanations"]["aopc"])["method"])
    assert "guided-backprop" not in methods and {"gradient", "gradcam"} <= methods
    measures = set(pd.DataFrame(metrics["ood"])["measure"])
    assert "gradcam_rank_disagreement" in measures
    assert not any(m.startswith("guided") for m in measures)
