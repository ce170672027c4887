"""Seed 002: which explanation method works for which recurrent architecture?

The 3-item majority task puts the evidence for the label in a known place (the two class-c
blocks), so a method's quality can be measured: the share of its relevance that lands there.
``train_models`` trains (or reuses) every architecture on one sequence dataset with the zoo's
training code; each lives in ``<out>/models/<architecture>/`` as a one-member run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trustmap.data import Dataset
from trustmap.models.recurrent import ARCHITECTURES
from trustmap.training import EnsembleRun, RunSpec, TrainConfig, fit_ensemble

Log = Callable[[str], None]

MODEL_SCALE = {"mean": 0.5, "std": 0.5}
"""Seed 002 fed its networks pixels in [-1, 1]; the models do that scaling themselves."""


@dataclass(frozen=True)
class RecurrentConfig:
    """Everything ``trustmap study recurrent`` is run with; the defaults are its default size."""

    data: str = "mnist-embedded-3-maj"
    architectures: tuple[str, ...] = ARCHITECTURES
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    sequence_seed: int = 0
    methods: tuple[str, ...] = field(default_factory=tuple)


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
                                          progress=progress)
    return runs
