"""Seed 003 (after Smith & Gal 2018): where in a 2-D latent space of the data is a model unsure?

A VAE with a 2-D latent space is trained on the in-distribution data; a grid over
z in [-bound, bound]^2 is decoded and every decoded image is scored by each architecture's
uncertainty under every predictive. The interesting finding is low uncertainty far from the
encoded data: the model is confident where it has never seen anything. Interpolations between
inputs of different classes compare the straight line in pixel space with the line between
their latent codes.

Settings: the ``[latent]`` table; the data is ``[data] in_distribution``. With no
``architectures`` the map is of the run's own ``[model]`` ensemble (as inside ``trustmap run``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import Field, model_validator
from torch import nn

import trustmap
from trustmap.atomic import Outputs
from trustmap.data import Dataset
from trustmap.errors import ConfigError
from trustmap.evaluate import latent
from trustmap.models.base import INPUT_SIZE
from trustmap.predictive import Prediction, Predictive, make_predictive
from trustmap.report import page
from trustmap.report.results import MIDPOINT_COLUMNS, LatentResults
from trustmap.studies import latent_page
from trustmap.studies.base import RunContext, ensemble_spec
from trustmap.studies.settings import Section, allowed, image_classifiers
from trustmap.training import EnsembleRun, RunSpec, TrainConfig
from trustmap.uncertainty import MEASURES, compute

MODEL_OPTIONS: dict[str, dict[str, Any]] = {"resnet34": {"width": 16}}
"""A ResNet-34 a quarter as wide as ImageNet's: the study has to train five on a CPU."""
THRESHOLD_MEASURE = "entropy"
"""Seed 003's headline measure: the grid's share below the ID test set's median entropy."""


class LatentSettings(Section):
    """``[latent]``: the defaults are the study's own size; ``trustmap run`` draws a small map
    of its own ensemble (``RUN_PRESET``)."""

    architectures: tuple[str, ...] = ("lenet5", "alexnet", "resnet34")
    """Zoo models, each an ensemble trained for this study; empty: the run's [model]."""
    members: int = Field(5, ge=1)
    epochs: int = Field(5, ge=1)
    vae_epochs: int = Field(20, ge=1)
    resolution: int = Field(40, ge=2)
    bound: float = Field(10.0, gt=0)
    measures: tuple[str, ...] = ("entropy", "mutual_information")
    pairs: int = Field(1000, ge=0)
    """Interpolation pairs for the midpoint histograms (seed 003 used 3,000); 0: none."""
    path_examples: int = Field(4, ge=1)
    steps: int = Field(21, ge=3)

    @model_validator(mode="after")
    def _known(self) -> LatentSettings:
        image_classifiers("latent.architectures", self.architectures)
        usable = list(MEASURES)
        allowed("latent.measures", self.measures, usable)
        if THRESHOLD_MEASURE not in self.measures:
            raise ConfigError(f"latent.measures must include {THRESHOLD_MEASURE!r}: the grid's "
                              "shares are counted against the test set's median entropy")
        if self.steps % 2 == 0:
            raise ConfigError(f"latent.steps must be odd so that a path has a midpoint, got "
                              f"{self.steps}")
        return self


RUN_PRESET = {"architectures": [], "resolution": 20, "vae_epochs": 10, "pairs": 0}
"""Inside ``trustmap run``: a 20x20 map of the run's own ensemble, no interpolations."""


def predictives_of(models: list[nn.Module], kinds: tuple[str, ...], samples: int, seed: int
                   ) -> dict[str, Predictive]:
    """The run's predictives that ``models`` support: MC dropout only where they have dropout."""
    dropout = any(isinstance(m, nn.Dropout) for m in models[0].modules())
    return {kind: make_predictive(kind, models, samples, seed) for kind in kinds
            if dropout or kind in ("single", "ensemble")}


def _ensembles(ctx: RunContext, settings: LatentSettings, train: Dataset
               ) -> dict[str, EnsembleRun]:
    if not settings.architectures:
        spec = ensemble_spec(ctx.settings.model, ctx.seed)
        return {spec.model: ctx.ensemble(spec, train)}
    ensembles = {}
    for architecture in settings.architectures:
        spec = RunSpec(model=architecture, members=settings.members, seed=ctx.seed,
                       train=TrainConfig(epochs=settings.epochs),
                       model_kwargs=dict(MODEL_OPTIONS.get(architecture, {})))
        ensembles[architecture] = ctx.ensemble(spec, train)
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


def latent_plane(vae: nn.Module, test: Dataset, resolution: int, bound: float,
                 device: torch.device) -> LatentPlane:
    """Encode ``test`` with a trained VAE and decode the grid."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        return vae.encode(x.to(device))[0]

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z.to(device).float())

    codes = latent.encode_images(encode, test.images)
    grid = latent.latent_grid(decode, resolution, bound)
    return LatentPlane(encode, decode, codes, grid, latent.inside_hull(codes, grid.z),
                       latent.distance_to_data(codes, grid.z))


def grid_set(plane: LatentPlane, test: Dataset) -> Dataset:
    """The decoded grid as a dataset (labels are placeholders: a grid point has no class), so
    its forward passes go through the run's cache like those of any test set."""
    images = plane.grid.images.cpu()
    return Dataset(f"latent-grid-of-{test.name}", "grid", images,
                   torch.zeros(len(images), dtype=torch.int64), test.classes,
                   {"decoded from": "a VAE trained on the in-distribution training split"})


def score_grid(architecture: str, plane: LatentPlane, predictions: Mapping[str, Prediction],
               measures: list[str], thresholds: Mapping[str, float]) -> GridScores:
    """Every measure of the decoded grid under every predictive, and per predictive the share
    below ``thresholds[kind]`` (the ID test set's median entropy) and the confident far points."""
    result = GridScores()
    for kind, prediction in predictions.items():
        result.predicted[kind] = prediction.predicted.cpu()
        scores = compute(prediction, measures)
        for measure in measures:
            result.maps[kind, measure] = scores[measure].cpu()
        entropy = result.maps[kind, THRESHOLD_MEASURE]
        share = latent.low_uncertainty_share(entropy, plane.near, thresholds[kind])
        result.shares.append({"architecture": architecture, "predictive": kind,
                              "measure": THRESHOLD_MEASURE, "threshold": thresholds[kind],
                              **{key: share[key] for key in ("share", "share_near", "share_far",
                                                             "points_near", "points_far")}})
        result.confident[kind] = latent.confident_far_points(plane.grid, entropy,
                                                             plane.distance)
    return result


def _interpolations(plane: LatentPlane, test: Dataset, settings: LatentSettings, seed: int
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[Any]]:
    """Midpoints of ``pairs`` pixel and latent paths between classes, and a few whole paths."""
    if settings.pairs == 0:
        return {}, {}, []
    idx_a, idx_b = latent.pairs_of_different_classes(test.labels, settings.pairs, seed)
    a, b = test.images[idx_a], test.images[idx_b]
    midpoints = {"pixel": latent.pixel_path(a, b, 3)[:, 1],
                 "latent": latent.latent_path(plane.encode, plane.decode, a, b, 3)[:, 1].cpu()}
    e = min(settings.path_examples, settings.pairs)
    paths = {"pixel": latent.pixel_path(a[:e], b[:e], settings.steps),
             "latent": latent.latent_path(plane.encode, plane.decode, a[:e], b[:e],
                                          settings.steps).cpu()}
    labels = [(test.classes[int(test.labels[i])], test.classes[int(test.labels[j])])
              for i, j in zip(idx_a[:e], idx_b[:e], strict=True)]
    return midpoints, paths, labels


class LatentStudy:
    """``trustmap study latent``: the maps of every architecture, and the interpolations."""

    results_type = LatentResults
    settings_type = LatentSettings
    in_run = True
    alone_preset: dict[str, Any] = {"data": {"max_per_set": 0}}
    """Alone: every test image, not the run's first 1,000."""
    name = "latent"
    title = "Where in latent space is the model unsure"
    run_preset = RUN_PRESET
    template = latent_page.TEMPLATE

    def compute(self, ctx: RunContext) -> LatentResults:
        settings: LatentSettings = ctx.section(self.name)
        data = ctx.settings.data.in_distribution
        train, test = ctx.load(data, "train"), ctx.test_set(data)
        if tuple(train.images.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ConfigError(f"the latent study's VAE (seed 003: 784-400-256 dense layers) "
                              f"reads {INPUT_SIZE}x{INPUT_SIZE} images, but {data!r} has "
                              f"{'x'.join(map(str, train.images.shape[2:]))}; set data.resize "
                              f"= [{INPUT_SIZE}, {INPUT_SIZE}] or leave 'latent' out of studies")
        vae = ctx.vae(train, settings.vae_epochs)
        ensembles = _ensembles(ctx, settings, train)
        with ctx.timed("latent map"):
            plane = latent_plane(vae, test, settings.resolution, settings.bound, ctx.device)
            midpoint_images, path_images, path_labels = _interpolations(plane, test, settings,
                                                                        ctx.seed)
            maps, predicted, confident, shares, mids, mid_scores, path_scores = \
                {}, {}, {}, [], [], {}, {}
            kinds_seen: list[str] = []
            measures = list(settings.measures)
            for architecture, ensemble in ensembles.items():
                ctx.log(f"scoring the {settings.resolution}x{settings.resolution} latent grid "
                        f"under {architecture}")
                predictives = predictives_of(ensemble.members, ctx.settings.predictives.kinds,
                                             ctx.settings.predictives.mc_samples, ctx.seed)
                kinds_seen += [k for k in predictives if k not in kinds_seen]
                on_test = ctx.predict(ensemble, test, list(predictives))  # the run's, if run
                thresholds = {kind: float(compute(on_test[kind], [THRESHOLD_MEASURE])
                                          [THRESHOLD_MEASURE].median()) for kind in predictives}
                on_grid = ctx.predict(ensemble, grid_set(plane, test), list(predictives))
                grid_scores = score_grid(architecture, plane, on_grid, measures, thresholds)
                maps.update({(architecture, *key): value
                             for key, value in grid_scores.maps.items()})
                predicted.update({(architecture, k): v for k, v in grid_scores.predicted.items()})
                confident.update({(architecture, k): v for k, v in grid_scores.confident.items()})
                shares += grid_scores.shares
                for path in midpoint_images:
                    at_mid = latent.score_images(midpoint_images[path], predictives, measures)
                    along = latent.path_scores(path_images[path], predictives, measures)
                    for kind in predictives:
                        for measure in measures:
                            values = at_mid.scores[kind][measure].cpu()
                            mid_scores[architecture, kind, measure, path] = values
                            path_scores[architecture, kind, measure, path] = \
                                along.scores[kind][measure].cpu()
                            mids.append({"architecture": architecture, "predictive": kind,
                                         "measure": measure, "path": path,
                                         "pairs": len(values), "mean": float(values.mean()),
                                         "median": float(values.median())})
        return LatentResults(
            header=self._header(ctx, test.provenance), dataset=data,
            classes=list(test.classes), architectures=list(ensembles),
            predictives=kinds_seen, measures=measures, resolution=settings.resolution,
            bound=settings.bound, codes=plane.codes.cpu(), code_labels=test.labels,
            grid_images=plane.grid.images.cpu(), near=plane.near, maps=maps,
            predicted=predicted, confident=confident, shares=pd.DataFrame(shares),
            midpoints=pd.DataFrame(mids, columns=list(MIDPOINT_COLUMNS)),
            midpoint_scores=mid_scores, path_images=path_images, path_scores=path_scores,
            path_labels=path_labels)

    def sections(self, results: LatentResults) -> list[page.Section]:
        return latent_page.sections(results)

    def metrics(self, results: LatentResults) -> dict[str, Any]:
        return {"dataset": results.dataset, "shares": results.shares.to_dict(orient="records"),
                "midpoints": results.midpoints.to_dict(orient="records")}

    def write(self, results: LatentResults, out: Path, outputs: Outputs) -> Path:
        return latent_page.write_latent_report(results, out, outputs)

    def _header(self, ctx: RunContext, provenance: dict[str, Any]) -> dict[str, Any]:
        settings: LatentSettings = ctx.section(self.name)
        data = ctx.settings.data.in_distribution
        spacing = latent.FAR_SPACINGS * 2 * settings.bound / (settings.resolution - 1)
        return {
            "title": f"trustmap: where in latent space is the model unsure ({data})",
            "command": ctx.command,
            "dataset": data,
            "provenance": provenance,
            "config": settings.model_dump(),
            "model_options": MODEL_OPTIONS,
            "far_from_data": f"at least {latent.FAR_SPACINGS:g} grid spacings ({spacing:.2f}) "
                             "from every encoded test image",
            "versions": {"trustmap": trustmap.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        }
