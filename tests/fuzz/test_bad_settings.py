"""Bad settings, paths and saved results for ``trustmap run``, ``study`` and ``redraw``.

Each case is one error line (exit code 2) naming the key or file and what to do, never a
traceback; it is refused before any training, and no file appears or changes: no run folder,
``run.json`` or cache is left to refuse the corrected command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner
from untouched import snapshot

from trustmap.cli import app

runner = CliRunner()

TINY: dict[str, Any] = {
    "data": {"ood": ["letters"], "max_per_set": 60},
    "model": {"members": 1, "epochs": 1},
    "predictives": {"kinds": ["single", "ensemble"]},
    "adversarial": {"attacks": ["fgsm"], "epsilons": [0.2], "attacked": ["ensemble"], "n": 20,
                    "steps": 1},
    "explanations": {"faithfulness_n": 10, "sanity_n": 4, "class_n": 2},
    "latent": {"resolution": 3, "vae_epochs": 1},
}
"""A run small enough to start at once: every case below must fail before it trains."""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)  # strings and numbers


def toml(settings: dict[str, Any]) -> str:
    top = [f"{key} = {toml_value(v)}" for key, v in settings.items() if not isinstance(v, dict)]
    tables = [f"[{key}]\n" + "\n".join(f"{k} = {toml_value(x)}" for k, x in table.items())
              for key, table in settings.items() if isinstance(table, dict)]
    return "\n".join(top + tables) + "\n"


def tiny(**changes: dict[str, Any] | Any) -> dict[str, Any]:
    """TINY with whole keys (``seed=-1``) or single table entries (``model={"lr": 0}``) changed."""
    merged = {key: dict(table) for key, table in TINY.items()}
    for key, value in changes.items():
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    return merged


Setup = Callable[[Path], None]


def nothing(tmp: Path) -> None:
    """No more than the settings file ``c.toml``."""


def saved_results(json_text: str | None, tensors: bytes = b"") -> Setup:
    """A folder ``out`` whose saved latent results are damaged as given."""
    def setup(tmp: Path) -> None:
        folder = tmp / "out" / "results"
        folder.mkdir(parents=True)
        if json_text is not None:
            (folder / "latent.json").write_text(json_text)
        (folder / "latent.safetensors").write_bytes(tensors)
    return setup


def a_file(name: str, content: bytes = b"x") -> Setup:
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(content)
    return setup


def a_fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "fifo.toml")


@dataclass
class Case:
    id: str
    args: tuple[str, ...]
    message: str
    settings: dict[str, Any] = field(default_factory=lambda: TINY)
    setup: Setup = nothing


RUN = ("run", "--config", "{tmp}/c.toml", "--runs-dir", "{tmp}/runs", "--quiet")


def run_with(id: str, message: str, **changes: Any) -> Case:
    return Case(id, RUN, message, tiny(**changes))


CASES = [
    # the run's name is a folder inside --runs-dir, never a path
    run_with("name-parent", "not a plain folder name", name="../../x"),
    run_with("name-slash", "not a plain folder name", name="a/b"),
    run_with("name-absolute", "not a plain folder name", name="/tmp/elsewhere"),
    run_with("name-empty", "not a plain folder name", name=""),
    run_with("name-hidden", "not a plain folder name", name=".hidden"),
    # numbers: range, type, finiteness
    run_with("seed-negative", "seed", seed=-1),
    run_with("seed-text", "seed", seed="0"),
    run_with("lr-inf", "model.lr: input should be a finite number", model={"lr": float("inf")}),
    run_with("lr-nan", "model.lr", model={"lr": float("nan")}),
    run_with("lr-zero", "model.lr", model={"lr": 0.0}),
    run_with("weight-decay-inf", "model.weight_decay", model={"weight_decay": float("inf")}),
    run_with("dropout-above-one", "model.dropout", model={"dropout": 1.5}),
    run_with("val-fraction-nan", "model.val_fraction", model={"val_fraction": float("nan")}),
    run_with("members-zero", "model.members", model={"members": 0}),
    run_with("members-text", "model.members", model={"members": "5"}),
    run_with("epsilon-nan", "adversarial.epsilons", adversarial={"epsilons": [float("nan")]}),
    run_with("epsilon-above-one", "adversarial.epsilons", adversarial={"epsilons": [2.0]}),
    run_with("max-per-set-negative", "data.max_per_set", data={"max_per_set": -1}),
    # names
    run_with("model-typo", "'lenet'", model={"name": "lenett"}),
    run_with("model-recurrent", "reads sequences", model={"name": "lstm"}),
    run_with("dataset-typo", "mnist-embedded", data={"in_distribution": "mnist-embeded"}),
    run_with("ood-is-in-distribution", "must not contain the in-distribution set",
             data={"ood": ["mnist-embedded"]}),
    run_with("method-typo", "'gradient'", explanations={"methods": ["gradiant"]}),
    run_with("methods-empty", "explanations.methods", explanations={"methods": []}),
    run_with("predictives-empty", "predictives.kinds", predictives={"kinds": []}),
    run_with("predictive-typo", "predictives.kinds", predictives={"kinds": ["ensamble"]}),
    run_with("attacked-not-scored", "adversarial.attacked", adversarial={"attacked": ["single"]},
             predictives={"kinds": ["ensemble"]}),
    run_with("study-not-in-a-run", "studies", studies=["recurrent"]),
    run_with("unknown-key", "unknown key 'modle'", modle={"name": "lenet"}),
    run_with("table-not-a-table", "[model] must be a table", model="lenet"),
    # devices
    run_with("device-meta", "device 'meta' is not supported", device="meta"),
    run_with("device-unknown", "is not a torch device", device="tpu"),
    run_with("device-missing-gpu", "cuda:7", device="cuda:7"),
    Case("device-option-meta", (*RUN, "--device", "meta"), "device 'meta' is not supported"),
    # combinations: what the run takes from its test set, checked before training
    run_with("max-per-set-below-attack-n", "raise data.max_per_set to 20",
             data={"max_per_set": 1}),
    run_with("max-per-set-misses-a-class", "two of every class", data={"max_per_set": 15},
             adversarial={"n": 5}, explanations={"faithfulness_n": 5, "sanity_n": 4}),
    run_with("patch-does-not-tile", "does not tile", explanations={"patch": 5}),
    # the settings file
    Case("config-missing", ("run", "--config", "{tmp}/none.toml", "--runs-dir", "{tmp}/runs"),
         "does not exist"),
    Case("config-directory", ("run", "--config", "{tmp}", "--runs-dir", "{tmp}/runs"),
         "is a directory"),
    Case("config-binary", ("run", "--config", "{tmp}/b.toml", "--runs-dir", "{tmp}/runs"),
         "is not text", setup=a_file("b.toml", bytes(range(256)))),
    Case("config-fifo", ("run", "--config", "{tmp}/fifo.toml", "--runs-dir", "{tmp}/runs"),
         "not a regular file", setup=a_fifo),
    Case("config-not-toml", ("run", "--config", "{tmp}/bad.toml", "--runs-dir", "{tmp}/runs"),
         "not valid TOML", setup=a_file("bad.toml", b"[model\nname = ")),
    Case("config-huge", ("run", "--config", "{tmp}/big.toml", "--runs-dir", "{tmp}/runs"),
         "too large", setup=a_file("big.toml", b"#" * (2 << 20))),
    # where the run goes
    Case("runs-dir-is-a-file", (*RUN[:3], "--runs-dir", "{tmp}/afile"), "is a file",
         setup=a_file("afile")),
    Case("runs-dir-under-a-file", (*RUN[:3], "--runs-dir", "{tmp}/afile/sub"),
         "is a file, not a folder", setup=a_file("afile")),
    # studies alone: the same settings and the same checks
    Case("study-out-is-a-file", ("study", "influence", "--out", "{tmp}/afile", "--quiet"),
         "is a file", setup=a_file("afile")),
    Case("study-members-zero", ("study", "latent", "--members", "0", "--out", "{tmp}/o"),
         "members"),
    Case("study-method-typo", ("study", "recurrent", "--methods", "lrp-epsilonn",
                               "--out", "{tmp}/o"), "lrp-epsilon"),
    Case("study-name-of-a-run", ("study", "latent", "--config", "{tmp}/c.toml",
                                 "--out", "{tmp}/o"), "not a plain folder name",
         tiny(name="../up")),
    # saved results that redraw cannot read
    Case("redraw-missing", ("redraw", "{tmp}/none"), "holds no saved results"),
    Case("redraw-a-file", ("redraw", "{tmp}/c.toml"), "holds no saved results"),
    Case("redraw-empty-json", ("redraw", "{tmp}/out"), "latent results cannot be read",
         setup=saved_results("")),
    Case("redraw-json-list", ("redraw", "{tmp}/out"), "not saved LatentResults",
         setup=saved_results("[]", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")),
    Case("redraw-other-results", ("redraw", "{tmp}/out"), "not saved LatentResults",
         setup=saved_results('{"type": "RunResults", "fields": {}}',
                             b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")),
    Case("redraw-missing-fields", ("redraw", "{tmp}/out"), "is damaged or of another",
         setup=saved_results('{"type": "LatentResults", "fields": {"shares": 1}}',
                             b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")),
    Case("redraw-truncated-tensors", ("redraw", "{tmp}/out"), "cannot be read",
         setup=saved_results('{"type": "LatentResults", "fields": {}}', b"\x40\x00")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_setting_is_one_error_line_and_writes_nothing(
        case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.toml").write_text(toml(case.settings))
    case.setup(tmp_path)
    monkeypatch.chdir(tmp_path)  # outputs with default paths land here too, and are seen
    before = snapshot(tmp_path)
    result = runner.invoke(app, [arg.format(tmp=tmp_path) for arg in case.args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "error:" in result.output and case.message in result.output, result.output
    assert "Traceback" not in result.output
    assert snapshot(tmp_path) == before


def test_a_run_removes_what_a_killed_run_left_half_written_and_keeps_its_outputs(
        tmp_path: Path) -> None:
    """Temporary files and figure staging folders of a killed run go at the next start; the
    last complete report stays, also when the new run is then refused."""
    out = tmp_path / "runs" / "default"
    (out / "results").mkdir(parents=True)
    (out / "report.html").write_text("the last complete report")
    (out / ".per_sample.a1b2.parquet.tmp").write_bytes(b"half")
    (out / "results" / ".uncertainty.c3d4.json.tmp").write_text("half")
    staging = out / ".figures-e5f6.tmp"
    staging.mkdir()
    (staging / "01-roc.png").write_bytes(b"half")
    settings = tiny(data={"max_per_set": 15}, adversarial={"n": 5},
                    explanations={"faithfulness_n": 5, "sanity_n": 4})
    (tmp_path / "c.toml").write_text(toml(settings))
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "c.toml"),
                                 "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "two of every class" in result.output, result.output
    assert "removed 3 temporary file(s)" in result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["report.html", "results"]
    assert (out / "report.html").read_text() == "the last complete report"
