"""Seed 002: which explanation method works for which recurrent architecture?

The 3-item majority task puts the evidence for the label in a known place (the two class-c
blocks), so a method's quality can be measured: the share of its positive relevance that lands
there (chance 2/3), how fast removing what it calls relevant destroys the prediction (AOPC of
4x4 patches, most relevant first) and how many 7x7 flips change the prediction.

The study (settings: the ``[recurrent]`` table) trains or reuses every architecture on one
sequence dataset as a one-member run under the context's checkpoint policy, explains the true
class of the first test samples with every method, and writes ``recurrent.html`` and
``metrics.json``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import Field, model_validator
from torch import nn

import trustmap
from trustmap.atomic import Outputs
from trustmap.data import load_sequences
from trustmap.data.sequences import OTHER_CLASS, MajoritySequences
from trustmap.errors import ConfigError
from trustmap.evaluate.faithfulness import region_perturbation
from trustmap.evaluate.localisation import column_shares, region_share, strip_region_share
from trustmap.explain.lrp_recurrent import METHODS, relevance
from trustmap.models import names as model_names
from trustmap.models.recurrent import ARCHITECTURES, STEP_WIDTH
from trustmap.report import page
from trustmap.report.results import RecurrentResults
from trustmap.studies import recurrent_page
from trustmap.studies.base import Log, RunContext
from trustmap.studies.settings import Section, allowed
from trustmap.training import RunSpec, TrainConfig, forward_in_batches

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


class RecurrentSettings(Section):
    """``[recurrent]``: everything ``trustmap study recurrent`` is run with."""

    data: str = "mnist-embedded-3-maj"
    """A sequence dataset: NAME-3-maj for any dataset NAME."""
    architectures: tuple[str, ...] = ARCHITECTURES
    methods: tuple[str, ...] = METHODS
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    sequence_seed: int = 0
    explain_n: int = Field(500, ge=1)
    """Test samples whose true class is explained for the relevance-in-region table."""
    aopc_n: int = Field(200, ge=1)
    """The first of those used for the perturbation curves (49 forward passes each)."""
    examples: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _known(self) -> RecurrentSettings:
        for architecture in self.architectures:
            if architecture in model_names() and architecture not in ARCHITECTURES:
                raise ConfigError(f"recurrent.architectures: model {architecture!r} reads "
                                  "28x28 images, not sequences; the study's architectures are "
                                  f"{', '.join(ARCHITECTURES)}")
        allowed("recurrent.architectures", self.architectures, ARCHITECTURES)
        allowed("recurrent.methods", self.methods, METHODS)
        if not self.architectures or not self.methods:
            raise ConfigError("the study needs at least one architecture and one method")
        return self


def spec_for(settings: RecurrentSettings, architecture: str, seed: int) -> RunSpec:
    """One architecture's training run: Adam with a cosine schedule, the [-1, 1] model scale."""
    return RunSpec(model=architecture, members=1, seed=seed,
                   train=TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size,
                                     lr=settings.lr),
                   val_fraction=settings.val_fraction, model_kwargs=dict(MODEL_SCALE))


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
                          settings: RecurrentSettings, log: Log) -> ArchitectureScores:
    """Region shares, step profiles, perturbation rows and curves, speed and example maps of
    one trained architecture, for every method."""
    dataset = test.dataset
    n = min(settings.explain_n, len(dataset))
    x, labels, mask = dataset.images[:n], dataset.labels[:n], test.mask[:n]
    last_is_odd = test.slots[:n, OTHER_CLASS] == 2
    device = next(model.parameters()).device
    x_device, labels_device = x.to(device), labels.to(device)
    scores = ArchitectureScores(architecture)
    m = min(settings.aopc_n, n)
    row, points = _perturbation_rows(architecture, "random", model, x_device[:m],
                                     torch.zeros_like(x_device[:m]), labels_device[:m],
                                     "random")
    scores.aopc.append(row)
    scores.curves.extend(points)
    for method in settings.methods:
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
        scores.example_maps[method] = maps[:settings.examples]
        log(f"  {architecture} / {method}: {share:.3f} of the relevance in the data region, "
            f"AOPC {row['aopc']:.3f}, {n / seconds:,.0f} maps/s")
    return scores


class RecurrentStudy:
    """``trustmap study recurrent``: every architecture, every method, scored in the region."""

    results_type = RecurrentResults
    settings_type = RecurrentSettings
    in_run = False
    alone_preset: dict[str, Any] = {}
    name = "recurrent"
    title = "Which explanation for which recurrent network"
    run_preset: dict[str, Any] = {}
    template = recurrent_page.TEMPLATE

    def compute(self, ctx: RunContext) -> RecurrentResults:
        settings: RecurrentSettings = ctx.section(self.name)
        train = load_sequences(settings.data, "train", settings.sequence_seed)
        test = load_sequences(settings.data, "test", settings.sequence_seed)
        ctx.log(f"{len(settings.architectures)} architectures on {settings.data} "
                f"({len(train.dataset):,} train, {len(test.dataset):,} test)")
        accuracy, scored = [], []
        for architecture in settings.architectures:
            ensemble = ctx.ensemble(spec_for(settings, architecture, ctx.seed), train.dataset)
            model, meta = ensemble.members[0], ensemble.member_meta[0]
            with ctx.timed(f"explaining {architecture}"):
                predicted = forward_in_batches(model, test.dataset.images).argmax(1)
                accuracy.append({
                    "architecture": architecture, "dataset": settings.data,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "epochs": settings.epochs, "val_accuracy": meta["metrics"]["val_accuracy"],
                    "accuracy": float((predicted.cpu() == test.dataset.labels).float().mean()),
                    "train_seconds": meta["metrics"]["seconds"]})
                ctx.log(f"{architecture}: test accuracy {accuracy[-1]['accuracy']:.4f}; "
                        "explaining")
                scored.append(evaluate_architecture(architecture, model, test, settings,
                                                    ctx.log))

        def table(name: str) -> pd.DataFrame:
            return pd.DataFrame([row for scores in scored for row in getattr(scores, name)])

        e = min(settings.examples, len(test.dataset))
        return RecurrentResults(
            header=_header(ctx, settings, test), dataset=settings.data,
            architectures=list(settings.architectures), methods=list(settings.methods),
            accuracy=pd.DataFrame(accuracy), region=table("region"), steps=table("steps"),
            aopc=table("aopc"), curves=table("curves"), examples=test.dataset.images[:e],
            example_labels=[test.dataset.classes[int(y)] for y in test.dataset.labels[:e]],
            example_masks=test.mask[:e], speed=table("speed"),
            maps={(scores.architecture, method): example for scores in scored
                  for method, example in scores.example_maps.items()})

    def sections(self, results: RecurrentResults) -> list[page.Section]:
        return recurrent_page.sections(results)

    def metrics(self, results: RecurrentResults) -> dict[str, Any]:
        def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return frame.to_dict(orient="records")

        return {"dataset": results.dataset, "chance": results.chance,
                "accuracy": records(results.accuracy), "region": records(results.region),
                "aopc": records(results.aopc), "speed": records(results.speed)}

    def write(self, results: RecurrentResults, out: Path, outputs: Outputs) -> Path:
        return recurrent_page.write_recurrent_report(results, out, outputs)


def _header(ctx: RunContext, settings: RecurrentSettings, test: MajoritySequences
            ) -> dict[str, Any]:
    reported = SEED_002_ACCURACY.get(settings.data)
    return {
        "title": f"trustmap: which explanation for which recurrent network ({settings.data})",
        "command": ctx.command,
        "dataset": settings.data,
        "provenance": test.dataset.provenance,
        "config": settings.model_dump(),
        "seed_002_accuracy": reported if reported else "seed 002 reported no accuracy for "
                                                        "this dataset",
        "explained": "the true class's logit of the first test samples",
        "versions": {"trustmap": trustmap.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
