"""Seed 002: which explanation method works for which recurrent architecture?

The 3-item majority task puts the evidence for the label in a known place (the two class-c
blocks), so a method's quality can be measured: the share of its positive relevance that lands
there (chance 2/3), how fast removing what it calls relevant destroys the prediction (AOPC of
4x4 patches, most relevant first) and how many 7x7 flips change the prediction.

``run`` trains (or reuses) every architecture on one sequence dataset with the zoo's training
code (each in ``<out>/models/<architecture>/`` as a one-member run), explains the true class
of the first test samples with every method, and writes ``recurrent.html`` and
``metrics.json`` into ``<out>``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

import trustmap
from trustmap.data import Dataset, load_sequences
from trustmap.data.sequences import OTHER_CLASS, MajoritySequences
from trustmap.errors import ConfigError, did_you_mean
from trustmap.evaluate.faithfulness import region_perturbation
from trustmap.evaluate.localisation import column_shares, region_share, strip_region_share
from trustmap.explain.lrp_recurrent import METHODS, relevance
from trustmap.models import names as model_names
from trustmap.models.recurrent import ARCHITECTURES, STEP_WIDTH
from trustmap.report.recurrent import write_recurrent_report
from trustmap.report.results import RecurrentResults
from trustmap.training import (
    EnsembleRun,
    RunSpec,
    TrainConfig,
    fit_ensemble,
    forward_in_batches,
    write_json,
)

Log = Callable[[str], None]

MODEL_SCALE = {"mean": 0.5, "std": 0.5}
"""Seed 002 fed its networks pixels in [-1, 1]; the models do that scaling themselves."""
CHUNK = 256
AOPC_PATCH, AOPC_STEPS = 4, 49
FLIP_PATCH = 7
SEED_002_ACCURACY = {
    "fashion-3-maj": {"rnn-shallow": 0.902, "rnn-deep": 0.9098, "rnn-deepv2": 0.9133,
                      "rnn-convdeep": 0.9298},
    "mnist-3-maj": {"rnn-shallow": 0.9806, "rnn-deep": 0.9861, "rnn-deepv2": 0.9889,
                    "rnn-convdeep": 0.9911},
}
"""Test accuracies seed 002 reported (100 epochs of Adam 2e-4, batch 50), for comparison."""


@dataclass(frozen=True)
class RecurrentConfig:
    """Everything ``trustmap study recurrent`` is run with; the defaults are its default size."""

    data: str = "mnist-embedded-3-maj"
    architectures: tuple[str, ...] = ARCHITECTURES
    methods: tuple[str, ...] = METHODS
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    sequence_seed: int = 0
    explain_n: int = 500
    """Test samples whose true class is explained for the relevance-in-region table."""
    aopc_n: int = 200
    """The first of those used for the perturbation curves (49 forward passes each)."""
    examples: int = 3
    device: str = "cpu"


def validate(config: RecurrentConfig) -> None:
    """ConfigError for an unknown architecture or method or a size that cannot work."""
    for architecture in config.architectures:
        if architecture not in ARCHITECTURES:
            what = (f"model {architecture!r} reads 28x28 images, not sequences"
                    if architecture in model_names() else
                    f"unknown architecture {architecture!r}"
                    f"{did_you_mean(architecture, ARCHITECTURES)}")
            raise ConfigError(f"{what}; the study's architectures are {', '.join(ARCHITECTURES)}")
    for method in config.methods:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}{did_you_mean(method, METHODS)}; "
                              f"choose from {', '.join(METHODS)}")
    if not config.architectures or not config.methods:
        raise ConfigError("the study needs at least one architecture and one method")
    for key in ("epochs", "batch_size", "explain_n", "aopc_n", "examples"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if not 0 < config.val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {config.val_fraction}")


def spec_for(config: RecurrentConfig, architecture: str) -> RunSpec:
    """One architecture's training run: Adam with a cosine schedule, the [-1, 1] model scale."""
    return RunSpec(model=architecture, members=1, seed=config.seed,
                   train=TrainConfig(epochs=config.epochs, batch_size=config.batch_size,
                                     lr=config.lr),
                   val_fraction=config.val_fraction, model_kwargs=dict(MODEL_SCALE))


def train_models(config: RecurrentConfig, train: Dataset, out: Path, progress: bool = True,
                 log: Log = print) -> dict[str, EnsembleRun]:
    """Train every architecture not yet finished under ``out/models`` and load them all."""
    runs = {}
    for architecture in config.architectures:
        directory = out / "models" / architecture
        done = (directory / "member-0.json").exists()
        log(f"{architecture}: {'reusing ' + str(directory) if done else 'training'}")
        runs[architecture] = fit_ensemble(spec_for(config, architecture), train, directory,
                                          progress=progress, device=config.device)
    return runs


def explain_all(method: str, model: nn.Module, x: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, float]:
    """Maps of the true class of every input, in chunks, and the seconds they took."""
    started = time.perf_counter()
    maps = torch.cat([relevance(method, model, xs, ys).cpu()
                      for xs, ys in zip(x.split(CHUNK), labels.split(CHUNK), strict=True)])
    return maps, time.perf_counter() - started


def _mean_sem(values: torch.Tensor) -> tuple[int, float, float]:
    kept = values[~values.isnan()].double()
    n = len(kept)
    sem = float(kept.std() / n ** 0.5) if n > 1 else float("nan")
    return n, float(kept.mean()) if n else float("nan"), sem


def _perturbation_rows(architecture: str, method: str, model: nn.Module, x: torch.Tensor,
                       maps: torch.Tensor, labels: torch.Tensor, order: str
                       ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    curve = region_perturbation(model, x, maps, labels, patch=AOPC_PATCH, steps=AOPC_STEPS,
                                order=order, baseline=0.0)
    flips = region_perturbation(model, x, maps, labels, patch=FLIP_PATCH, order=order,
                                baseline=0.0).flips_to_change.float()
    n, aopc, aopc_sem = _mean_sem(curve.aopc)
    row = {"architecture": architecture, "method": method, "order": order, "n": n,
           "aopc": aopc, "aopc_sem": aopc_sem, "flips_to_change": float(flips.mean())}
    points = [{"architecture": architecture, "method": method, "order": order, "step": step,
               "mean": float(value)} for step, value in enumerate(curve.mean_curve)]
    return row, points


@dataclass
class ArchitectureScores:
    """Rows of the study's tables for one architecture, and its maps of the examples."""

    architecture: str
    region: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    aopc: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    speed: list[dict[str, Any]] = field(default_factory=list)
    example_maps: dict[str, torch.Tensor] = field(default_factory=dict)


def evaluate_architecture(architecture: str, model: nn.Module, test: MajoritySequences,
                          config: RecurrentConfig, log: Log) -> ArchitectureScores:
    """Region shares, step profiles, perturbation rows and curves, speed and example maps of
    one trained architecture, for every method."""
    dataset = test.dataset
    n = min(config.explain_n, len(dataset))
    x, labels, mask = dataset.images[:n], dataset.labels[:n], test.mask[:n]
    last_is_odd = test.slots[:n, OTHER_CLASS] == 2
    device = next(model.parameters()).device
    x_device, labels_device = x.to(device), labels.to(device)
    scores = ArchitectureScores(architecture)
    m = min(config.aopc_n, n)
    row, points = _perturbation_rows(architecture, "random", model, x_device[:m],
                                     torch.zeros_like(x_device[:m]), labels_device[:m],
                                     "random")
    scores.aopc.append(row)
    scores.curves.extend(points)
    for method in config.methods:
        maps, seconds = explain_all(method, model, x_device, labels_device)
        scores.speed.append({"architecture": architecture, "method": method,
                             "maps_per_second": round(n / seconds)})
        count, share, sem = _mean_sem(strip_region_share(maps, mask, STEP_WIDTH))
        _, share_pixels, _ = _mean_sem(region_share(maps, mask))
        scores.region.append({"architecture": architecture, "method": method, "n": count,
                              "share": share, "sem": sem, "share_pixels": share_pixels})
        profile = column_shares(maps[last_is_odd], STEP_WIDTH).nanmean(0)
        scores.steps.extend({"architecture": architecture, "method": method, "step": t + 1,
                             "share": float(value)} for t, value in enumerate(profile))
        row, points = _perturbation_rows(architecture, method, model, x_device[:m],
                                         maps[:m].to(device), labels_device[:m], "morf")
        scores.aopc.append(row)
        scores.curves.extend(points)
        scores.example_maps[method] = maps[:config.examples]
        log(f"  {architecture} / {method}: {share:.3f} of the relevance in the data region, "
            f"AOPC {row['aopc']:.3f}, {n / seconds:,.0f} maps/s")
    return scores


def run(config: RecurrentConfig, out: Path | str, progress: bool = True, log: Log = print,
        command: str = "trustmap study recurrent") -> Path:
    """The whole study on ``config.data``; returns the path of ``recurrent.html``."""
    started = time.perf_counter()
    validate(config)
    out = Path(out)
    train = load_sequences(config.data, "train", config.sequence_seed)
    test = load_sequences(config.data, "test", config.sequence_seed)
    log(f"{len(config.architectures)} architectures on {config.data} "
        f"({len(train.dataset):,} train, {len(test.dataset):,} test) -> {out / 'models'}")
    runs = train_models(config, train.dataset, out, progress=progress, log=log)
    trained = time.perf_counter() - started

    accuracy, scored = [], []
    for architecture, ensemble in runs.items():
        model = ensemble.members[0].to(config.device).eval()
        meta = ensemble.member_meta[0]
        predicted = forward_in_batches(model, test.dataset.images.to(config.device)).argmax(1)
        accuracy.append({
            "architecture": architecture, "dataset": config.data,
            "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": config.epochs, "val_accuracy": meta["metrics"]["val_accuracy"],
            "accuracy": float((predicted.cpu() == test.dataset.labels).float().mean()),
            "train_seconds": meta["metrics"]["seconds"]})
        log(f"{architecture}: test accuracy {accuracy[-1]['accuracy']:.4f}; explaining")
        scored.append(evaluate_architecture(architecture, model, test, config, log))

    def table(name: str) -> pd.DataFrame:
        return pd.DataFrame([row for scores in scored for row in getattr(scores, name)])

    e = min(config.examples, len(test.dataset))
    results = RecurrentResults(
        header=_header(config, command, test, trained, time.perf_counter() - started),
        dataset=config.data, architectures=list(config.architectures),
        methods=list(config.methods), accuracy=pd.DataFrame(accuracy), region=table("region"),
        steps=table("steps"), aopc=table("aopc"), curves=table("curves"),
        examples=test.dataset.images[:e],
        example_labels=[test.dataset.classes[int(y)] for y in test.dataset.labels[:e]],
        example_masks=test.mask[:e], speed=table("speed"),
        maps={(scores.architecture, method): example for scores in scored
              for method, example in scores.example_maps.items()})
    report = write_recurrent_report(results, out)
    write_json(out / "metrics.json", _metrics(results, time.perf_counter() - started))
    return report


def _header(config: RecurrentConfig, command: str, test: MajoritySequences,
            trained_seconds: float, seconds: float) -> dict[str, Any]:
    reported = SEED_002_ACCURACY.get(config.data)
    return {
        "title": f"trustmap: which explanation for which recurrent network ({config.data})",
        "command": command,
        "dataset": config.data,
        "provenance": test.dataset.provenance,
        "config": asdict(config),
        "seed_002_accuracy": reported if reported else "seed 002 reported no accuracy for "
                                                        "this dataset",
        "explained": "the true class's logit of the first test samples",
        "versions": {"trustmap": trustmap.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "seconds_training": round(trained_seconds, 1),
        "seconds": round(seconds, 1),
    }


def _metrics(results: RecurrentResults, seconds: float) -> dict[str, Any]:
    def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return frame.to_dict(orient="records")

    return {"dataset": results.dataset, "chance": results.chance,
            "accuracy": records(results.accuracy), "region": records(results.region),
            "aopc": records(results.aopc), "speed": records(results.speed),
            "header": results.header, "seconds_total": round(seconds, 1)}
