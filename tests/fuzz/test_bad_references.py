"""A user's own model and data, given badly to `trustmap run`: every case is one clear error
(exit code 2, one ``error:`` line) raised before anything is written, so no run folder is left
behind that would refuse the corrected command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from shapes import write_shapes
from typer.testing import CliRunner
from untouched import snapshot
from user_models import SmallCNN

from trustmap.cli import app

runner = CliRunner()

SMALL = """
[data]
in_distribution = "{shapes}"
ood = ["noise-uniform"]
max_per_set = 40
[adversarial]
n = 10
[explanations]
faithfulness_n = 10
sanity_n = 4
class_n = 4
"""


@pytest.fixture(scope="module")
def given(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes folder and two untrained SmallCNN checkpoints (4 classes, RGB); the cases
    fail before any weight is used for a prediction, so training them would prove nothing."""
    root = tmp_path_factory.mktemp("given")
    write_shapes(root / "shapes", train_per_class=6, test_per_class=10)
    for member in range(2):
        torch.manual_seed(member)
        save_file(SmallCNN(4, 3).state_dict(), str(root / f"m{member}.safetensors"))
    torch.manual_seed(0)
    save_file(SmallCNN(10, 3).state_dict(), str(root / "ten-classes.safetensors"))
    return root


Case = tuple[str, dict[str, object], str]
"""(TOML appended to SMALL, or "" ; CLI options; what the error must say)."""

MODEL = '[model]\nfactory = "user_models:SmallCNN"\ncheckpoints = {checkpoints}\n'
GOOD = '["{root}/m0.safetensors", "{root}/m1.safetensors"]'

CASES: dict[str, Case] = {
    "unknown module": (MODEL.format(checkpoints=GOOD).replace("user_models", "no_such_module"),
                       {}, "no_such_module"),
    "unknown callable": (MODEL.format(checkpoints=GOOD).replace("SmallCNN", "SmalCNN"), {},
                         "SmallCNN"),
    "missing checkpoint": (MODEL.format(checkpoints='["{root}/m0.safetensors", '
                                                    '"{root}/gone.safetensors"]'), {},
                           "gone.safetensors"),
    "checkpoint of another shape": (MODEL.format(checkpoints='["{root}/ten-classes.safetensors"]'),
                                    {}, "fc.weight"),
    "model that does not take the images": (
        '[model]\nfactory = "user_models:FixedNet"\ncheckpoints = ["{root}/m0.safetensors"]\n',
        {}, "FixedNet"),
    "factory without checkpoints": ('[model]\nfactory = "user_models:SmallCNN"\n', {},
                                    "checkpoints"),
    "no such data": ("", {"--data": "{root}/nowhere"}, "nowhere"),
    "factory that is not module:callable": ('[model]\nfactory = "user_models"\n'
                                            'checkpoints = ["{root}/m0.safetensors"]\n', {},
                                            "package.module:callable"),
    "torchscript beside a factory": (MODEL.format(checkpoints=GOOD)
                                     + 'torchscript = "{root}/m0.pt"\n', {}, "torchscript"),
    "resize to nothing": ('[data]\nresize = [0, 32]\n', {}, "data.resize"),
    "unknown conform policy": ('[data]\nconform = "squash"\n', {}, "convert"),
    "ood set refused by conform": (
        MODEL.format(checkpoints=GOOD) + '[data]\nconform = "refuse"\n', {},
        "data.conform"),
    "guided backprop named on functional relu": (
        MODEL.format(checkpoints=GOOD) + '[explanations]\nmethods = ["guided-backprop"]\n', {},
        "relu as a function"),
    "mc dropout named for members without dropout": (
        MODEL.format(checkpoints=GOOD)
        + '[predictives]\nkinds = ["single", "ensemble", "mc-dropout"]\n', {},
        "no dropout layer"),
    "cuda where there is none": (MODEL.format(checkpoints=GOOD), {"--device": "cuda"}, "cuda"),
    "detector layer the members lack": (
        MODEL.format(checkpoints=GOOD) + '[detectors]\nlayer = "blok2"\nk = 5\n', {},
        "is not a layer of the members"),
    "more knn neighbours than training images": (
        MODEL.format(checkpoints=GOOD) + '[detectors]\nk = 500\n', {},
        "lower detectors.k to at most"),
    "conformal alpha outside (0, 1)": (
        MODEL.format(checkpoints=GOOD) + '[conformal]\nalpha = [0.1, 1.5]\n', {},
        "conformal.alpha must each lie in (0, 1)"),
}


def _merge(extra: str, shapes: Path) -> str:
    """SMALL with the case's tables; a table the case repeats is merged into SMALL's."""
    text = SMALL.format(shapes=shapes)
    for table in ("data", "explanations"):
        header = f"[{table}]\n"
        if header in extra:
            body = extra.split(header, 1)[1].split("\n[", 1)[0]
            extra = extra.replace(header + body, "")
            text = text.replace(header, header + body.rstrip("\n") + "\n", 1)
    return text + extra


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_reference_is_one_error_and_writes_nothing(case: str, given: Path,
                                                         tmp_path: Path) -> None:
    extra, options, expected = CASES[case]
    if case == "cuda where there is none" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = tmp_path / "run.toml"
    config.write_text(_merge(extra.format(root=given), given / "shapes"))
    runs = tmp_path / "runs"
    runs.mkdir()
    before = snapshot(given)
    arguments = ["run", "--config", str(config), "--runs-dir", str(runs), "--quiet"]
    for option, value in options.items():
        arguments += [option, str(value).format(root=given)]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    assert expected in result.output, result.output
    assert list(runs.iterdir()) == []  # no run folder left behind
    assert snapshot(given) == before


def test_an_ambiguous_npz_asks_for_its_layout(tmp_path: Path) -> None:
    x = np.zeros((6, 3, 8, 3), dtype=np.uint8)  # axis 1 and axis 3 could both be channels
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(6) % 2)
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "data.npz"), "--runs-dir",
                                 str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "layout" in result.output and not (tmp_path / "runs").exists()


def test_the_checkpoint_error_names_the_key_and_both_shapes(given: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(_merge(MODEL.format(checkpoints='["{root}/ten-classes.safetensors"]')
                             .format(root=given), given / "shapes"))
    result = runner.invoke(app, ["run", "--config", str(config), "--runs-dir",
                                 str(tmp_path / "runs"), "--quiet"])
    found = " ".join(result.output.split())
    assert "fc.weight" in found and "[10, 32]" in found and "[4, 32]" in found, found



@pytest.mark.parametrize(("study", "expected"), [("latent", "data.resize = [28, 28]"),
                                                 ("influence", "single-channel")])
def test_a_seed_study_on_images_it_cannot_read_writes_nothing(study: str, expected: str,
                                                              given: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / study
    result = runner.invoke(app, ["study", study, "--data", str(given / "shapes"), "--out",
                                 str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()) and not out.exists()


def test_unlabelled_in_distribution_images_are_refused_before_anything(tmp_path: Path) -> None:
    import trustmap
    from trustmap.data import Dataset
    from trustmap.errors import DataError
    from trustmap.training import RunSpec, TrainConfig, fit_ensemble

    images = torch.rand(8, 3, 16, 16)
    unlabelled = {split: Dataset("mine", split, images, torch.full((8,), -1), ())
                  for split in ("train", "test")}
    out = tmp_path / "mine"
    with pytest.raises(DataError, match="without a label.*data.ood"):
        trustmap.audit([SmallCNN(4, 3)], data=unlabelled, out=out)
    assert not out.exists()
    spec = RunSpec(model="lenet", members=1, seed=0, train=TrainConfig(epochs=1))
    with pytest.raises(DataError, match="training needs every label"):
        fit_ensemble(spec, unlabelled["train"], tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
