"""Training of one model, of an ensemble or of a VAE, and checkpoints that restore it exactly.

A run directory holds ``run.json`` (what was trained, on what, how) and, per member,
``member-<i>.safetensors`` (weights) with ``member-<i>.json`` (its seed, history, metrics).
Every file is written to a temporary name and renamed, so an interrupted run leaves only
finished members behind, and ``fit_ensemble`` resumes by skipping them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

import trustmap
from trustmap.atomic import Outputs, check_writable, remove_stale_temporaries, write_atomic
from trustmap.data.dataset import Dataset
from trustmap.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    TrustmapError,
    did_you_mean,
)
from trustmap.models import build, channels_last, names, sized, to_channels_last
from trustmap.models.base import INPUT_SIZE
from trustmap.models.vae import NAME as VAE_NAME
from trustmap.models.vae import VAE, vae_loss
from trustmap.models.vae import build as build_vae

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
}

RUN_FILE = "run.json"
SCHEDULES = ("constant", "cosine")
AUGMENTATIONS = ("shift", "flip")

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``objective(model, images, labels) -> scalar loss`` for ``fit``; may ignore the labels."""


def _check_integer(key: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """ConfigError unless ``value`` is an int (not a bool) in [minimum, maximum]."""
    if (isinstance(value, bool) or not isinstance(value, Integral) or value < minimum
            or (maximum is not None and value > maximum)):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{key} must be an integer {bound}, got {value!r}")


def _check_real(key: str, value: object, valid: Callable[[float], bool], wanted: str) -> None:
    """ConfigError unless ``value`` is a finite number for which ``valid`` holds: NaN and inf
    pass comparisons like ``not x < 0`` and would train weights into NaN."""
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)
            or not valid(float(value))):
        raise ConfigError(f"{key} must be {wanted}, got {value!r}")


def _check_name(what: str, value: object, choices: Iterable[str], note: str = "") -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{what} {value!r} is not known{did_you_mean(value, choices)}; "
                          f"choose one of {', '.join(choices)}{note}")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one member's training; stored in every checkpoint."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    augment: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("optimizer", self.optimizer, OPTIMIZERS)
        _check_name("schedule", self.schedule, SCHEDULES)
        if isinstance(self.augment, str):
            raise ConfigError(f"augment must be a sequence of names, got {self.augment!r}")
        object.__setattr__(self, "augment", tuple(self.augment))
        for kind in self.augment:
            _check_name("augmentation", kind, AUGMENTATIONS,
                        " (flip only suits mirror-symmetric classes such as clothing, "
                        "not digits or letters)")
        for key in ("epochs", "batch_size"):
            _check_integer(key, getattr(self, key), 1)
        _check_real("lr", self.lr, lambda v: v > 0, "a finite number > 0")
        _check_real("weight_decay", self.weight_decay, lambda v: v >= 0, "a finite number >= 0")
        _check_real("momentum", self.momentum, lambda v: 0 <= v < 1, "a finite number in [0, 1)")

    def make_optimizer(self, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        kwargs: dict[str, Any] = {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.optimizer == "sgd":
            kwargs["momentum"] = self.momentum
        return OPTIMIZERS[self.optimizer](params, **kwargs)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps: int
                       ) -> torch.optim.lr_scheduler.LRScheduler:
        """Per-step schedule: constant, or cosine decay to zero over all ``steps``."""
        if self.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def augment_batch(x: torch.Tensor, kinds: tuple[str, ...], generator: torch.Generator
                  ) -> torch.Tensor:
    """Random shifts of up to 2 pixels (zero fill) and/or horizontal flips, batched.

    Each image gets its own offsets and flip, drawn from ``generator`` so training stays
    reproducible; the whole batch is moved with one gather.
    """
    if "flip" in kinds:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    if "shift" in kinds:
        n, _, height, width = x.shape
        padded = F.pad(x, (2, 2, 2, 2))
        dy, dx = (torch.randint(0, 5, (2, n), generator=generator)).to(x.device)
        rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    return x


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_accuracy: float | None
    val_nll: float | None
    images_per_second: float
    val_loss: float | None = None  # mean training objective on val, when fit had one


@dataclass
class FitResult:
    """What one member's training produced: its history and final validation metrics."""

    seed: int
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float | None]:
        last = self.history[-1]
        metrics = {"val_accuracy": last.val_accuracy, "val_nll": last.val_nll,
                   "train_loss": last.train_loss, "seconds": self.seconds,
                   "images_per_second": float(np.mean([r.images_per_second
                                                       for r in self.history]))}
        if last.val_loss is not None:
            metrics["val_loss"] = last.val_loss
        return metrics


def member_seeds(run_seed: int, members: int) -> list[int]:
    """Independent, reproducible seeds for M members, derived from one run seed."""
    states = np.random.SeedSequence(run_seed).spawn(members)
    return [int(s.generate_state(1, dtype=np.uint32)[0]) for s in states]


@torch.no_grad()
def forward_in_batches(model: nn.Module, images: torch.Tensor, batch_size: int = 1024
                       ) -> torch.Tensor:
    """Logits of ``model`` for all ``images``, computed in chunks to bound memory."""
    device = next(model.parameters()).device
    with channels_last(model):
        return torch.cat([model(to_channels_last(chunk.to(device))).float().cpu()
                          for chunk in images.split(batch_size)])


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean negative log-likelihood) of logits against labels."""
    accuracy = float((logits.argmax(1) == labels).float().mean())
    nll = float(F.cross_entropy(logits, labels))
    return accuracy, nll


@torch.no_grad()
def evaluate_objective(model: nn.Module, objective: Objective, data: Dataset,
                       batch_size: int = 1024) -> float:
    """Mean of ``objective`` over ``data``, computed in chunks and weighted by chunk size."""
    device = next(model.parameters()).device
    total = 0.0
    with channels_last(model):
        for x, y in zip(data.images.split(batch_size), data.labels.split(batch_size),
                        strict=True):
            total += float(objective(model, to_channels_last(x.to(device)), y.to(device))) * len(x)
    return total / len(data)


def fit(
    model: nn.Module,
    train: Dataset,
    val: Dataset | None = None,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    progress: bool = True,
    description: str = "train",
    *,
    objective: Objective | None = None,
) -> FitResult:
    """Train ``model`` in place with cross-entropy; shuffling is seeded by ``seed``.

    ``progress`` shows a bar on a terminal (never in a log file, where it would be noise).
    ``objective(model, x, y)`` replaces cross-entropy on ``model(x)`` (e.g. a VAE's negative
    ELBO, which ignores the labels); validation then records its mean on ``val`` as
    ``val_loss`` instead of accuracy and NLL, which need logits.

    The caller seeds the initialisation (``build`` after ``torch.manual_seed``), so that
    initialisation and data order are two separate, reproducible choices.

    Raises ConfigError as soon as the loss of a batch, or the weights after an epoch, stop
    being finite numbers: every number computed from them would be NaN.
    """
    if len(train) == 0:
        raise ConfigError(f"training set {train.name!r} is empty")
    device = next(model.parameters()).device
    optimizer = config.make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    batches = -(-len(train) // config.batch_size)
    scheduler = config.make_scheduler(optimizer, config.epochs * batches)
    result = FitResult(seed=seed)
    started = time.perf_counter()
    bar = tqdm(total=config.epochs * batches, desc=description, unit="batch", leave=False,
               disable=None if progress else True)
    with channels_last(model):  # about 1.45x faster training on CPU
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            total_loss, epoch_start = 0.0, time.perf_counter()
            for batch, index in enumerate(order.split(config.batch_size), start=1):
                x, y = train.images[index].to(device), train.labels[index].to(device)
                if config.augment:
                    x = augment_batch(x, config.augment, generator)
                if objective is None:
                    loss = F.cross_entropy(model(to_channels_last(x)), y)
                else:
                    loss = objective(model, to_channels_last(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                value = loss.item()
                if not math.isfinite(value):
                    bar.close()
                    raise _diverged(description, config,
                                    f"its loss became {value} in epoch {epoch}, batch {batch}")
                total_loss += value * len(index)
                bar.update(1)
            speed = len(train) / (time.perf_counter() - epoch_start)
            if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
                bar.close()
                raise _diverged(description, config, f"its weights became NaN or inf in epoch "
                                                     f"{epoch}")
            val_accuracy = val_nll = val_loss = None
            if val is not None and len(val) > 0:
                model.eval()
                if objective is None:
                    val_accuracy, val_nll = evaluate_logits(
                        forward_in_batches(model, val.images), val.labels)
                else:
                    val_loss = evaluate_objective(model, objective, val)
            result.history.append(EpochRecord(epoch, total_loss / len(train), val_accuracy,
                                              val_nll, speed, val_loss))
            shown = ({"val_acc": "-" if val_accuracy is None else f"{val_accuracy:.4f}"}
                     if objective is None else
                     {"val_loss": "-" if val_loss is None else f"{val_loss:.4f}"})
            bar.set_postfix(loss=f"{total_loss / len(train):.4f}", **shown)
    bar.close()
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


def _diverged(description: str, config: TrainConfig, what: str) -> ConfigError:
    """The error of a training that diverged: what happened, and what to change."""
    return ConfigError(f"training ({description}) diverged: {what}, so nothing it learnt was "
                       f"saved; lower the learning rate (--lr, now {config.lr:g} with "
                       f"{config.optimizer}) or check the data and the model, then train again")


def input_statistics(train: Dataset) -> dict[str, list[float]]:
    """Per-channel mean and std of the training images, for a model's Normalize layer.

    Normalising with the data's own statistics makes a network's zero-padding mean "the
    average pixel" (near-black for MNIST) rather than an arbitrary gray.
    """
    return {"mean": train.images.mean(dim=(0, 2, 3)).tolist(),
            "std": train.images.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()}


def split_validation(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out a stratified ``fraction`` of ``train`` (seeded) for validation."""
    _check_real("val_fraction", fraction, lambda v: 0 <= v < 1, "a number in [0, 1)")
    if fraction == 0:
        return train, None
    generator = torch.Generator().manual_seed(seed)
    is_val = torch.zeros(len(train), dtype=torch.bool)
    for label in train.labels.unique():  # loop over classes, not samples
        members = (train.labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        is_val[members[: round(fraction * len(members))]] = True
    held = int(is_val.sum())
    if held in (0, len(train)):
        share = "no image" if held == 0 else "every image"
        raise ConfigError(f"val_fraction {fraction} holds out {share} of the {len(train)} of "
                          f"{train.name!r}; use 0 for no validation split, or a fraction that "
                          "leaves images on both sides")
    note = f"stratified validation hold-out: fraction {fraction}, seed {seed}"
    return (train.subset(~is_val, note + " (kept for training)"),
            train.subset(is_val, note + " (held out)"))


# --- checkpoints -----------------------------------------------------------------------------

def write_json(path: Path, payload: dict[str, Any], outputs: Outputs | None = None) -> None:
    """Write ``payload`` as indented JSON, atomically (with ``outputs``: together with them);
    values JSON lacks become strings."""
    (outputs.write if outputs else write_atomic)(
        path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n"))


def _read_json(path: Path, advice: str) -> dict[str, Any]:
    """The JSON object in ``path``, or a CheckpointError naming it followed by ``advice``."""
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; is this a trustmap run directory? "
                              "Create one with `trustmap train --out DIR`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the file is damaged — "
                              f"{advice}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a JSON {type(payload).__name__}, not an object; "
                              f"the file is damaged — {advice}")
    return payload


def save_member(directory: Path, index: int, model: nn.Module, result: FitResult) -> None:
    """Weights first, then the JSON that marks the member as finished."""
    weights = directory / f"member-{index}.safetensors"
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    write_atomic(weights, lambda tmp: save_file(state, str(tmp)))
    write_json(directory / f"member-{index}.json", {
        "index": index,
        "seed": result.seed,
        "model": model.build_args,
        "history": [asdict(record) for record in result.history],
        "metrics": result.metrics,
        "trustmap_version": trustmap.__version__,
    })


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


MEMBER_FIELDS: dict[str, Callable[[Any], bool]] = {
    "index": lambda v: isinstance(v, int),
    "seed": lambda v: isinstance(v, int),
    "model": lambda v: isinstance(v, dict) and isinstance(v.get("name"), str),
    "history": lambda v: isinstance(v, list),
    "metrics": lambda v: (isinstance(v, dict) and _is_number(v.get("seconds"))
                          and (v.get("val_accuracy") is None or _is_number(v["val_accuracy"]))),
}
"""What a member JSON must hold, and of which type: the fields its readers use."""


def load_member(directory: Path, index: int, builder: Callable[..., nn.Module] = build,
                expected: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild member ``index`` from its JSON and load its weights strictly.

    ``builder(**build_args)`` rebuilds the architecture: the zoo's ``build`` for classifiers,
    ``trustmap.models.vae.build`` for a VAE. ``expected`` holds build arguments the member
    must have recorded (the run's model, channels, classes), so that a member of another run
    copied into the folder is refused rather than mixed in. Raises CheckpointError naming the
    file for anything missing, damaged, foreign or not finite.
    """
    path = directory / f"member-{index}.json"
    weights = directory / f"member-{index}.safetensors"
    advice = (f"delete {path.name} and {weights.name} and run the same `trustmap train` "
              "command again to train this member anew")
    meta = _read_json(path, advice)
    bad = [key for key, valid in MEMBER_FIELDS.items() if key not in meta or not valid(meta[key])]
    if bad or meta["index"] != index:
        what = f"no valid {', '.join(map(repr, bad))}" if bad else f"index {meta['index']}"
        raise CheckpointError(f"{path} records {what}; the file is damaged — {advice}")
    recorded = meta["model"]
    foreign = {key: value for key, value in (expected or {}).items()
               if recorded.get(key) != value}
    if foreign:
        found = {key: recorded.get(key) for key in foreign}
        raise CheckpointError(f"{path} records a member with {found}, but this run's members "
                              f"have {foreign}: it belongs to another run — {advice}")
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing although {path.name} exists; {advice}")
    try:
        model = builder(**recorded)
    except (TrustmapError, TypeError) as error:
        raise CheckpointError(f"{path} records a model that cannot be built ({error}); "
                              f"{advice}") from None
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, SafetensorError) as error:
        raise CheckpointError(f"{weights} is damaged or does not fit the model "
                              f"{recorded} ({error}); {advice}") from None
    broken = [key for key, value in state.items()
              if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(f"{weights} holds NaN or inf weights (in {', '.join(broken)}): "
                              f"the member diverged or the file was damaged, and every "
                              f"prediction of it would be NaN; {advice}")
    model.eval()
    return model, meta


@dataclass
class RunSpec:
    """Everything that defines an ensemble run; a resumed run must match it exactly.

    Checked when made, so that a run folder is never claimed for a spec that cannot train:
    ``model`` must be a zoo name (or "vae"), the numbers in range. The model's options are
    checked by building it, where the data's channels and classes are known.
    """

    model: str
    members: int
    seed: int
    train: TrainConfig
    val_fraction: float = 0.1
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = [*names(), VAE_NAME]
        if self.model not in known:
            raise ModelError(f"unknown model {self.model!r}{did_you_mean(self.model, known)}; "
                             f"known models: {', '.join(names())} (see `trustmap models list`)")
        _check_integer("members", self.members, 1)
        _check_integer("seed", self.seed, 0, 2**64 - 1)  # what numpy and torch seeds take
        _check_real("val_fraction", self.val_fraction, lambda v: 0 <= v < 1,
                    "a number in [0, 1)")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {self.train!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a dict, got {self.model_kwargs!r}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists), so a spec read back compares equal."""
        return json.loads(json.dumps({**asdict(self), "train": asdict(self.train)}))

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RunSpec:
        """The spec ``to_json`` wrote; ConfigError (or ModelError) for anything else."""
        if not isinstance(payload, dict) or not isinstance(payload.get("train"), dict):
            raise ConfigError(f"a run spec is an object with a 'train' object, got {payload!r}")
        try:
            return cls(**{**payload, "train": TrainConfig(**payload["train"])})
        except TypeError as error:  # missing or unknown fields
            raise ConfigError(f"not a run spec: {error}") from None


@dataclass
class EnsembleRun:
    """A trained ensemble as restored from disk, or members a user gave (``spec`` None: they
    were not trained here)."""

    directory: Path
    spec: RunSpec | None
    members: list[nn.Module]
    member_meta: list[dict[str, Any]]
    data: dict[str, Any]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.data["classes"])


DATA_FIELDS: dict[str, Callable[[Any], bool]] = {
    "name": lambda v: isinstance(v, str),
    "in_channels": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "classes": lambda v: (isinstance(v, list) and len(v) >= 1
                          and all(isinstance(c, str) for c in v)),
}
"""What the data record of a run.json must hold: the fields that rebuild its members."""


def _read_run(directory: Path) -> tuple[RunSpec, dict[str, Any]]:
    """The spec and data record of ``directory``'s run.json, or CheckpointError naming it."""
    path = directory / RUN_FILE
    advice = "delete the run folder and train again"
    record = _read_json(path, advice)
    try:
        spec = RunSpec.from_json(record.get("spec"))
    except TrustmapError as error:
        raise CheckpointError(f"{path} records no valid run spec ({error}); the file is "
                              f"damaged — {advice}") from None
    data = record.get("data")
    bad = (["'data'"] if not isinstance(data, dict) else
           [f"'data.{key}'" for key, valid in DATA_FIELDS.items()
            if key not in data or not valid(data[key])])
    if bad:
        raise CheckpointError(f"{path} records no valid {', '.join(bad)}; the file is damaged "
                              f"— {advice}")
    return spec, data


def image_size_options(model: str, size: Sequence[int]) -> dict[str, Any]:
    """The build option of zoo model ``model`` for images of ``size`` [H, W]: none for 28x28
    (every image model's default, so the records of 28x28 runs stay as they were), for a
    recurrent model (it checks its own sequence shape) or the VAE, else ``input_size``."""
    if tuple(size) == (INPUT_SIZE, INPUT_SIZE) or model not in names() or not sized(model):
        return {}  # 28x28, a recurrent model, or the VAE (not a zoo model)
    return {"input_size": list(size)}


def _member_args(spec: RunSpec, data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The build arguments every member of the run records: its model, the data's channels,
    classes and image size, and every option as the builder normalises it (the input
    statistics only where the spec sets them; otherwise each member records its training
    split's)."""
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            size = data.get("image_size", (INPUT_SIZE, INPUT_SIZE))
            reference = build(spec.model, data["in_channels"], len(data["classes"]),
                              **image_size_options(spec.model, size), **spec.model_kwargs)
    except TrustmapError as error:
        raise CheckpointError(f"{path} records a model that cannot be built ({error}); "
                              "delete the run folder and train again") from None
    return {key: value for key, value in reference.build_args.items()
            if key not in ("mean", "std") or key in spec.model_kwargs}


def _finished(directory: Path) -> list[Path]:
    """The member JSONs in ``directory``: what marks a member as trained."""
    return sorted(directory.glob("member-*.json"))


def _open_run(directory: Path, spec: RunSpec, train: Dataset) -> tuple[Dataset, Dataset | None]:
    """Split off validation and claim ``directory`` for ``spec``: write its run.json, or check
    that the one there records the same spec and data (a resumed run).

    Everything is checked before anything is written, so a refused spec leaves no folder or
    file that would refuse the corrected one. A run.json with other settings is replaced only
    where no member has finished (e.g. the last try diverged): nothing is lost then. Claiming
    the folder removes the temporary files of a killed earlier write.
    """
    train_part, val = split_validation(train, spec.val_fraction, spec.seed)
    check_writable(directory, folder=True)
    data_record = {"name": train.name, "split": train.split, "classes": list(train.classes),
                   "in_channels": train.in_channels, "provenance": train.provenance,
                   "train_size": len(train_part), "val_size": 0 if val is None else len(val)}
    if image_size_options(spec.model, train.images.shape[2:]):  # 28x28 runs record none
        data_record["image_size"] = list(train.images.shape[2:])
    run_file = directory / RUN_FILE
    same = False
    if run_file.exists():
        existing, data = _read_run(directory)
        same = existing.to_json() == spec.to_json() and data["name"] == train.name
        if not same and _finished(directory):
            raise CheckpointError(
                f"{directory} already holds a run with other settings (model "
                f"{existing.model!r} on {data['name']!r}, {existing.to_json()}); "
                "choose another --out directory or delete it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot write the run folder {directory} ({error}); "
                          "choose another --out directory") from None
    remove_stale_temporaries(directory)
    if not same:
        write_json(run_file, {"spec": spec.to_json(), "data": data_record,
                              "trustmap_version": trustmap.__version__})
    return train_part, val


def fit_ensemble(
    spec: RunSpec,
    train: Dataset,
    out: Path | str,
    progress: bool = True,
    device: str | torch.device = "cpu",
    on_member: Callable[[int, FitResult | None], None] | None = None,
) -> EnsembleRun:
    """Train ``spec.members`` independently initialised members into ``out``.

    Members already finished in ``out`` (from an interrupted run with the same spec) are
    loaded, not trained again. ``on_member(i, result)`` is called after each member; result
    is None for a member that was resumed from disk.
    """
    directory = Path(out)
    if not train.labelled:
        raise DataError(f"{train.name!r} ({train.split}) has {int((train.labels < 0).sum())} "
                        "image(s) without a label; training needs every label")
    size = image_size_options(spec.model, train.images.shape[2:])
    with torch.device("meta"):  # the options are checked before the directory is claimed
        build(spec.model, train.in_channels, train.num_classes, **size, **spec.model_kwargs)
    train_part, val = _open_run(directory, spec, train)
    seeds = member_seeds(spec.seed, spec.members)
    for index, seed in enumerate(seeds):
        if (directory / f"member-{index}.json").exists():
            if on_member:
                on_member(index, None)
            continue
        torch.manual_seed(seed)
        model = build(spec.model, train.in_channels, train.num_classes,
                      **{**size, **input_statistics(train_part), **spec.model_kwargs}).to(device)
        result = fit(model, train_part, val, spec.train, seed=seed, progress=progress,
                     description=f"member {index + 1}/{spec.members}")
        save_member(directory, index, model.cpu(), result)
        if on_member:
            on_member(index, result)
    return load_ensemble(directory)


def load_ensemble(path: Path | str, device: str | torch.device = "cpu") -> EnsembleRun:
    """Restore every member of the run in ``path`` exactly as it was saved.

    Raises CheckpointError, naming the file and what to do, for a folder that is no run, a
    damaged or missing file, a member of another run, or weights that are not finite.
    """
    directory = Path(path)
    if not directory.is_dir():
        what = "is a file, not a run folder" if directory.exists() else "does not exist"
        raise CheckpointError(f"run directory {directory} {what}; "
                              "train one with `trustmap train --out DIR`")
    spec, data = _read_run(directory)
    missing = [i for i in range(spec.members) if not (directory / f"member-{i}.json").exists()]
    if missing:
        raise CheckpointError(f"{directory}: members {missing} of {spec.members} are not "
                              "finished; run the same `trustmap train` command again to resume")
    expected = _member_args(spec, data, directory / RUN_FILE)
    loaded = [load_member(directory, i, expected=expected) for i in range(spec.members)]
    return EnsembleRun(directory=directory, spec=spec,
                       members=[model.to(device) for model, _ in loaded],
                       member_meta=[meta for _, meta in loaded], data=data)


VAE_TRAINING = TrainConfig(epochs=20, batch_size=128, lr=1e-3)
"""Default training of ``fit_vae``: Adam with cosine decay; about a minute on MNIST on CPU."""


def fit_vae(
    train: Dataset,
    out: Path | str,
    config: TrainConfig = VAE_TRAINING,
    latent: int = 2,
    seed: int = 0,
    val_fraction: float = 0.1,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[VAE, dict[str, Any]]:
    """Train one VAE on ``train``'s images into ``out``, or reload the one finished there.

    The directory is laid out like a one-member ensemble (run.json with model "vae", then
    member-0), so it resumes and refuses other settings the same way; labels only stratify
    the validation hold-out. Returns the VAE in eval mode and its member JSON.
    """
    directory = Path(out)
    spec = RunSpec(model=VAE_NAME, members=1, seed=seed, train=config, val_fraction=val_fraction,
                   model_kwargs={"latent": latent})
    member_seed = member_seeds(seed, 1)[0]
    torch.manual_seed(member_seed)
    # Built first, so bad arguments raise before the directory is claimed for them.
    model = build_vae(latent=latent, in_channels=train.in_channels)
    train_part, val = _open_run(directory, spec, train)
    if not (directory / "member-0.json").exists():
        result = fit(model.to(device), train_part, val, config, seed=member_seed,
                     progress=progress, description="vae", objective=vae_loss)
        save_member(directory, 0, model.cpu(), result)
    loaded, meta = load_member(directory, 0, builder=build_vae, expected=model.build_args)
    return loaded.to(device), meta
