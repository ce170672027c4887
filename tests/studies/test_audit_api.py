"""``trustmap.audit``: the user's members and datasets in memory, a Captum method among the
explanations, and TorchScript members given to ``trustmap run``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from shapes import CLASSES, shape_images
from torch.utils.data import TensorDataset
from typer.testing import CliRunner
from user_models import SmallCNN

import trustmap
from trustmap.cli import app
from trustmap.explain import disagreement
from trustmap.report.results import RunResults

pytestmark = pytest.mark.slow  # trains two members and runs the study twice

SMALL = {"data": {"max_per_set": 40},
         "adversarial": {"attacks": ["fgsm"], "epsilons": [0.1], "n": 20},
         "explanations": {"methods": ["gradient", "captum:Saliency"], "class_method": "gradient",
                          "faithfulness_n": 20, "sanity_n": 4, "class_n": 5}}


def _tensors(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = [torch.from_numpy(shape_images(kind, per_class, seed=seed)) for kind in CLASSES]
    x = torch.cat(images).permute(0, 3, 1, 2).float() / 255
    y = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    return x, y


@pytest.fixture(scope="module")
def members() -> list[SmallCNN]:
    x, y = _tensors(40, seed=0)
    found = []
    for member in range(2):
        torch.manual_seed(member)
        net = SmallCNN(len(CLASSES), 3)
        optimizer = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(20):
            order = torch.randperm(len(x))
            for start in range(0, len(x), 32):
                batch = order[start:start + 32]
                loss = F.cross_entropy(net(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        found.append(net.eval())
    return found


@pytest.fixture(scope="module")
def audited(members, tmp_path_factory) -> tuple[RunResults, Path]:
    out = tmp_path_factory.mktemp("audit") / "mine"
    train, test = (TensorDataset(*_tensors(n, seed)) for n, seed in ((20, 2), (15, 1)))
    unlabelled = TensorDataset(torch.rand(12, 3, 32, 32), torch.full((12,), -1))
    results = trustmap.audit(members, data={"train": train, "test": test},
                             ood=["noise-uniform", {"test": unlabelled}], out=out,
                             classes=CLASSES, settings=SMALL)
    return results, out


def test_audit_returns_the_results_and_writes_the_report(audited) -> None:
    results, out = audited
    assert isinstance(results, RunResults)
    assert (out / "report.html").is_file() and (out / "per_sample.parquet").is_file()
    frame = pd.read_parquet(out / "per_sample.parquet")
    assert frame.equals(results.per_sample.reset_index(drop=True))
    assert set(frame["set"]) >= {"data", "noise-uniform"}
    assert results.header["model"].startswith("2 x SmallCNN (given: in memory)")
    ensemble = frame[(frame["set"] == "data") & (frame["predictive"] == "ensemble")]
    assert len(ensemble) == 40 and ensemble["correct"].mean() > 0.5
    assert set(ensemble["label_name"]) == set(CLASSES)


def test_an_unlabelled_set_has_no_labels(audited) -> None:
    results, _ = audited
    frame = results.per_sample
    unlabelled = frame[~frame["set"].isin(["data", "noise-uniform"])
                       & (frame["role"] == "ood")]
    assert len(unlabelled) == 12 * 2  # single and ensemble
    assert unlabelled["label"].isna().all() and unlabelled["label_name"].isna().all()


def test_a_captum_method_gets_maps_and_disagreement_measures(audited) -> None:
    results, out = audited
    name = "captum_Saliency_rank_disagreement"
    assert name in results.measures and disagreement.is_measure(name)
    ood = pd.DataFrame(json.loads((out / "metrics.json").read_text())["ood"])
    assert ood.loc[ood["measure"] == name, "auroc"].between(0, 1).all()
    found = results.explanations
    assert found is not None and "captum:Saliency" in found.methods
    assert found.mean_maps["captum:Saliency"].shape[-2:] == (32, 32)


def test_torchscript_members_run_from_the_command_line(members, tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    from shapes import write_shapes

    write_shapes(root, train_per_class=10, test_per_class=10)
    files = []
    for index, member in enumerate(members):
        files.append(tmp_path / f"m{index}.pt")
        torch.jit.save(torch.jit.trace(member, torch.rand(2, 3, 32, 32)), str(files[-1]))
    config = tmp_path / "script.toml"
    config.write_text(f"""
[data]
in_distribution = "{root}"
max_per_set = 40
[model]
torchscript = {json.dumps([str(f) for f in files])}
[adversarial]
attacks = ["fgsm"]
epsilons = [0.1]
n = 20
[explanations]
faithfulness_n = 20
sanity_n = 4
class_n = 5
""")
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--runs-dir",
                                      str(tmp_path / "runs"), "--name", "script"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # TorchScript hides the module structure: hooks and rules cannot reach inside
    for method in ("gradcam", "guided-backprop", "lrp-epsilon-plus"):
        assert f"{method} left out" in result.output, result.output
    frame = pd.read_parquet(tmp_path / "runs" / "script" / "per_sample.parquet")
    assert "gradient_rank_disagreement" in frame.columns
    assert not any(c.startswith("gradcam") for c in frame.columns)
