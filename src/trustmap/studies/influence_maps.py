"""Seed 004 (after the ethik library): which pixels move an ensemble's predictions, its
performance and its uncertainty, measured on the test set itself by entropic projection.

For every pixel the test images are reweighted, as little as possible in KL divergence, so
that the pixel's mean goes from its low side (tau = -1) to its high side (tau = +1); a map is
how much a weighted mean over the images moves between the two (``trustmap.explain.influence``).
One projection of the test set serves every map: the ensemble's class probabilities
(influence), each member's (is the influence certain?), per-image accuracy and log-loss
(performance) and the ensemble's uncertainty measures.

``run`` trains (or reuses) the ensemble in ``<out>/models/<architecture>`` and writes
``influence.html``, ``metrics.json`` and the maps in ``influence_maps.safetensors``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file
from torch import nn

import trustmap
from trustmap.atomic import write_atomic
from trustmap.data import Dataset, load
from trustmap.errors import ConfigError, did_you_mean
from trustmap.explain import influence
from trustmap.models import names as model_names
from trustmap.models.recurrent import ARCHITECTURES as RECURRENT
from trustmap.predictive import Prediction
from trustmap.report.influence import write_influence_report
from trustmap.report.results import InfluenceResults
from trustmap.training import (
    FitResult,
    RunSpec,
    TrainConfig,
    fit_ensemble,
    forward_in_batches,
    write_json,
)
from trustmap.uncertainty import MEASURES

Log = Callable[[str], None]

MAPS_FILE = "influence_maps.safetensors"


@dataclass(frozen=True)
class InfluenceConfig:
    """Everything ``trustmap study influence`` is run with; the defaults are its default size."""

    data: str = "mnist-embedded"
    architecture: str = "cnn"
    """Seed 004 explained the Keras MNIST CNN, which is the zoo's ``cnn``."""
    members: int = 5
    epochs: int = 5
    images: int = 0
    """Test images projected: 0 for the whole test split, else its first ``images``."""
    alpha: float = influence.ALPHA
    tol: float = influence.TOLERANCE
    max_iterations: int = influence.MAX_ITERATIONS
    metrics: tuple[str, ...] = ("accuracy", "log-loss")
    measures: tuple[str, ...] = ("entropy", "mutual_information")
    curve_pixels: int = 4
    curve_taus: int = 41
    seed: int = 0
    device: str = "cpu"


def validate(config: InfluenceConfig) -> None:
    """ConfigError for an unknown architecture, metric or measure, or a size that cannot work."""
    if config.architecture not in model_names() or config.architecture in RECURRENT:
        images = [n for n in model_names() if n not in RECURRENT]
        raise ConfigError(f"architecture {config.architecture!r} is not an image classifier of "
                          f"the zoo{did_you_mean(config.architecture, images)}; choose from "
                          f"{', '.join(images)}")
    for metric in config.metrics:
        if metric not in influence.PER_IMAGE_METRICS:
            raise ConfigError(f"unknown metric {metric!r}"
                              f"{did_you_mean(metric, influence.PER_IMAGE_METRICS)}; choose from "
                              f"{', '.join(influence.PER_IMAGE_METRICS)}")
    usable = [name for name, measure in MEASURES.items() if measure.attributions is None]
    for measure in config.measures:
        if measure in MEASURES and measure not in usable:
            raise ConfigError(f"measure {measure!r} reads the {MEASURES[measure].attributions!r} "
                              "maps of every member, which this study does not compute; choose "
                              f"from {', '.join(usable)}")
        if measure not in usable:
            raise ConfigError(f"unknown measure {measure!r}{did_you_mean(measure, usable)}; "
                              f"choose from {', '.join(usable)}")
    for key, minimum in (("members", 1), ("epochs", 1), ("images", 0), ("max_iterations", 1),
                         ("curve_pixels", 1), ("curve_taus", 3)):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    if config.images == 1:
        raise ConfigError("images must be 0 (the whole test split) or at least 2: a projection "
                          "reweights images")
    if not isinstance(config.alpha, Real) or not 0 < config.alpha < 0.5:
        raise ConfigError(f"alpha must be a number in (0, 0.5), got {config.alpha!r}")
    if not isinstance(config.tol, Real) or not config.tol > 0:
        raise ConfigError(f"tol must be a positive number, got {config.tol!r}")


def study_images(test: Dataset, config: InfluenceConfig) -> Dataset:
    """The test images the maps are computed on; ConfigError where seed 004's maps cannot be."""
    if test.in_channels != 1:
        raise ConfigError(f"dataset {config.data!r} has {test.in_channels}-channel images; "
                          "seed 004's maps are per grayscale pixel, so choose a single-channel "
                          "dataset (e.g. mnist-embedded, mnist, fashion-mnist)")
    if config.images > len(test):
        raise ConfigError(f"images = {config.images} but the {config.data!r} test split has "
                          f"only {len(test)}; use at most {len(test)} or 0 for all")
    pixels = test.images.shape[2] * test.images.shape[3]
    if config.curve_pixels > pixels:
        raise ConfigError(f"curve_pixels = {config.curve_pixels} but an image has only "
                          f"{pixels} pixels")
    if config.images:
        return test.subset(slice(0, config.images), f"first {config.images} test images")
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


@contextmanager
def _step(timings: list[dict[str, Any]], step: str, log: Log, what: str) -> Iterator[None]:
    """Time one step into ``timings`` and log what it did and how long it took."""
    started = time.perf_counter()
    yield
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # kernels run asynchronously: count them in their own step
    seconds = time.perf_counter() - started
    timings.append({"step": step, "seconds": seconds})
    log(f"{what} ({seconds:.1f} s)")


def _train(config: InfluenceConfig, train: Dataset, directory: Path, progress: bool,
           log: Log) -> list[nn.Module]:
    def report(index: int, result: FitResult | None) -> None:
        if result is None:
            log(f"  member {index}: reused from {directory}")
        else:
            log(f"  member {index}: trained, validation accuracy "
                f"{result.metrics['val_accuracy']:.3f}")

    spec = RunSpec(model=config.architecture, members=config.members, seed=config.seed,
                   train=TrainConfig(epochs=config.epochs))
    run = fit_ensemble(spec, train, directory, progress=progress, device=config.device,
                       on_member=report)
    return [m.to(config.device).eval() for m in run.members]


def _squeeze(tensor: torch.Tensor) -> torch.Tensor:
    """CPU copy of a map without the images' single channel ([..., 1, H, W] -> [..., H, W])."""
    return tensor.squeeze(-3).cpu()


def run(config: InfluenceConfig, out: Path | str, progress: bool = True, log: Log = print,
        command: str = "trustmap study influence") -> Path:
    """The whole study; returns the path of ``influence.html``."""
    started = time.perf_counter()
    validate(config)
    out = Path(out)
    test = study_images(load(config.data, "test"), config)
    timings: list[dict[str, Any]] = []
    device = config.device

    directory = out / "models" / config.architecture
    log(f"{config.members} x {config.architecture} on {config.data} -> {directory}")
    with _step(timings, "training", log, "ensemble ready"):
        models = _train(config, load(config.data, "train"), directory, progress, log)
    trained = time.perf_counter() - started

    images, labels = test.images.to(device), test.labels.to(device)
    with _step(timings, "prediction", log, f"{len(test)} test images predicted"), \
            torch.no_grad():
        logits = torch.stack([forward_in_batches(m, test.images) for m in models]).to(device)
        prediction = Prediction(logits)
        probabilities = prediction.mean_probs
    with _step(timings, "projection", log, f"every pixel of {len(test)} images projected"):
        projection = influence.project(images, alpha=config.alpha, tol=config.tol,
                                       max_iterations=config.max_iterations)
    with _step(timings, "influence", log, "influence maps of the ensemble"):
        influence_maps = _squeeze(influence.influence_map(projection, probabilities))
    with _step(timings, "members", log, "influence maps of every member"):
        members = influence.member_maps(projection, prediction.sample_probs)
    with _step(timings, "performance", log, f"performance maps: {', '.join(config.metrics)}"):
        performance = {metric: _squeeze(influence.performance_map(projection, metric, labels,
                                                                  probabilities))
                       for metric in config.metrics}
    with _step(timings, "uncertainty", log,
               f"uncertainty maps: {', '.join(config.measures)}"):
        uncertainty = {measure: _squeeze(influence.uncertainty_map(projection, prediction,
                                                                   measure))
                       for measure in config.measures}
    pixels = top_pixels(influence_maps, config.curve_pixels)
    width = test.images.shape[3]
    taus = torch.linspace(-1, 1, config.curve_taus, dtype=torch.float64).tolist()
    with _step(timings, "curves", log, f"curves of pixels {pixels}"):
        curves = influence.curves(images, probabilities, [r * width + c for r, c in pixels], taus,
                                  alpha=config.alpha, tol=config.tol,
                                  max_iterations=config.max_iterations)

    predicted = logits.argmax(2)
    accuracy = pd.DataFrame(
        [{"model": f"member {i}", "accuracy": float((p == labels).double().mean())}
         for i, p in enumerate(predicted)]
        + [{"model": "ensemble",
            "accuracy": float((prediction.predicted == labels).double().mean())}])
    image_shape = test.images.shape[2:]
    results = InfluenceResults(
        header=_header(config, command, test, trained, time.perf_counter() - started),
        classes=list(test.classes),
        mean_image=test.images.mean(0)[0],
        influence=influence_maps, member_std=_squeeze(members.std),
        performance=performance, uncertainty=uncertainty,
        constant=projection.constant.reshape(image_shape).cpu(),
        not_converged=(~projection.converged).any(0).reshape(image_shape).cpu(),
        projection=projection.summary(), accuracy=accuracy, curve_pixels=pixels,
        curve_targets=curves.targets.cpu(), curve_values=curves.values.cpu(),
        curve_converged=curves.converged.cpu(), timings=pd.DataFrame(timings))
    report = write_influence_report(results, out)
    _save_maps(out / MAPS_FILE, results, _squeeze(members.maps))
    write_json(out / "metrics.json", _metrics(config, results, time.perf_counter() - started))
    return report


def _save_maps(path: Path, results: InfluenceResults, member_maps: torch.Tensor) -> None:
    """The maps as safetensors, written whole or not at all."""
    tensors = {"influence": results.influence, "member_maps": member_maps,
               "member_std": results.member_std,
               **{f"performance_{k}": v for k, v in results.performance.items()},
               **{f"uncertainty_{k}": v for k, v in results.uncertainty.items()},
               "constant": results.constant, "not_converged": results.not_converged}
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))


def _metrics(config: InfluenceConfig, results: InfluenceResults, seconds: float
             ) -> dict[str, Any]:
    largest = results.influence.abs().flatten(1).amax(1)
    return {
        "dataset": config.data,
        "architecture": config.architecture,
        "projection": results.projection,
        "accuracy": results.accuracy.to_dict(orient="records"),
        "max_abs_influence": {name: float(v) for name, v in zip(results.classes, largest,
                                                               strict=True)},
        "max_abs_performance": {k: float(v.abs().max()) for k, v in results.performance.items()},
        "max_abs_uncertainty": {k: float(v.abs().max()) for k, v in results.uncertainty.items()},
        "timings": results.timings.to_dict(orient="records"),
        "header": results.header,
        "seconds_total": round(seconds, 1),
    }


def _header(config: InfluenceConfig, command: str, test: Dataset, trained_seconds: float,
            seconds: float) -> dict[str, Any]:
    return {
        "title": f"trustmap: influence and performance maps by entropic projection "
                 f"({config.data})",
        "command": command,
        "dataset": config.data,
        "provenance": test.provenance,
        "config": asdict(config),
        "architecture": config.architecture,
        "members": config.members,
        "images": len(test),
        "alpha": config.alpha,
        "taus": list(influence.TAUS),
        "tolerance": config.tol,
        "max_iterations": config.max_iterations,
        "versions": {"trustmap": trustmap.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "seconds_training": round(trained_seconds, 1),
        "seconds": round(seconds, 1),
    }
