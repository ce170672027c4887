"""Seed 004 (after the ethik library): which pixels move an ensemble's predictions, its
performance and its uncertainty, measured on the test set itself by entropic projection.

For every pixel the test images are reweighted, as little as possible in KL divergence, so
that the pixel's mean goes from its low side (tau = -1) to its high side (tau = +1); a map is
how much a weighted mean over the images moves between the two (``trustmap.explain.influence``).
One projection of the test set serves every map: the ensemble's class probabilities
(influence), each member's (is the influence certain?), per-image accuracy and log-loss
(performance) and the ensemble's uncertainty measures.

Settings: the ``[influence]`` table; the data is ``[data] in_distribution``. Alone, the study
writes ``influence.html``, ``metrics.json`` and the maps in ``influence_maps.safetensors``.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pydantic import Field, model_validator
from safetensors.torch import save_file

import trustmap
from trustmap.atomic import Outputs
from trustmap.data import Dataset, load
from trustmap.errors import ConfigError
from trustmap.explain import influence
from trustmap.report import page
from trustmap.report.results import InfluenceResults
from trustmap.studies import influence_page
from trustmap.studies.base import RunContext, ensemble_spec
from trustmap.studies.settings import Section, allowed, image_classifiers
from trustmap.training import RunSpec, TrainConfig
from trustmap.uncertainty import MEASURES

MAPS_FILE = "influence_maps.safetensors"


class InfluenceSettings(Section):
    """``[influence]``: the defaults are the study's own; ``trustmap run`` maps its own
    ensemble on its ID test set (``RUN_PRESET``)."""

    architecture: str = "cnn"
    """Seed 004 explained the Keras MNIST CNN, the zoo's ``cnn``; empty: the run's [model]."""
    members: int = Field(5, ge=1)
    epochs: int = Field(5, ge=1)
    images: int = Field(0, ge=0)
    """Test images projected: 0 for every test image, else the first ``images``."""
    alpha: float = Field(influence.ALPHA, gt=0, lt=0.5)
    tol: float = Field(influence.TOLERANCE, gt=0)
    max_iterations: int = Field(influence.MAX_ITERATIONS, ge=1)
    metrics: tuple[str, ...] = ("accuracy", "log-loss")
    measures: tuple[str, ...] = ("entropy", "mutual_information")
    curve_pixels: int = Field(4, ge=1)
    curve_taus: int = Field(41, ge=3)

    @model_validator(mode="after")
    def _known(self) -> InfluenceSettings:
        if self.architecture:
            image_classifiers("influence.architecture", [self.architecture])
        allowed("influence.metrics", self.metrics, influence.PER_IMAGE_METRICS)
        usable = list(MEASURES)
        allowed("influence.measures (this study computes no explanation maps)", self.measures,
                usable)
        if self.images == 1:
            raise ConfigError("influence.images must be 0 (the whole test split) or at least "
                              "2: a projection reweights images")
        return self


RUN_PRESET = {"architecture": "", "images": 0}
"""Inside ``trustmap run``: the run's own ensemble on its ID test set (``data.max_per_set``)."""


def study_images(test: Dataset, settings: InfluenceSettings) -> Dataset:
    """The test images the maps are computed on; ConfigError where seed 004's maps cannot be."""
    if test.in_channels != 1:
        raise ConfigError(f"dataset {test.name!r} has {test.in_channels}-channel images; "
                          "seed 004's maps are per grayscale pixel, so choose a single-channel "
                          "dataset (e.g. mnist-embedded, mnist, fashion-mnist)")
    if settings.images > len(test):
        raise ConfigError(f"influence.images = {settings.images} but the {test.name!r} test "
                          f"set has only {len(test)}; use at most {len(test)} or 0 for all")
    pixels = test.images.shape[2] * test.images.shape[3]
    if settings.curve_pixels > pixels:
        raise ConfigError(f"influence.curve_pixels = {settings.curve_pixels} but an image has "
                          f"only {pixels} pixels")
    if settings.images:
        return test.subset(slice(0, settings.images), f"first {settings.images} test images")
    return test


def top_pixels(influence_maps: torch.Tensor, count: int) -> list[tuple[int, int]]:
    """(row, column) of the curves' pixels from [K, H, W] maps: the most influential pixel of
    each class, classes in order of their largest |influence|, so that the curves show several
    classes rather than one digit's neighbouring pixels; past K (or where two classes share a
    pixel), the next pixels by max over classes of |influence|. Ties go to the lower row-major
    index."""
    width = influence_maps.shape[-1]
    strength = influence_maps.abs().flatten(1)  # [K, P]
    per_class = strength.amax(1)
    chosen: list[int] = []
    for k in torch.argsort(per_class, descending=True, stable=True).tolist():
        best = int(torch.argmax(strength[k]))  # first maximum: the lower row-major index
        if best not in chosen:
            chosen.append(best)
    overall = torch.argsort(strength.amax(0), descending=True, stable=True).tolist()
    chosen += [p for p in overall if p not in chosen]
    return [(p // width, p % width) for p in chosen[:count]]


def _squeeze(tensor: torch.Tensor) -> torch.Tensor:
    """CPU copy of a map without the images' single channel ([..., 1, H, W] -> [..., H, W])."""
    return tensor.squeeze(-3).cpu()


class InfluenceStudy:
    """``trustmap study influence``: one projection of the test set, every map from it."""

    results_type = InfluenceResults
    settings_type = InfluenceSettings
    in_run = True
    alone_preset: dict[str, Any] = {"data": {"max_per_set": 0}}
    """Alone: every test image, not the run's first 1,000."""
    name = "influence"
    title = "Influence and performance maps by entropic projection"
    run_preset = RUN_PRESET
    template = influence_page.TEMPLATE

    def compute(self, ctx: RunContext) -> InfluenceResults:
        settings: InfluenceSettings = ctx.section(self.name)
        data = ctx.settings.data.in_distribution
        test = study_images(ctx.test_set(data), settings)
        train = load(data, "train")
        spec = ensemble_spec(ctx.settings.model, ctx.seed) if not settings.architecture else \
            RunSpec(model=settings.architecture, members=settings.members, seed=ctx.seed,
                    train=TrainConfig(epochs=settings.epochs))
        ensemble = ctx.ensemble(spec, train)
        timings: list[dict[str, Any]] = []

        def step(name: str) -> Any:
            timings.append({"step": name})
            return ctx.timed(f"influence: {name}")

        images, labels = test.images.to(ctx.device), test.labels.to(ctx.device)
        with step("prediction"):
            prediction = ctx.predict(ensemble, test, ["ensemble"])["ensemble"]  # the run's
            probabilities = prediction.mean_probs.to(ctx.device)
        ctx.log(f"influence maps: every pixel of {len(test)} {data} test images projected")
        with step("projection"):
            projection = influence.project(images, alpha=settings.alpha, tol=settings.tol,
                                           max_iterations=settings.max_iterations)
        with step("influence"):
            influence_maps = _squeeze(influence.influence_map(projection, probabilities))
        with step("members"):
            members = influence.member_maps(projection,
                                            prediction.sample_probs.to(ctx.device))
        with step("performance"):
            performance = {metric: _squeeze(influence.performance_map(
                projection, metric, labels, probabilities)) for metric in settings.metrics}
        with step("uncertainty"):
            uncertainty = {measure: _squeeze(influence.uncertainty_map(
                projection, prediction, measure)) for measure in settings.measures}
        pixels = top_pixels(influence_maps, settings.curve_pixels)
        width = test.images.shape[3]
        taus = torch.linspace(-1, 1, settings.curve_taus, dtype=torch.float64).tolist()
        with step("curves"):
            curves = influence.curves(images, probabilities, [r * width + c for r, c in pixels],
                                      taus, alpha=settings.alpha, tol=settings.tol,
                                      max_iterations=settings.max_iterations)
        for row, timed in zip(timings, ctx.timings[-len(timings):], strict=True):
            row["seconds"] = timed["seconds"]
        predicted = prediction.sample_logits.argmax(2)
        accuracy = pd.DataFrame(
            [{"model": f"member {i}", "accuracy": float((p == test.labels).double().mean())}
             for i, p in enumerate(predicted)]
            + [{"model": "ensemble",
                "accuracy": float((prediction.predicted == test.labels).double().mean())}])
        image_shape = test.images.shape[2:]
        return InfluenceResults(
            header=self._header(ctx, spec, test), classes=list(test.classes),
            mean_image=test.images.mean(0)[0],
            influence=influence_maps, member_std=_squeeze(members.std),
            member_maps=_squeeze(members.maps),
            performance=performance, uncertainty=uncertainty,
            constant=projection.constant.reshape(image_shape).cpu(),
            not_converged=(~projection.converged).any(0).reshape(image_shape).cpu(),
            projection=projection.summary(), accuracy=accuracy, curve_pixels=pixels,
            curve_targets=curves.targets.cpu(), curve_values=curves.values.cpu(),
            curve_converged=curves.converged.cpu(), timings=pd.DataFrame(timings))

    def sections(self, results: InfluenceResults) -> list[page.Section]:
        return influence_page.sections(results)

    def metrics(self, results: InfluenceResults) -> dict[str, Any]:
        """The solver's counts and the largest changes of the maps."""
        largest = results.influence.abs().flatten(1).amax(1)
        return {
            "dataset": results.header["dataset"],
            "architecture": results.header["architecture"],
            "images": results.header["images"],
            "projection": results.projection,
            "accuracy": results.accuracy.to_dict(orient="records"),
            "max_abs_influence": {name: float(v) for name, v in zip(results.classes, largest,
                                                                   strict=True)},
            "max_abs_performance": {k: float(v.abs().max())
                                    for k, v in results.performance.items()},
            "max_abs_uncertainty": {k: float(v.abs().max())
                                    for k, v in results.uncertainty.items()},
            "timings": results.timings.to_dict(orient="records"),
        }

    def write(self, results: InfluenceResults, out: Path, outputs: Outputs) -> Path:
        """Its page, and the maps as safetensors for other tools."""
        report = influence_page.write_influence_report(results, out, outputs)
        _save_maps(out / MAPS_FILE, results, outputs)
        return report

    def _header(self, ctx: RunContext, spec: RunSpec, test: Dataset) -> dict[str, Any]:
        settings: InfluenceSettings = ctx.section(self.name)
        data = ctx.settings.data.in_distribution
        return {
            "title": f"trustmap: influence and performance maps by entropic projection "
                     f"({data})",
            "command": ctx.command,
            "dataset": data,
            "provenance": test.provenance,
            "config": settings.model_dump(),
            "architecture": spec.model,
            "members": spec.members,
            "images": len(test),
            "alpha": settings.alpha,
            "taus": list(influence.TAUS),
            "tolerance": settings.tol,
            "max_iterations": settings.max_iterations,
            "versions": {"trustmap": trustmap.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        }


def _save_maps(path: Path, results: InfluenceResults, outputs: Outputs) -> None:
    """The maps as safetensors, written whole or not at all."""
    tensors = {"influence": results.influence, "member_maps": results.member_maps,
               "member_std": results.member_std,
               **{f"performance_{k}": v for k, v in results.performance.items()},
               **{f"uncertainty_{k}": v for k, v in results.uncertainty.items()},
               "constant": results.constant, "not_converged": results.not_converged}
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    outputs.write(path, lambda tmp: save_file(tensors, str(tmp)))
