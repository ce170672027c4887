"""What every study shares: the RunContext built once per command, and the Study shape.

A study is settings (a table of the settings file), ``compute(ctx) -> results`` and
``sections(results)`` (what its part of a page shows). ``trustmap run`` computes the studies its
settings enable, one after another, on one context; ``trustmap study NAME`` computes one. The
context owns everything a study must not decide on its own: the settings, the seed, the device,
the log and progress bars, the timings, the tensor cache and the checkpoint policy.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from trustmap.atomic import Outputs, write_atomic
from trustmap.data import Dataset, load
from trustmap.predictive import Prediction, predict_kinds
from trustmap.report import page
from trustmap.studies.settings import ModelSettings, RunSettings, Section, torch_device
from trustmap.training import EnsembleRun, FitResult, RunSpec, TrainConfig, fit_ensemble, fit_vae

Log = Callable[[str], None]


def quiet(message: str) -> None:
    """A log that says nothing."""


class TensorCache:
    """Tensors computed from a run's checkpoints, kept in safetensors files by content key.

    Attacks, forward passes and the maps behind explanation disagreement are the slow part of
    a run; their results depend only on the checkpoints and on the settings named in the key,
    so a second run with the same settings loads them instead.
    """

    def __init__(self, directory: Path, scope: str) -> None:
        self.directory = directory
        self.scope = scope
        self.hits = 0  # tensors found from an earlier command, not those this one stored
        self._stored: set[Path] = set()

    def _path(self, key: dict[str, Any], suffix: str = ".safetensors") -> Path:
        text = json.dumps({"scope": self.scope, **key}, sort_keys=True, default=str)
        return self.directory / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}{suffix}"

    def load(self, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``key``, or None (a damaged file counts as none)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError):
            path.unlink(missing_ok=True)
            return None
        self.hits += path not in self._stored
        return tensors

    def store(self, key: dict[str, Any], tensors: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        path = write_atomic(self._path(key), lambda tmp: save_file(tensors, str(tmp)))
        self._stored.add(path)
        return tensors

    def get(self, key: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]]
            ) -> dict[str, torch.Tensor]:
        """The tensors under ``key``, computed and stored first if they are not there."""
        found = self.load(key)
        return found if found is not None else self.store(key, compute())

    def frames(self, key: dict[str, Any], names: Sequence[str],
               compute: Callable[[], dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
        """The tables ``names`` under ``key``, computed and stored first if any is missing.

        For tables derived from cached tensors that are slow to rebuild (thousands of AUROCs);
        parquet keeps every float bit and dtype, so a table read back equals the one computed.
        """
        paths = {name: self._path({**key, "table": name}, ".parquet") for name in names}
        try:
            found = {name: pd.read_parquet(path) for name, path in paths.items()}
        except (OSError, ValueError, pyarrow.ArrowException):  # missing or damaged
            made = compute()
            for name, path in paths.items():
                write_atomic(path, lambda tmp, frame=made[name]: frame.to_parquet(tmp))
                self._stored.add(path)
            return made
        self.hits += any(path not in self._stored for path in paths.values())
        return found


def digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A checksum of names, dtypes, shapes and bytes: the key of results derived from exactly
    these tensors, whichever settings or cache entries produced them."""
    hashed = hashlib.sha256()
    for name, tensor in named:
        hashed.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        hashed.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hashed.hexdigest()


def data_key(dataset: Dataset) -> dict[str, Any]:
    """What identifies a dataset in a cache key: name, split, size, provenance and a checksum
    of its pixels, so a changed file or a different cut misses the cache."""
    return {"set": dataset.name, "split": dataset.split, "n": len(dataset),
            "provenance": dataset.provenance,
            "checksum": float(dataset.images.double().sum())}


def ensemble_spec(model: ModelSettings, seed: int, name: str | None = None,
                  members: int | None = None, epochs: int | None = None) -> RunSpec:
    """The training run of ``[model]``, or of another zoo model trained the same way."""
    return RunSpec(
        model=name or model.name, members=members or model.members, seed=seed,
        train=TrainConfig(epochs=epochs or model.epochs, batch_size=model.batch_size,
                          lr=model.lr, optimizer=model.optimizer,
                          weight_decay=model.weight_decay, augment=model.augment),
        val_fraction=model.val_fraction,
        model_kwargs={"dropout": model.dropout} if model.dropout > 0 else {})


@dataclass
class RunContext:
    """Built once per command and handed to every study it runs."""

    settings: RunSettings
    out: Path
    command: str = "trustmap run"
    log: Log = quiet
    progress: bool = True
    timings: list[dict[str, Any]] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    """Checkpoint directories that were reused, not trained."""

    def __post_init__(self) -> None:
        self.device = torch_device(self.settings.device)
        self.seed = self.settings.seed
        self._ensembles: dict[Path, EnsembleRun] = {}
        self._caches: dict[str, TensorCache] = {}

    def section(self, name: str) -> Section:
        """The settings table of the study ``name``."""
        return getattr(self.settings, name)

    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        """Time one part of the work into ``timings`` (seconds per section of the report)."""
        started = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: count them where they ran
        self.timings.append({"section": what, "seconds": round(time.perf_counter() - started,
                                                                 2)})

    def checkpoints(self, spec: RunSpec, data: str) -> Path:
        """Checkpoints are keyed by what defines the weights, so changed settings train anew
        and unchanged ones are reused, by every study alike."""
        key = json.dumps({"spec": spec.to_json(), "data": data}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return self.out / "checkpoints" / f"{spec.model}-{digest}"

    def cache(self, ensemble: EnsembleRun) -> TensorCache:
        """The tensor cache of results computed from ``ensemble``'s checkpoints."""
        scope = ensemble.directory.name
        if scope not in self._caches:
            self._caches[scope] = TensorCache(self.out / "cache", scope)
        return self._caches[scope]

    @property
    def cache_hits(self) -> int:
        return sum(cache.hits for cache in self._caches.values())

    def predict(self, ensemble: EnsembleRun, dataset: Dataset,
                kinds: Sequence[str] | None = None) -> dict[str, Prediction]:
        """Every predictive's sample logits on ``dataset`` (default: the run's predictives that
        the members support), each kept in the cache on its own, so any study that asks for a
        predictive on the same data reads the same passes instead of running them again."""
        settings = self.settings.predictives
        if kinds is None:
            dropout = any(isinstance(m, nn.Dropout) for m in ensemble.members[0].modules())
            kinds = [k for k in settings.kinds if dropout or k in ("single", "ensemble")]
        cache = self.cache(ensemble)
        data = data_key(dataset)

        def key(kind: str) -> dict[str, Any]:
            return {**data, "kind": kind, "mc_samples": settings.mc_samples, "seed": self.seed}

        found = {kind: cache.load(key(kind)) for kind in kinds}
        missing = [kind for kind, tensors in found.items() if tensors is None]
        if missing:
            made = predict_kinds(missing, ensemble.members, dataset.images,
                                 settings.mc_samples, self.seed)
            for kind in missing:
                found[kind] = cache.store(key(kind), {"logits": made[kind].sample_logits})
        return {kind: Prediction(found[kind]["logits"]) for kind in kinds}

    def test_set(self, name: str) -> Dataset:
        """The test split of ``name``, cut to its first ``[data] max_per_set`` images."""
        dataset = load(name, "test")
        n = self.settings.data.max_per_set
        if n == 0 or len(dataset) <= n:
            return dataset
        return dataset.subset(torch.arange(n), f"first {n} of {len(dataset)}")

    def ensemble(self, spec: RunSpec, train: Dataset) -> EnsembleRun:
        """Train (or reuse) the ensemble ``spec`` on ``train``, members on the run's device;
        within one command each ensemble is loaded once, whichever study asks."""
        directory = self.checkpoints(spec, train.name)
        if directory in self._ensembles:
            return self._ensembles[directory]
        reused: list[int] = []

        def report(index: int, result: FitResult | None) -> None:
            if result is None:
                reused.append(index)
                self.log(f"  member {index}: reused from {directory}")
            else:
                self.log(f"  member {index}: trained, validation accuracy "
                         f"{result.metrics['val_accuracy'] or float('nan'):.3f}")

        self.log(f"{spec.members} x {spec.model} on {train.name} -> {directory}")
        with self.timed(f"training {spec.model}"):
            run = fit_ensemble(spec, train, directory, progress=self.progress,
                               device=self.device, on_member=report)
        if len(reused) == spec.members:
            self.resumed.append(str(directory))
        for member in run.members:
            member.to(self.device).eval()
        self._ensembles[directory] = run
        return run

    def vae(self, train: Dataset, epochs: int) -> nn.Module:
        """Train (or reuse) seed 003's 2-D VAE on ``train``, keyed like an ensemble."""
        config = TrainConfig(epochs=epochs, batch_size=128)
        spec = RunSpec(model="vae", members=1, seed=self.seed, train=config)
        directory = self.checkpoints(spec, train.name)
        self.log(f"VAE (2-D latent) on {train.name} -> {directory}")
        with self.timed("training vae"):
            vae, _ = fit_vae(train, directory, config, seed=self.seed, progress=self.progress,
                             device=self.device)
        return vae.eval()


class Study(Protocol):
    """One study: its settings table, its computation and its part of a page.

    Its own page (``trustmap study NAME``) and its part of the run's page (``trustmap run``)
    are both drawn from ``sections``: one code path for both.
    """

    name: str
    """Its command (``trustmap study NAME``) and its table in the settings file."""
    title: str
    results_type: type
    """What ``compute`` returns; saved beside the page so it can be drawn again."""
    settings_type: type[Section] | None
    """Its table of the settings file (None: it reads the run's own tables)."""
    in_run: bool
    """Whether ``trustmap run`` may compute it (``studies = [...]``) and show its sections."""
    run_preset: dict[str, Any]
    """Settings it takes inside ``trustmap run`` unless the file says otherwise (smaller maps
    than the study alone draws, or the run's own ensemble)."""
    alone_preset: dict[str, Any]
    """Settings it takes as ``trustmap study NAME`` unless the file says otherwise."""
    template: str
    """The template holding its sections' macros (and ``study``, its heading on the run's page)."""

    def compute(self, ctx: RunContext) -> Any:
        """Everything the study measures, as its typed results."""

    def sections(self, results: Any) -> list[page.Section]:
        """Its part of a page, after checking ``results`` hold what the part reads."""

    def metrics(self, results: Any) -> dict[str, Any]:
        """What ``metrics.json`` keeps of ``results`` (the header is added beside it)."""

    def write(self, results: Any, out: Path, outputs: Outputs) -> Path:
        """Its own page (from ``sections``) and any files of its own, written through
        ``outputs`` so that they change together; returns the page."""
