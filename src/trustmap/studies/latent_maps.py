"""Seed 003 (after Smith & Gal 2018): where in a 2-D latent space of the data is a model unsure?

A VAE with a 2-D latent space is trained on the in-distribution data; a grid over
z in [-bound, bound]^2 is decoded and every decoded image is scored by each architecture's
uncertainty under every predictive. The interesting finding is low uncertainty far from the
encoded data: the model is confident where it has never seen anything. Interpolations between
inputs of different classes compare the straight line in pixel space with the line between
their latent codes.

``run`` trains (or reuses) the VAE (``<out>/vae``) and one ensemble per architecture
(``<out>/models/<architecture>``) and writes ``latent.html`` and ``metrics.json``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

import trustmap
from trustmap.data import Dataset, load
from trustmap.errors import ConfigError, did_you_mean
from trustmap.evaluate import latent
from trustmap.models import names as model_names
from trustmap.models.recurrent import ARCHITECTURES as RECURRENT
from trustmap.predictive import Predictive, make_predictive
from trustmap.report.latent import write_latent_report
from trustmap.report.results import LatentResults
from trustmap.training import RunSpec, TrainConfig, fit_ensemble, fit_vae, write_json
from trustmap.uncertainty import MEASURES

Log = Callable[[str], None]

MODEL_OPTIONS: dict[str, dict[str, Any]] = {"resnet34": {"width": 16}}
"""A ResNet-34 a quarter as wide as ImageNet's: the study has to train five on a CPU."""
THRESHOLD_MEASURE = "entropy"
"""Seed 003's headline measure: the grid's share below the ID test set's median entropy."""


@dataclass(frozen=True)
class LatentConfig:
    """Everything ``trustmap study latent`` is run with; the defaults are its default size."""

    data: str = "mnist-embedded"
    architectures: tuple[str, ...] = ("lenet5", "alexnet", "resnet34")
    members: int = 5
    epochs: int = 5
    vae_epochs: int = 20
    resolution: int = 40
    bound: float = 10.0
    measures: tuple[str, ...] = ("entropy", "mutual_information")
    mc_samples: int = 10
    pairs: int = 1000
    """Interpolation pairs for the midpoint histograms (seed 003 used 3,000: ``--pairs``)."""
    path_examples: int = 4
    steps: int = 21
    seed: int = 0
    device: str = "cpu"


def validate(config: LatentConfig) -> None:
    """ConfigError for an unknown architecture or measure, or a size that cannot work."""
    if not config.architectures:
        raise ConfigError("the study needs at least one architecture")
    for architecture in config.architectures:
        if architecture not in model_names() or architecture in RECURRENT:
            images = [n for n in model_names() if n not in RECURRENT]
            raise ConfigError(f"architecture {architecture!r} is not an image classifier of the "
                              f"zoo{did_you_mean(architecture, images)}; choose from "
                              f"{', '.join(images)}")
    for measure in config.measures:
        if measure not in MEASURES or MEASURES[measure].attributions is not None:
            raise ConfigError(f"unknown measure {measure!r}{did_you_mean(measure, MEASURES)}")
    if THRESHOLD_MEASURE not in config.measures:
        raise ConfigError(f"measures must include {THRESHOLD_MEASURE!r}: the grid's shares are "
                          "counted against the test set's median entropy")
    for key, minimum in (("members", 1), ("epochs", 1), ("vae_epochs", 1), ("resolution", 2),
                         ("mc_samples", 2), ("pairs", 1), ("path_examples", 1), ("steps", 3)):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    if config.steps % 2 == 0:
        raise ConfigError(f"steps must be odd so that a path has a midpoint, got {config.steps}")
    if not isinstance(config.bound, Real) or not config.bound > 0:
        raise ConfigError(f"bound must be a positive number, got {config.bound!r}")


def predictives_of(models: list[nn.Module], config: LatentConfig) -> dict[str, Predictive]:
    """Single and ensemble always; MC dropout and ensemble-MC where the model has dropout."""
    kinds = ["single", "ensemble"]
    if any(isinstance(m, nn.Dropout) for m in models[0].modules()):
        kinds += ["mc-dropout", "ensemble-mc"]
    return {kind: make_predictive(kind, models, config.mc_samples, config.seed)
            for kind in kinds}


def _train(config: LatentConfig, out: Path, progress: bool, log: Log
           ) -> dict[str, list[nn.Module]]:
    train = load(config.data, "train")
    ensembles = {}
    for architecture in config.architectures:
        directory = out / "models" / architecture
        log(f"{config.members} x {architecture} on {config.data} -> {directory}")
        spec = RunSpec(model=architecture, members=config.members, seed=config.seed,
                       train=TrainConfig(epochs=config.epochs),
                       model_kwargs=dict(MODEL_OPTIONS.get(architecture, {})))
        run = fit_ensemble(spec, train, directory, progress=progress, device=config.device)
        ensembles[architecture] = [m.to(config.device).eval() for m in run.members]
    return ensembles


@dataclass
class GridScores:
    """One architecture's scores of the decoded grid under each of its predictives."""

    maps: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    predicted: dict[str, torch.Tensor] = field(default_factory=dict)
    confident: dict[str, torch.Tensor] = field(default_factory=dict)
    shares: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LatentPlane:
    """A trained VAE's encoder and decoder, the encoded test set and the decoded grid."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    codes: torch.Tensor
    grid: latent.LatentGrid
    near: torch.Tensor
    distance: torch.Tensor


def latent_plane(train: Dataset, test: Dataset, out: Path, resolution: int, bound: float,
                 vae_epochs: int, seed: int, progress: bool, device: str) -> LatentPlane:
    """Train (or reuse, from ``out``) the VAE, encode ``test`` and decode the grid."""
    vae, _ = fit_vae(train, out, TrainConfig(epochs=vae_epochs, batch_size=128), seed=seed,
                     progress=progress, device=device)
    vae.eval()

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vae.encode(x.to(device))[0]

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z.to(device).float())

    codes = latent.encode_images(encode, test.images)
    grid = latent.latent_grid(decode, resolution, bound)
    return LatentPlane(encode, decode, codes, grid, latent.inside_hull(codes, grid.z),
                       latent.distance_to_data(codes, grid.z))


def score_grid(architecture: str, plane: LatentPlane, predictives: Mapping[str, Predictive],
               measures: list[str], thresholds: Mapping[str, float]) -> GridScores:
    """Every measure of the decoded grid under every predictive, and per predictive the share
    below ``thresholds[kind]`` (the ID test set's median entropy) and the confident far points."""
    scored = latent.score_images(plane.grid.images, predictives, measures)
    result = GridScores()
    for kind in predictives:
        result.predicted[kind] = scored.predicted[kind].cpu()
        for measure in measures:
            result.maps[kind, measure] = scored.scores[kind][measure].cpu()
        entropy = result.maps[kind, THRESHOLD_MEASURE]
        share = latent.low_uncertainty_share(entropy, plane.near, thresholds[kind])
        result.shares.append({"architecture": architecture, "predictive": kind,
                              "measure": THRESHOLD_MEASURE, "threshold": thresholds[kind],
                              **{key: share[key] for key in ("share", "share_near", "share_far",
                                                             "points_near", "points_far")}})
        result.confident[kind] = latent.confident_far_points(plane.grid, entropy,
                                                             plane.distance)
    return result


def run(config: LatentConfig, out: Path | str, progress: bool = True, log: Log = print,
        command: str = "trustmap study latent") -> Path:
    """The whole study; returns the path of ``latent.html``."""
    started = time.perf_counter()
    validate(config)
    out = Path(out)
    train, test = load(config.data, "train"), load(config.data, "test")
    log(f"VAE (2-D latent) on {config.data} -> {out / 'vae'}")
    plane = latent_plane(train, test, out / "vae", config.resolution, config.bound,
                         config.vae_epochs, config.seed, progress, config.device)
    ensembles = _train(config, out, progress, log)
    trained = time.perf_counter() - started

    idx_a, idx_b = latent.pairs_of_different_classes(test.labels, config.pairs, config.seed)
    a, b = test.images[idx_a], test.images[idx_b]
    midpoint_images = {"pixel": latent.pixel_path(a, b, 3)[:, 1],
                       "latent": latent.latent_path(plane.encode, plane.decode, a, b,
                                                    3)[:, 1].cpu()}
    e = min(config.path_examples, config.pairs)
    path_images = {"pixel": latent.pixel_path(a[:e], b[:e], config.steps),
                   "latent": latent.latent_path(plane.encode, plane.decode, a[:e], b[:e],
                                                config.steps).cpu()}

    maps, predicted, confident, shares, mids, mid_scores, path_scores = {}, {}, {}, [], [], {}, {}
    kinds_seen: list[str] = []
    measures = list(config.measures)
    for architecture, models in ensembles.items():
        log(f"scoring the {config.resolution}x{config.resolution} grid under {architecture}")
        predictives = predictives_of(models, config)
        kinds_seen += [k for k in predictives if k not in kinds_seen]
        on_test = latent.score_images(test.images, predictives, [THRESHOLD_MEASURE])
        thresholds = {kind: float(on_test.scores[kind][THRESHOLD_MEASURE].median())
                      for kind in predictives}
        grid_scores = score_grid(architecture, plane, predictives, measures, thresholds)
        maps.update({(architecture, *key): value for key, value in grid_scores.maps.items()})
        predicted.update({(architecture, k): v for k, v in grid_scores.predicted.items()})
        confident.update({(architecture, k): v for k, v in grid_scores.confident.items()})
        shares += grid_scores.shares
        for path in ("pixel", "latent"):
            at_mid = latent.score_images(midpoint_images[path], predictives, measures)
            along = latent.path_scores(path_images[path], predictives, measures)
            for kind in predictives:
                for measure in measures:
                    values = at_mid.scores[kind][measure].cpu()
                    mid_scores[architecture, kind, measure, path] = values
                    path_scores[architecture, kind, measure, path] = \
                        along.scores[kind][measure].cpu()
                    mids.append({"architecture": architecture, "predictive": kind,
                                 "measure": measure, "path": path, "pairs": len(values),
                                 "mean": float(values.mean()),
                                 "median": float(values.median())})
        row = next(r for r in grid_scores.shares if r["predictive"] == "ensemble")
        log(f"  ensemble: {row['share_far']:.3f} of the far grid below the test median entropy")

    results = LatentResults(
        header=_header(config, command, test.provenance, trained,
                       time.perf_counter() - started),
        dataset=config.data, classes=list(test.classes),
        architectures=list(config.architectures), predictives=kinds_seen, measures=measures,
        resolution=config.resolution, bound=config.bound, codes=plane.codes,
        code_labels=test.labels, grid_images=plane.grid.images.cpu(), near=plane.near,
        maps=maps, predicted=predicted, confident=confident, shares=pd.DataFrame(shares),
        midpoints=pd.DataFrame(mids), midpoint_scores=mid_scores, path_images=path_images,
        path_scores=path_scores,
        path_labels=[(test.classes[int(test.labels[i])], test.classes[int(test.labels[j])])
                     for i, j in zip(idx_a[:e], idx_b[:e], strict=True)])
    report = write_latent_report(results, out)
    write_json(out / "metrics.json", {
        "dataset": config.data, "shares": results.shares.to_dict(orient="records"),
        "midpoints": results.midpoints.to_dict(orient="records"), "header": results.header,
        "seconds_total": round(time.perf_counter() - started, 1)})
    return report


def _header(config: LatentConfig, command: str, provenance: dict[str, Any],
            trained_seconds: float, seconds: float) -> dict[str, Any]:
    return {
        "title": f"trustmap: where in latent space is the model unsure ({config.data})",
        "command": command,
        "dataset": config.data,
        "provenance": provenance,
        "config": asdict(config),
        "model_options": MODEL_OPTIONS,
        "far_from_data": f"at least {latent.FAR_SPACINGS:g} grid spacings "
                         f"({latent.FAR_SPACINGS * 2 * config.bound / (config.resolution - 1):.2f})"
                         " from every encoded test image",
        "versions": {"trustmap": trustmap.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "seconds_training": round(trained_seconds, 1),
        "seconds": round(seconds, 1),
    }
