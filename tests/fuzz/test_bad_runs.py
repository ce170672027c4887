"""Bad arguments, damaged run folders and diverging training, case by case.

Each is a TrustmapError with advice (exit code 2 and one ``error:`` line on the command line),
never a traceback or a number computed from NaN, and none writes or changes a file: a folder
a refused command touched would refuse the corrected command next.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner
from untouched import snapshot

from trustmap.cli import app
from trustmap.data import Dataset
from trustmap.errors import CheckpointError, ConfigError, ModelError, TrustmapError
from trustmap.models import build
from trustmap.predictive import Ensemble, Prediction
from trustmap.training import (
    EpochRecord,
    FitResult,
    RunSpec,
    TrainConfig,
    fit_ensemble,
    load_ensemble,
    save_member,
)

runner = CliRunner()
TINY = TrainConfig(epochs=1, batch_size=32, lr=2e-3)
SPEC = RunSpec(model="lenet", members=2, seed=5, train=TINY, val_fraction=0.1,
               model_kwargs={"dropout": 0.25})
RESUME = ("train", "--model", "lenet", "--members", "2", "--epochs", "1", "--batch-size", "32",
          "--lr", "0.002", "--augment", "none", "--dropout", "0.25", "--seed", "5",
          "--out", "{run}", "--quiet")
"""The command of the tiny run: on an intact copy it only loads the members and tests them."""

Setup = Callable[[Path, Path], None]
"""``setup(tmp, tiny_run)`` builds the bad state under ``tmp``; ``{run}`` is ``tmp / "run"``."""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, mnist_small: Dataset) -> Path:
    """Two lenet members (dropout, one epoch on 600 digits), trained once, copied per case."""
    out = tmp_path_factory.mktemp("bad-runs") / "tiny"
    fit_ensemble(SPEC, mnist_small, out, progress=False)
    return out


# --- setups ----------------------------------------------------------------------------------

def fresh(tmp: Path, tiny: Path) -> None:
    """Nothing: ``{run}`` does not exist yet."""


def copied(tmp: Path, tiny: Path) -> None:
    shutil.copytree(tiny, tmp / "run")


def damaged(name: str, damage: Callable[[Path], None]) -> Setup:
    """A copy of the tiny run whose file ``name`` ``damage`` changes."""
    def setup(tmp: Path, tiny: Path) -> None:
        copied(tmp, tiny)
        damage(tmp / "run" / name)
    return setup


def text(content: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(content)


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def removed(path: Path) -> None:
    path.unlink()


def edited(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Rewrite a JSON file as ``edit`` of its content."""
    return lambda path: path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def without(key: str) -> Callable[[dict], dict]:
    return lambda record: {k: v for k, v in record.items() if k != key}


def nan_weights(path: Path) -> None:
    """A valid safetensors file with one NaN weight, as a diverged training would leave."""
    state = load_file(str(path))
    state["features.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(path))


def weights_of(model: str) -> Callable[[Path], None]:
    """Replace the weights by another architecture's (the JSON still says lenet)."""
    def damage(path: Path) -> None:
        save_file(build(model).state_dict(), str(path))
    return damage


def member_of(model: str, **kwargs: object) -> Setup:
    """A copy of the tiny run whose member 1 is a finished member of another model."""
    def setup(tmp: Path, tiny: Path) -> None:
        copied(tmp, tiny)
        save_member(tmp / "run", 1, build(model, **kwargs),
                    FitResult(seed=1, history=[EpochRecord(1, 0.5, 0.9, 0.3, 1000.0)]))
    return setup


def a_file(tmp: Path, tiny: Path) -> None:
    (tmp / "run").write_text("not a folder\n")


def read_only(tmp: Path, tiny: Path) -> None:
    (tmp / "locked").mkdir(mode=0o555)


def other_folder(tmp: Path, tiny: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "notes.txt").write_text("my notes\n")


def empty_folder(tmp: Path, tiny: Path) -> None:
    (tmp / "run").mkdir()


def out_folder(tmp: Path, tiny: Path) -> None:
    copied(tmp, tiny)
    (tmp / "p.csv").mkdir()


def out_file(tmp: Path, tiny: Path) -> None:
    copied(tmp, tiny)
    (tmp / "explained").write_text("a file\n")


# --- the command line ------------------------------------------------------------------------

ROOT = "root writes even into a read-only folder" if os.geteuid() == 0 else None
SYS = None if Path("/sys").is_dir() else "no /sys, a folder no one may write in"
CUDA = "this machine has CUDA" if torch.cuda.is_available() else None


@dataclass(frozen=True)
class Case:
    """One bad command: the state it meets, its arguments and what its error must say."""

    id: str
    args: tuple[str, ...]
    message: str
    setup: Setup = fresh
    skip: str | None = None


def train(*args: str) -> tuple[str, ...]:
    return ("train", "--out", "{run}", "--quiet", *args)


def predict(*args: str) -> tuple[str, ...]:
    return ("predict", "--run", "{run}", *args)


def explain(*args: str) -> tuple[str, ...]:
    return ("explain", "--run", "{run}", "--methods", "gradient", "--n", "2", *args)


CLI_CASES = [
    # 1. arguments of train: checked before the run folder is claimed
    Case("model-typo", train("--model", "lenett"), "did you mean 'lenet'"),
    Case("dropout-1.5", train("--dropout", "1.5"), "dropout rate in [0, 1)"),
    Case("dropout-nan", train("--dropout", "nan"), "dropout rate in [0, 1)"),
    Case("seed-negative", train("--seed", "-1"), "seed must be"),
    Case("weight-decay-nan", train("--weight-decay", "nan"), "weight_decay must be"),
    Case("weight-decay-negative", train("--weight-decay", "-1"), "weight_decay must be"),
    Case("lr-inf", train("--lr", "inf"), "lr must be"),
    Case("lr-nan", train("--lr", "nan"), "lr must be"),
    Case("lr-zero", train("--lr", "0"), "lr must be"),
    Case("epochs-0", train("--epochs", "0"), "epochs must be"),
    Case("members-0", train("--members", "0"), "members must be"),
    Case("batch-size-0", train("--batch-size", "0"), "batch_size must be"),
    Case("val-fraction-1", train("--val-fraction", "1"), "val_fraction must be"),
    Case("val-fraction-negative", train("--val-fraction", "-0.1"), "val_fraction must be"),
    Case("val-fraction-nan", train("--val-fraction", "nan"), "val_fraction must be"),
    Case("val-fraction-tiny", train("--val-fraction", "0.00001"), "holds out no image"),
    Case("augment-bogus", train("--augment", "bogus"), "augmentation 'bogus'"),
    Case("augment-typo", train("--augment", "shfit"), "did you mean 'shift'"),
    Case("optimizer-bogus", train("--optimizer", "bogus"), "optimizer 'bogus'"),
    Case("optimizer-typo", train("--optimizer", "adamm"), "did you mean 'adam"),
    Case("schedule-bogus", train("--schedule", "bogus"), "schedule 'bogus'"),
    Case("data-unknown", train("--data", "unknown"), "unknown dataset"),
    Case("out-is-a-file", train(), "is a file", a_file),
    Case("out-under-a-file", ("train", "--out", "{run}/sub", "--quiet"), "is a file", a_file),
    Case("out-read-only", ("train", "--out", "{tmp}/locked/run", "--quiet"), "cannot write",
         read_only, ROOT),
    Case("out-in-sys", ("train", "--out", "/sys/trustmap-run", "--quiet"), "cannot write",
         skip=SYS),
    Case("train-device-cuda", train("--device", "cuda"), "no CUDA device", skip=CUDA),
    Case("train-device-bogus", train("--device", "gpu0"), "not a torch device"),
    Case("train-other-settings", (*RESUME, "--epochs", "2"), "other settings", copied),
    # 4. damaged run folders, met by train (resuming) and by predict
    Case("train-run-json-garbage", RESUME, "run.json", damaged("run.json", garbage)),
    Case("train-run-json-empty-list", RESUME, "run.json", damaged("run.json", text("[]"))),
    Case("train-member-json-empty", RESUME, "member-0.json",
         damaged("member-0.json", text("{}"))),
    Case("train-member-of-lenet5", RESUME, "member-1.json", member_of("lenet5")),
    Case("member-json-empty-object", predict(), "member-0.json",
         damaged("member-0.json", text("{}"))),
    Case("member-json-list", predict(), "member-0.json", damaged("member-0.json", text("[]"))),
    Case("member-json-no-model", predict(), "member-0.json",
         damaged("member-0.json", edited(without("model")))),
    Case("member-json-no-metrics", predict(), "member-0.json",
         damaged("member-0.json", edited(without("metrics")))),
    Case("member-json-model-is-a-string", predict(), "member-0.json",
         damaged("member-0.json", edited(lambda m: {**m, "model": "lenet"}))),
    Case("member-json-bad-model-args", predict(), "member-0.json",
         damaged("member-0.json", edited(lambda m: {**m, "model": {**m["model"], "x": 1}}))),
    Case("member-json-truncated", predict(), "member-0.json",
         damaged("member-0.json", truncated)),
    Case("run-json-empty-list", predict(), "run.json", damaged("run.json", text("[]"))),
    Case("run-json-empty-object", predict(), "run.json", damaged("run.json", text("{}"))),
    Case("run-json-spec-3", predict(), "run.json", damaged("run.json", text('{"spec": 3}'))),
    Case("run-json-bad-spec", predict(), "run.json",
         damaged("run.json", edited(lambda r: {**r, "spec": {**r["spec"], "members": -2}}))),
    Case("run-json-no-data", predict(), "run.json", damaged("run.json", edited(without("data")))),
    Case("run-json-truncated", predict(), "run.json", damaged("run.json", truncated)),
    Case("run-json-garbage", predict(), "run.json", damaged("run.json", garbage)),
    Case("weights-truncated", predict(), "member-0.safetensors",
         damaged("member-0.safetensors", truncated)),
    Case("weights-of-lenet5", predict(), "member-0.safetensors",
         damaged("member-0.safetensors", weights_of("lenet5"))),
    Case("weights-missing", predict(), "member-1.safetensors",
         damaged("member-1.safetensors", removed)),
    Case("member-json-missing", predict(), "not finished", damaged("member-1.json", removed)),
    # 3. weights that are not finite, members of another architecture
    Case("weights-nan", predict(), "member-0.safetensors",
         damaged("member-0.safetensors", nan_weights)),
    Case("member-of-lenet5", predict(), "member-1.json", member_of("lenet5")),
    Case("member-with-other-dropout", predict(), "member-1.json",
         member_of("lenet", dropout=0.5)),
    # 5. predict and explain: arguments and --run checked before anything is written
    Case("predict-run-is-a-file", predict(), "not a run folder", a_file),
    Case("predict-run-is-another-folder", predict(), "run.json", other_folder),
    Case("predict-run-is-empty", predict(), "run.json", empty_folder),
    Case("predict-run-missing", predict(), "does not exist"),
    Case("predict-out-suffix", predict("--out", "{tmp}/p.txt"), ".csv or .parquet", copied),
    Case("predict-out-is-a-folder", predict("--out", "{tmp}/p.csv"), "is a folder", out_folder),
    Case("predict-out-under-a-file", predict("--out", "{tmp}/explained/p.csv"), "is a file",
         out_file),
    Case("predict-predictive-unknown", predict("--predictive", "ensamble"),
         "did you mean 'ensemble'", copied),
    Case("predict-split-unknown", predict("--split", "tset"), "unknown split", copied),
    Case("predict-samples-0", predict("--predictive", "mc-dropout", "--samples", "0"),
         "samples must be an integer >= 2", copied),
    Case("predict-samples-1", predict("--predictive", "ensemble-mc", "--samples", "1"),
         "samples must be an integer >= 2", copied),
    Case("predict-data-unknown", predict("--data", "unknown"), "unknown dataset", copied),
    Case("predict-device-cuda", predict("--device", "cuda"), "no CUDA device", copied, CUDA),
    Case("explain-n-0", explain("--n", "0"), "--n must be", copied),
    Case("explain-samples-1", explain("--predictive", "mc-dropout", "--samples", "1"),
         "samples must be an integer >= 2", copied),
    Case("explain-predictive-unknown", explain("--predictive", "bogus"), "predictive 'bogus'",
         copied),
    Case("explain-split-unknown", explain("--split", "bogus"), "unknown split", copied),
    Case("explain-out-is-a-file", explain("--out", "{tmp}/explained"), "is a file", out_file),
    Case("explain-run-is-a-file", explain(), "not a run folder", a_file),
    Case("explain-run-is-empty", explain(), "run.json", empty_folder),
    Case("explain-weights-nan", explain(), "member-0.safetensors",
         damaged("member-0.safetensors", nan_weights)),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.id for case in CLI_CASES])
def test_bad_command_is_one_error_line_and_writes_nothing(
        case: Case, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.skip:
        pytest.skip(case.skip)
    case.setup(tmp_path, tiny_run)
    monkeypatch.chdir(tmp_path)  # outputs with default paths land here too, and are seen
    before = snapshot(tmp_path)
    args = [arg.format(run=tmp_path / "run", tmp=tmp_path) for arg in case.args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "error:" in result.output and case.message in result.output, result.output
    assert "Traceback" not in result.output
    assert snapshot(tmp_path) == before


def test_train_without_validation_split_then_a_typo_then_resume(
        tmp_path: Path, mnist_small: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """--val-fraction 0 trains and says there is no validation split; a refused typo leaves the
    folder as it was, and the corrected command resumes instead of being refused."""
    monkeypatch.setattr("trustmap.data.load", lambda name, split: mnist_small)  # fast
    out = tmp_path / "run"
    args = ["train", "--members", "1", "--epochs", "1", "--val-fraction", "0", "--augment",
            "none", "--out", str(out), "--quiet"]
    typo = runner.invoke(app, [*args, "--model", "lenett"])
    assert typo.exit_code == 2 and "did you mean 'lenet'" in typo.output
    assert not out.exists()
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, (trained.output, trained.exception)
    assert "member 1: no validation split" in trained.output
    assert "ensemble test accuracy" in trained.output
    before = snapshot(out)
    refused = runner.invoke(app, [*args, "--dropout", "1.5"])
    assert refused.exit_code == 2 and "dropout" in refused.output
    assert snapshot(out) == before
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0 and "finished earlier" in resumed.output


def test_train_cleans_the_temporary_files_of_a_killed_write(
        tiny_run: Path, tmp_path: Path) -> None:
    """A kill during write_atomic leaves ``.NAME.XXXX.SUFFIX.tmp`` files behind; the next train
    in that folder owns it, so it removes them, and touches nothing else."""
    copied(tmp_path, tiny_run)
    run = tmp_path / "run"
    kept = snapshot(run)
    stale = [run / ".member-0.k1x9a2.safetensors.tmp", run / ".run.q8w3e1.json.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    refused = runner.invoke(app, [a.format(run=run) for a in (*RESUME, "--epochs", "2")])
    assert refused.exit_code == 2 and all(path.exists() for path in stale)  # not its folder
    result = runner.invoke(app, [arg.format(run=run) for arg in RESUME])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.count("finished earlier") == 2
    assert not any(path.exists() for path in stale)
    assert snapshot(run) == kept


# --- the API ---------------------------------------------------------------------------------

def _poisoned(model: torch.nn.Module, value: float) -> torch.nn.Module:
    """``model`` with every weight of its dense layers set to ``value``: NaN, or a finite
    number so large that the logits overflow to inf."""
    with torch.no_grad():
        model.head.fc1.weight.fill_(value)
        model.head.fc2.weight.fill_(value)
    return model.eval()


API_CASES: list[tuple[str, Callable[[Path, Dataset], object], type[TrustmapError], str]] = [
    ("prediction-of-nan-logits",
     lambda tmp, data: Prediction(torch.tensor([[[0.0, float("nan")]]])),
     ModelError, "not finite"),
    ("ensemble-with-nan-weights",
     lambda tmp, data: Ensemble([_poisoned(build("lenet"), float("nan"))]).predict(
         data.images[:8]),
     ModelError, "not finite"),
    ("logits-that-overflow",
     lambda tmp, data: Ensemble([_poisoned(build("lenet"), 1e30)]).predict(data.images[:8]),
     ModelError, "not finite"),
    ("spec-with-unknown-model",
     lambda tmp, data: fit_ensemble(replace(SPEC, model="lenett"), data, tmp / "run",
                                    progress=False),
     ModelError, "did you mean 'lenet'"),
    ("spec-with-bad-dropout",
     lambda tmp, data: fit_ensemble(replace(SPEC, model_kwargs={"dropout": 2}), data,
                                    tmp / "run", progress=False),
     ModelError, "dropout"),
    ("spec-with-float-members",
     lambda tmp, data: RunSpec(model="lenet", members=2.5, seed=0, train=TINY),  # type: ignore
     ConfigError, "members must be"),
    ("train-config-momentum-nan",
     lambda tmp, data: TrainConfig(optimizer="sgd", momentum=float("nan")),
     ConfigError, "momentum must be"),
    ("load-a-missing-run", lambda tmp, data: load_ensemble(tmp / "run"),
     CheckpointError, "does not exist"),
]


@pytest.mark.parametrize("call, error, message", [case[1:] for case in API_CASES],
                         ids=[case[0] for case in API_CASES])
def test_bad_api_call_raises_trustmap_error_and_writes_nothing(
        call: Callable[[Path, Dataset], object], error: type[TrustmapError], message: str,
        tmp_path: Path, mnist_small: Dataset) -> None:
    before = snapshot(tmp_path)
    with pytest.raises(error, match=message):
        call(tmp_path, mnist_small)
    assert snapshot(tmp_path) == before


def test_diverging_training_saves_no_member_and_leaves_the_folder_usable(
        tmp_path: Path, mnist_small: Dataset) -> None:
    """A finite but absurd learning rate makes the loss NaN within a few batches: training
    stops there and marks no member finished, and the same folder then takes a sane spec."""
    diverging = replace(SPEC, members=1, train=TrainConfig(epochs=1, batch_size=32, lr=1e30,
                                                          optimizer="sgd", schedule="constant"))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="lower the learning rate"):
        fit_ensemble(diverging, mnist_small, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    run = fit_ensemble(replace(diverging, train=TINY), mnist_small, out, progress=False)
    assert len(run.members) == 1
