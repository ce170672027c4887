"""The ``trustmap`` command line: data, models, training and prediction.

Each command turns a TrustmapError into one red line and exit code 2, so a mistake in the
arguments reads as advice rather than a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import pandas as pd
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import trustmap
from trustmap.atomic import check_writable, write_atomic
from trustmap.errors import ConfigError, TrustmapError

if TYPE_CHECKING:  # the settings module is imported only when a command runs
    from trustmap.studies.settings import RunSettings

app = typer.Typer(help="trustmap: where an image classifier looks, and how much to trust it.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="List, fetch and look at datasets.", no_args_is_help=True)
models_app = typer.Typer(help="The model zoo.", no_args_is_help=True)
study_app = typer.Typer(help="The seed studies, each with its own report.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(study_app, name="study")

console = Console(soft_wrap=True)  # long paths stay on one line, copyable
errors = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Device = Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")]


def friendly_errors(command: F) -> F:
    """Report TrustmapError as a one-line message with exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TrustmapError as error:
            # escaped: a message may hold "[model]" or a path with brackets, not markup
            errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _device(name: str) -> torch.device:
    from trustmap.studies.settings import torch_device

    return torch_device(name, "--device")


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False
         ) -> None:
    if version:
        console.print(trustmap.__version__)
        raise typer.Exit()
    if os.getcwd() not in sys.path:
        # as `python -m` does: a model factory "mymodels:make" next to the user is importable
        sys.path.insert(0, os.getcwd())


# --- run and the studies --------------------------------------------------------------------

Config = Annotated[Path | None, typer.Option(
    "--config", "-c", help="TOML settings file: the same tables for every command "
                           "(see the README).")]


def _log(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda message: None
    return lambda message: console.print(message, markup=False)  # paths may hold "[...]"


def _device_override(device: str | None) -> dict[str, Any]:
    return {} if device is None else {"device": device}


@app.command()
@friendly_errors
def run(
    config: Config = None,
    name: Annotated[str | None, typer.Option(help="Run name: output goes to RUNS_DIR/NAME.")]
    = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs are written.")] = Path("runs"),
    data: Annotated[str | None, typer.Option(
        help="In-distribution data: a dataset name, an ImageFolder, a folder of class "
        "folders or an .npz (data.in_distribution).")] = None,
    model: Annotated[str | None, typer.Option(
        help="A zoo model to train (model.name), or package.module:callable building your "
        "own network (model.factory, with --checkpoints).")] = None,
    checkpoints: Annotated[str | None, typer.Option(
        help="Comma-separated trained weights of your network, one per member "
        "(model.checkpoints).")] = None,
    device: Annotated[str | None, typer.Option(help="Torch device, e.g. cpu or cuda.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per forward pass when the run predicts its sets (batch_size).")] = None,
    quiet: Quiet = False,
) -> None:
    """The main job: train (or reuse, or load your own) ensemble, measure uncertainty on ID,
    OOD and adversarial inputs, and write report.html, metrics.json and per_sample.parquet."""
    from trustmap.studies.registry import load_settings
    from trustmap.studies.registry import run as run_all

    model_table: dict[str, Any] = {}
    if model is not None:
        model_table["factory" if ":" in model else "name"] = model
    if checkpoints is not None:
        model_table["checkpoints"] = [c.strip() for c in checkpoints.split(",") if c.strip()]
    overrides = {**({"name": name} if name is not None else {}), **_device_override(device),
                 **({"batch_size": batch_size} if batch_size is not None else {}),
                 **({"data": {"in_distribution": data}} if data is not None else {}),
                 **({"model": model_table} if model_table else {})}
    settings = load_settings(None, config, overrides)
    report, _ = run_all(settings, runs_dir / settings.name, progress=not quiet,
                        log=_log(quiet),
                        command="trustmap run" + (f" --config {config}" if config else ""))
    console.print(f"report: {report}")


@app.command()
@friendly_errors
def redraw(
    directory: Annotated[Path, typer.Argument(help="A finished run or study, e.g. runs/default.")],
    quiet: Quiet = False,
) -> None:
    """Draw the page of a finished run or study again from its saved results, computing
    nothing (after a trustmap upgrade, or to get back a page that was deleted)."""
    from trustmap.studies.registry import redraw as redraw_page

    for page in redraw_page(directory, log=_log(quiet)):
        console.print(f"report: {page}")


def _study(name: str, settings: RunSettings, out: Path | None, default_out: str,
           config: Path | None, quiet: bool, command: str) -> None:
    """Run study ``name`` with its loaded ``settings``, and print where its page is."""
    from trustmap.studies.registry import run_study

    target = out if out is not None else Path("runs") / default_out
    started = time.perf_counter()
    report = run_study(name, settings, target, progress=not quiet, log=_log(quiet),
                       command=f"{command} --out {target}"
                               + (f" --config {config}" if config else ""))
    console.print(f"report: {report}  ({time.perf_counter() - started:.0f} s)")


def _set(table: str, **values: Any) -> dict[str, Any]:
    """Command-line options as settings overrides; options left out are not set."""
    given = {key: value for key, value in values.items() if value is not None}
    return {table: given} if given else {}


@study_app.command("recurrent")
@friendly_errors
def study_recurrent(
    data: Annotated[str | None, typer.Option(
        help="Sequence dataset: mnist-embedded-3-maj (ships with the install), fashion-3-maj, "
             "mnist-3-maj, or any dataset name + '-3-maj'.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output directory (default runs/recurrent-DATA); trained models there are reused.")]
    = None,
    architectures: Annotated[str | None, typer.Option(
        help="Comma-separated architectures (default: all six).")] = None,
    methods: Annotated[str | None, typer.Option(
        help="Comma-separated methods (default: all five).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs per architecture "
                                                    "[default: 30].")] = None,
    n: Annotated[int | None, typer.Option(help="Test samples explained [default: 500].")]
    = None,
    aopc_n: Annotated[int | None, typer.Option(
        help="Of those, how many get perturbation curves [default: 200].")] = None,
    config: Config = None,
    device: Annotated[str | None, typer.Option(help="Torch device, e.g. cpu or cuda.")] = None,
    quiet: Quiet = False,
) -> None:
    """Seed 002: train (or reuse) the recurrent architectures on 3-item majority sequences,
    explain them with every method, and report accuracy, relevance in the data region, AOPC."""
    overrides = {**_device_override(device),
                 **_set("recurrent", data=data, epochs=epochs, explain_n=n, aopc_n=aopc_n,
                        architectures=_names(architectures), methods=_names(methods))}
    from trustmap.studies.registry import load_settings

    settings = load_settings("recurrent", config, overrides)
    shown = settings.recurrent.data
    _study("recurrent", settings, out, f"recurrent-{shown}", config, quiet,
           f"trustmap study recurrent --data {shown}"
           + (f" --epochs {epochs}" if epochs is not None else ""))


@study_app.command("latent")
@friendly_errors
def study_latent(
    data: Annotated[str | None, typer.Option(
        help="In-distribution dataset the VAE and models learn [default: mnist-embedded].")]
    = None,
    out: Annotated[Path | None, typer.Option(
        help="Output directory (default runs/latent-DATA); trained models there are reused.")]
    = None,
    architectures: Annotated[str | None, typer.Option(
        help="Comma-separated zoo models (default: lenet5,alexnet,resnet34).")] = None,
    members: Annotated[int | None, typer.Option(help="Ensemble members per architecture.")]
    = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs per member.")] = None,
    vae_epochs: Annotated[int | None, typer.Option(help="Training epochs of the VAE.")] = None,
    resolution: Annotated[int | None, typer.Option(help="Grid points per latent axis.")] = None,
    pairs: Annotated[int | None, typer.Option(help="Interpolation pairs for the midpoints.")]
    = None,
    mc_samples: Annotated[int | None, typer.Option(help="Dropout passes per MC-dropout model.")]
    = None,
    config: Config = None,
    device: Annotated[str | None, typer.Option(help="Torch device, e.g. cpu or cuda.")] = None,
    quiet: Quiet = False,
) -> None:
    """Seed 003: train a 2-D VAE and ensembles, map each model's uncertainty over the decoded
    latent grid, and compare interpolations in pixel and latent space."""
    overrides = {**_device_override(device),
                 **_set("data", in_distribution=data),
                 **_set("predictives", mc_samples=mc_samples),
                 **_set("latent", architectures=_names(architectures), members=members,
                        epochs=epochs, vae_epochs=vae_epochs, resolution=resolution,
                        pairs=pairs)}
    from trustmap.studies.registry import load_settings

    settings = load_settings("latent", config, overrides)
    shown = settings.data.in_distribution
    _study("latent", settings, out, f"latent-{shown}", config, quiet,
           f"trustmap study latent --data {shown}")


@study_app.command("influence")
@friendly_errors
def study_influence(
    data: Annotated[str | None, typer.Option(
        help="Grayscale dataset: trained on its train split, mapped on its test split "
             "[default: mnist-embedded].")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output directory (default runs/influence-DATA); trained models there are reused.")]
    = None,
    architecture: Annotated[str | None, typer.Option(
        help="Zoo model of the ensemble (seed 004: cnn, the Keras MNIST CNN).")] = None,
    members: Annotated[int | None, typer.Option(help="Ensemble members.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs per member.")] = None,
    images: Annotated[int | None, typer.Option(
        help="Test images projected: 0 for the whole test split, else its first N.")] = None,
    curve_pixels: Annotated[int | None, typer.Option(
        help="Pixels of largest influence whose curves are drawn.")] = None,
    config: Config = None,
    device: Annotated[str | None, typer.Option(help="Torch device, e.g. cpu or cuda.")] = None,
    quiet: Quiet = False,
) -> None:
    """Seed 004: train (or reuse) an ensemble and map, by entropic projection of the test set,
    how each pixel moves its class probabilities, accuracy, log-loss and uncertainty."""
    overrides = {**_device_override(device),
                 **_set("data", in_distribution=data),
                 **_set("influence", architecture=architecture, members=members,
                        epochs=epochs, images=images, curve_pixels=curve_pixels)}
    from trustmap.studies.registry import load_settings

    settings = load_settings("influence", config, overrides)
    shown = settings.data.in_distribution
    _study("influence", settings, out, f"influence-{shown}", config, quiet,
           f"trustmap study influence --data {shown} --architecture "
           f"{settings.influence.architecture}")


def _names(option: str | None) -> list[str] | None:
    """A comma-separated option as a list of names; None where it was not given."""
    return [name.strip() for name in option.split(",") if name.strip()] if option else None


# --- data ------------------------------------------------------------------------------------

@data_app.command("list")
@friendly_errors
def data_list() -> None:
    """Every dataset trustmap knows: available or not, where, and N per split."""
    from trustmap.data import list_datasets

    table = Table("name", "kind", "available", "train", "test", "where")
    table.columns[-1].overflow = "fold"  # a path is worth more whole than on one line
    infos = list_datasets()
    for info in infos:
        sizes = info.sizes or {}
        table.add_row(info.name, info.kind, "yes" if info.available else "[red]no[/]",
                      str(sizes.get("train", "?")), str(sizes.get("test", "?")),
                      info.location)
    console.print(table)
    if not all(info.available for info in infos):
        console.print("Get a missing official dataset with `trustmap data fetch NAME`.")


@data_app.command("fetch")
@friendly_errors
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. mnist.")],
    dest: Annotated[Path | None, typer.Option(help="Root folder (default ~/.cache/trustmap).")]
    = None,
    quiet: Quiet = False,
) -> None:
    """Download a dataset's official files, verifying size and checksum."""
    from trustmap.data import fetch

    path = fetch(name, dest, progress=not quiet)
    console.print(f"{name}: verified files in {path}")


@data_app.command("show")
@friendly_errors
def data_show(
    name: Annotated[str, typer.Argument(help="Dataset name, or a folder or .npz of images.")],
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    out: Annotated[Path | None, typer.Option(help="PNG path (default NAME-SPLIT.png).")] = None,
    per_class: Annotated[int, typer.Option(help="Images per class.")] = 10,
) -> None:
    """Save a PNG grid of sample images, one row per class (rows of the first images of an
    unlabelled set)."""
    from trustmap.data import load
    from trustmap.report.figures import class_grid, save_figure

    dataset = load(name, split)
    path = save_figure(class_grid(dataset, per_class),
                       out or Path(f"{_file_name(name)}-{split}.png"))
    console.print(f"wrote {path}")


# --- models ----------------------------------------------------------------------------------

@models_app.command("list")
@friendly_errors
def models_list() -> None:
    """Name, parameters (1x28x28 or 1x28x84 for the recurrent ones, 10 classes), smallest
    image size, Grad-CAM layer of every model."""
    from trustmap.models import describe

    table = Table("name", "parameters", "min size", "Grad-CAM layer", "dropout", "description")
    for row in describe():
        size = "x".join(map(str, row.min_input_size)) if row.min_input_size else "28x84 only"
        table.add_row(row.name, f"{row.parameters:,}", size, row.gradcam_layer or "-",
                      "yes" if row.has_dropout else "no", row.description)
    console.print(table)


# --- train / predict -------------------------------------------------------------------------

@app.command()
@friendly_errors
def train(
    model: Annotated[str, typer.Option(help="Model name (see `trustmap models list`).")]
    = "lenet",
    data: Annotated[str, typer.Option(help="Dataset name (see `trustmap data list`).")]
    = "mnist-embedded",
    members: Annotated[int, typer.Option(help="Ensemble members.")] = 5,
    epochs: Annotated[int, typer.Option()] = 10,
    batch_size: Annotated[int, typer.Option()] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="sgd, adam, adamw or nadam.")] = "adam",
    weight_decay: Annotated[float, typer.Option()] = 0.0,
    schedule: Annotated[str, typer.Option(help="Learning-rate schedule: cosine or constant.")]
    = "cosine",
    augment: Annotated[str, typer.Option(
        help="Comma-separated augmentations: shift (up to 2 px), flip (clothing only), "
        "or none.")] = "shift",
    dropout: Annotated[float | None, typer.Option(help="Dropout rate (model default if unset).")]
    = None,
    val_fraction: Annotated[float, typer.Option(help="Share of train held out.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Run seed; member seeds derive from it.")] = 0,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/default"),
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Train an ensemble (resuming an interrupted run) and print its test accuracy.

    Every argument is checked before the run directory is created or touched, so a mistake
    leaves nothing that would refuse the corrected command.
    """
    from trustmap.data import load
    from trustmap.evaluate.calibration import calibration_metrics
    from trustmap.predictive import Ensemble
    from trustmap.training import RunSpec, TrainConfig, evaluate_logits, fit_ensemble

    torch_device = _device(device)
    spec = RunSpec(model=model, members=members, seed=seed,
                   train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr,
                                     optimizer=optimizer, weight_decay=weight_decay,
                                     schedule=schedule,
                                     augment=tuple(a for a in augment.split(",")
                                                   if a and a != "none")),
                   val_fraction=val_fraction,
                   model_kwargs={} if dropout is None else {"dropout": dropout})
    train_set, test_set = load(data, "train"), load(data, "test")
    held_out = (f"about {round(len(train_set) * val_fraction)} held out for validation"
                if val_fraction > 0 else "no validation split")
    console.print(f"training {members} x {model} on {data} ({len(train_set)} images, "
                  f"{held_out}) -> {out}")

    def report(index: int, result: Any) -> None:
        if result is None:
            console.print(f"member {index + 1}: finished earlier, loaded from {out}")
        else:
            metrics = result.metrics
            accuracy = metrics["val_accuracy"]
            shown = ("no validation split" if accuracy is None
                     else f"val accuracy {accuracy:.4f}")
            console.print(f"member {index + 1}: {shown}, {metrics['seconds']:.1f} s, "
                          f"{metrics['images_per_second']:.0f} images/s")

    run = fit_ensemble(spec, train_set, out, progress=not quiet, device=torch_device,
                       on_member=report)
    predictive = Ensemble([m.to(torch_device) for m in run.members])
    prediction = predictive.predict(test_set.images)
    table = Table("model", "test accuracy", "test NLL", title=f"{data} test ({len(test_set)})")
    for index, logits in enumerate(prediction.sample_logits):  # members' passes, reused
        accuracy, nll = evaluate_logits(logits, test_set.labels)
        table.add_row(f"member {index + 1}", f"{accuracy:.4f}", f"{nll:.4f}")
    ensemble = calibration_metrics(prediction.mean_probs, test_set.labels)
    ensemble_accuracy = ensemble["accuracy"]
    vote_accuracy = float((prediction.majority_vote == test_set.labels).float().mean())
    table.add_row("ensemble (mean of softmax)", f"{ensemble_accuracy:.4f}",
                  f"{ensemble['nll']:.4f}")
    table.add_row("ensemble (majority vote)", f"{vote_accuracy:.4f}", "")
    console.print(table)
    console.print(f"ensemble test accuracy: {ensemble_accuracy:.4f}  (run saved in {out})")


@app.command()
@friendly_errors
def predict(
    run: Annotated[Path, typer.Option(help="Run directory written by `trustmap train`.")],
    data: Annotated[str, typer.Option(help="Dataset to predict.")] = "mnist-embedded",
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    predictive: Annotated[str, typer.Option(
        help="single, ensemble, mc-dropout or ensemble-mc.")] = "ensemble",
    samples: Annotated[int, typer.Option(help="MC dropout passes per model.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the MC dropout masks.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Predictions file, .csv or .parquet (default in the run directory).")] = None,
    device: Device = "cpu",
) -> None:
    """Predict a dataset with a trained run; print accuracy and write one row per input, in
    the layout of a run's per_sample.parquet (``trustmap.per_sample``).

    Arguments, the run and the output path are checked before any prediction, and a model
    whose outputs are not finite is an error, never an accuracy; nothing is written on error.
    """
    from trustmap import per_sample, uncertainty
    from trustmap.data import load
    from trustmap.predictive import check_predictive, make_predictive
    from trustmap.training import load_ensemble

    torch_device = _device(device)
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--out {out}: use a .csv or .parquet file name")
    check_predictive(predictive, samples)
    dataset = load(data, split)
    ensemble = load_ensemble(_checkpoints(run), torch_device)
    path = out or run / f"predictions-{_file_name(data)}-{split}-{predictive}.csv"
    check_writable(path, folder=False)
    started = time.perf_counter()
    prediction = make_predictive(predictive, ensemble.members, samples, seed).predict(
        dataset.images)
    seconds = time.perf_counter() - started
    known = tuple(dataset.classes) == ensemble.classes
    frame = per_sample.table(
        [per_sample.rows(data, "id" if known else "ood", labels=dataset.labels if known else None,
                         label_names=[dataset.classes[k] if k >= 0 else ""
                                      for k in dataset.labels.tolist()],
                         classes=ensemble.classes, predictions={predictive: prediction},
                         scores={predictive: uncertainty.compute(prediction)})],
        classes=ensemble.classes, in_distribution=str(ensemble.data["name"]),
        measures=uncertainty.names())
    _write_table(frame, path)
    console.print(f"{predictive} of {len(ensemble.members)} member(s), "
                  f"{prediction.sample_probs.shape[0]} samples per input, "
                  f"{len(dataset)} inputs in {seconds:.2f} s")
    if known:
        accuracy = float((prediction.predicted == dataset.labels).float().mean())
        console.print(f"accuracy on {data} ({split}): {accuracy:.4f}")
    else:
        console.print(f"{data} has other classes than the run was trained on "
                      f"({ensemble.data['name']}): no accuracy (an out-of-distribution set)")
    console.print(f"wrote {path}")


def _file_name(data: str) -> str:
    """A data reference as part of a file name: a path's last part, without its suffix."""
    return Path(data).stem if any(sep in data for sep in "/\\") else data


def _checkpoints(run: Path) -> Path:
    """A `trustmap train` directory as given, or the checkpoints inside a `trustmap run` one."""
    inner = run / "checkpoints"
    if run.is_dir() and not (run / "run.json").exists() and inner.is_dir():
        found = sorted((d for d in inner.iterdir() if (d / "run.json").exists()),
                       key=lambda d: d.stat().st_mtime)
        if found:
            if len(found) > 1:
                console.print(f"{run} holds {len(found)} ensembles; using the newest, {found[-1]}")
            return found[-1]
    return run


@app.command()
@friendly_errors
def explain(
    run: Annotated[Path | None, typer.Option(
        help="Run directory of `trustmap train`, or of `trustmap run` (runs/NAME).")] = None,
    data: Annotated[str, typer.Option(help="Dataset whose inputs to explain.")] = "mnist-embedded",
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    methods: Annotated[str, typer.Option(
        help="Comma-separated attribution methods (see `trustmap explain --list`).")
    ] = "gradient,gradcam,lrp-epsilon-plus",
    predictive: Annotated[str, typer.Option(
        help="Whose samples explain: single, ensemble, mc-dropout or ensemble-mc.")
    ] = "ensemble",
    n: Annotated[int, typer.Option(help="Explain the first N inputs.")] = 16,
    samples: Annotated[int, typer.Option(help="MC dropout passes per model.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the MC dropout masks.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default: RUN/explain-DATA-PREDICTIVE).")] = None,
    list_methods: Annotated[bool, typer.Option(
        "--list", help="List the attribution methods and exit.")] = False,
    device: Device = "cpu",
) -> None:
    """Explain inputs with every sample of a predictive: maps, their mean and std, disagreement.

    Writes maps.safetensors (per method: every sample's maps, mean and std), scores.csv (one row
    per input: prediction and the disagreement of the samples' maps) and grid.png.
    """
    from safetensors.torch import save_file

    from trustmap.data import load
    from trustmap.explain.aggregate import (
        attribute_samples,
        cosine_disagreement,
        rank_disagreement,
        seed000_uncertainty,
        summarize,
    )
    from trustmap.explain.methods import get
    from trustmap.explain.methods import names as method_names
    from trustmap.predictive import check_predictive, make_predictive
    from trustmap.report.explain_figures import explanation_grid
    from trustmap.report.figures import save_figure
    from trustmap.training import load_ensemble

    if list_methods:
        for name in method_names():
            console.print(name)
        return
    if run is None:
        raise ConfigError("--run is missing: name a run directory (`trustmap train --out DIR`, "
                          "or runs/NAME of `trustmap run`)")
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    if not chosen:
        raise ConfigError("--methods is empty; name at least one method, e.g. --methods gradient")
    for method in chosen:
        get(method)  # unknown names fail before any work
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    check_predictive(predictive, samples)
    torch_device = _device(device)
    dataset = load(data, split)
    ensemble = load_ensemble(_checkpoints(run), torch_device)
    folder = out or run / f"explain-{_file_name(data)}-{predictive}"
    check_writable(folder, folder=True)
    x = dataset.images[:n]
    sampler = make_predictive(predictive, ensemble.members, samples, seed)
    prediction = sampler.predict(x)
    known = tuple(dataset.classes) == ensemble.classes  # else the labels are not the model's
    columns: dict[str, Any] = {
        "index": range(len(x)),
        "label": pd.array(dataset.labels[:n].numpy() if known else [None] * len(x),
                          dtype="Int64"),
        "predicted": prediction.predicted.numpy()}
    tensors: dict[str, torch.Tensor] = {}
    means, stds, disagreement = {}, {}, {}
    for method in chosen:
        started = time.perf_counter()
        maps = attribute_samples(method, sampler, x, prediction.predicted)
        seconds = time.perf_counter() - started
        summary = summarize(maps)
        tensors |= {f"{method}/samples": maps, f"{method}/mean": summary.mean,
                    f"{method}/std": summary.std}
        rank = rank_disagreement(maps)
        columns[f"{method}:rank_disagreement"] = rank.numpy()
        columns[f"{method}:cosine_disagreement"] = cosine_disagreement(maps).numpy()
        if method == "gradcam":
            columns["gradcam:cv"] = seed000_uncertainty(maps).numpy()
        summed = summarize(maps.sum(2, keepdim=True))  # the grid shows channel-summed maps
        means[method], stds[method] = summed.mean[:, 0], summed.std[:, 0]
        disagreement[method] = rank.tolist()
        console.print(f"{method}: {maps.shape[0] * maps.shape[1]} maps in {seconds:.2f} s "
                      f"({maps.shape[0] * maps.shape[1] / seconds:,.0f} maps/s), mean rank "
                      f"disagreement {float(rank.mean()):.3f}")
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "maps.safetensors",
                 lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp)))
    _write_table(pd.DataFrame(columns), folder / "scores.csv")
    shown = min(len(x), 12)
    labels = [f"{_file_name(data)} {i} · {ensemble.classes[int(c)]}"
              for i, c in enumerate(prediction.predicted[:shown])]
    save_figure(explanation_grid(x[:shown], labels, chosen,
                                 {m: v[:shown] for m, v in means.items()},
                                 {m: v[:shown] for m, v in stds.items()},
                                 f"std across {predictive}",
                                 {m: v[:shown] for m, v in disagreement.items()}),
                folder / "grid.png")
    console.print(f"wrote {folder}/maps.safetensors, scores.csv and grid.png")


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write CSV or parquet atomically, chosen by the file's suffix."""
    if path.suffix == ".parquet":
        write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))
