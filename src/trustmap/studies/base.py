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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from trustmap.data import Dataset, conform, load
from trustmap.data.references import is_path
from trustmap.errors import ConfigError, TrustmapError
from trustmap.models import load_members
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


@dataclass(frozen=True)
class Provided:
    """What a Python caller hands a run in memory instead of naming it in the settings
    (``trustmap.audit``): members, and datasets by name (each a split -> Dataset)."""

    members: tuple[nn.Module, ...] = ()
    datasets: Mapping[str, Mapping[str, Dataset]] = field(default_factory=dict)


@dataclass
class RunContext:
    """Built once per command and handed to every study it runs."""

    settings: RunSettings
    out: Path
    command: str = "trustmap run"
    log: Log = quiet
    progress: bool = True
    provided: Provided = field(default_factory=Provided)
    timings: list[dict[str, Any]] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    """Checkpoint directories that were reused, not trained."""
    given: list[str] = field(default_factory=list)
    """Cache scopes of members the user gave (never trained here)."""

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
                                 settings.mc_samples, self.seed, self.settings.batch_size)
            for kind in missing:
                found[kind] = cache.store(key(kind), {"logits": made[kind].sample_logits})
        return {kind: Prediction(found[kind]["logits"]) for kind in kinds}

    def load(self, reference: str, split: str) -> Dataset:
        """``split`` of a dataset name or path; a path's images resized to ``[data] resize``
        where it is set."""
        if reference in self.provided.datasets:
            splits = self.provided.datasets[reference]
            if split not in splits:
                raise ConfigError(f"dataset {reference!r} was given without a {split} split; "
                                  f"give it as {{'{split}': ...}} too")
            return splits[split]
        resize = self.settings.data.resize
        if resize is not None and is_path(reference):
            return load(reference, split, resize=list(resize))
        return load(reference, split)

    def conformed(self, dataset: Dataset, like: Dataset) -> Dataset:
        """``dataset`` with the channels and size of ``like``'s images (the model's input), by
        ``[data] conform``: converted with every step recorded, or refused."""
        have, want = tuple(dataset.images.shape[1:]), tuple(like.images.shape[1:])
        if have == want:
            return dataset
        if self.settings.data.conform == "refuse":
            raise ConfigError(f"{dataset.name!r} has images {list(have)} but the model takes "
                              f"{list(want)} (those of {like.name!r}); set data.conform = "
                              "\"convert\" to convert them (recorded), or leave the set out")
        converted = conform(dataset, channels=want[0], size=want[1:])
        self.log(f"{dataset.name}: images {list(have)} converted to {list(want)} "
                 "(data.conform = \"convert\"; recorded in the set's provenance)")
        return converted

    def test_set(self, name: str) -> Dataset:
        """The test split of ``name``, cut to ``[data] max_per_set`` images: the first ones of a
        named dataset (shuffled at the source, so the choice is fixed), a seeded random choice
        kept in file order for the user's folders, arrays and datasets (often sorted by class)."""
        dataset = self.load(name, "test")
        n = self.settings.data.max_per_set
        if n == 0 or len(dataset) <= n:
            return dataset
        if not (is_path(name) or name in self.provided.datasets):
            return dataset.subset(torch.arange(n), f"first {n} of {len(dataset)}")
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(len(dataset), generator=generator)[:n].sort().values
        return dataset.subset(chosen, f"{n} of {len(dataset)} chosen at random (seed "
                                      f"{self.seed}), in file order")

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

    def given_ensemble(self, data: Dataset) -> EnsembleRun:
        """The user's own members of ``[model]`` (factory + checkpoints, or TorchScript),
        loaded and checked against ``data``'s images and classes before anything is written.

        Their cache is keyed by a checksum of the files, so changed weights miss it. Where the
        members have no dropout layer, the MC-dropout predictives leave the run (with a note)
        unless ``[predictives] kinds`` names them, which is then an error.
        """
        model = self.settings.model
        normalize = model.normalize
        started = time.perf_counter()
        if self.provided.members:
            return self._ensemble_of(list(self.provided.members), data, [], started)
        members = load_members(
            factory=model.factory, checkpoints=list(model.checkpoints),
            torchscript=list(model.torchscript) or None, num_classes=data.num_classes,
            in_channels=data.in_channels, image_size=tuple(data.images.shape[2:]),
            mean=None if normalize is None else list(normalize.mean),
            std=None if normalize is None else list(normalize.std),
            gradcam_layer=model.gradcam_layer)
        files = [Path(f) for f in (*model.checkpoints, *model.torchscript)]
        return self._ensemble_of(members, data, files, started)

    def _ensemble_of(self, members: list[nn.Module], data: Dataset, files: list[Path],
                     started: float) -> EnsembleRun:
        """Given members as an EnsembleRun, its cache keyed by what they compute: a checksum of
        their files, or of their weights where they came from memory."""
        hashed = hashlib.sha256(json.dumps({k: str(v) for k, v in members[0].build_args.items()
                                            if k not in ("checkpoint", "file")},
                                           sort_keys=True).encode())
        for path in files:
            hashed.update(path.read_bytes())
        if not files:
            hashed.update(digest((f"{i}.{k}", v) for i, m in enumerate(members)
                                 for k, v in m.state_dict().items()).encode())
        directory = self.out / "checkpoints" / f"given-{hashed.hexdigest()[:10]}"
        members = [m.to(self.device) for m in members]  # where they stay for the whole run
        self._drop_mc_dropout(members)
        self._drop_methods(members[0], data)
        shown = ", ".join(map(str, files)) or "in memory"
        self.log(f"{len(members)} x {members[0].name} given ({shown}), Grad-CAM layer "
                 f"{getattr(members[0], 'gradcam_layer', None) or 'none'}")
        self.timings.append({"section": "loading the given members",
                             "seconds": round(time.perf_counter() - started, 2)})
        meta = [{"metrics": {"val_accuracy": None}, "build_args": m.build_args}
                for m in members]
        record = {"name": data.name, "classes": list(data.classes),
                  "in_channels": data.in_channels, "provenance": data.provenance}
        run = EnsembleRun(directory, None, members, meta, record)
        self.given.append(str(directory))
        return run

    def _drop_mc_dropout(self, members: Sequence[nn.Module]) -> None:
        mc = [k for k in self.settings.predictives.kinds if k in ("mc-dropout", "ensemble-mc")]
        if not mc or all(getattr(m, "has_dropout", False) for m in members):
            return
        if "kinds" in self.settings.predictives.model_fields_set:
            raise ConfigError(f"predictives.kinds names {', '.join(mc)} but the given members "
                              "have no dropout layer to sample; remove them from "
                              "predictives.kinds")
        settings = self.settings
        kinds = tuple(k for k in settings.predictives.kinds if k not in mc)
        explained = tuple(k for k in settings.explanations.predictives if k not in mc)
        self.settings = settings.model_copy(update={
            "predictives": settings.predictives.model_copy(update={"kinds": kinds}),
            "explanations": settings.explanations.model_copy(
                update={"predictives": explained or ("ensemble",)})})
        self.log(f"the given members have no dropout layer: {', '.join(mc)} left out")

    def _drop_methods(self, member: nn.Module, data: Dataset) -> None:
        """Attribution methods the given members cannot take (guided backprop on functional
        relu, LRP on functional layers, ...) leave the run's default methods and measures with
        the reason logged; a method the settings name is an error with that reason."""
        from trustmap.explain import disagreement
        from trustmap.explain.methods import attribute

        settings = self.settings
        explanations, measures = settings.explanations, settings.measures
        measured = {m: disagreement.measure(m).method for m in settings.measure_names
                    if disagreement.is_measure(m)}
        wanted = dict.fromkeys([*explanations.methods, explanations.class_method,
                                *measured.values()])
        x, target = data.images[:2].to(self.device), data.labels[:2].to(self.device)
        refused: dict[str, str] = {}
        for method in wanted:
            try:
                attribute(method, member, x, target)
            except TrustmapError as error:
                refused[method] = str(error)
        if not refused:
            return
        named = [(f"explanations.{key}", m) for key, values in (
            ("methods", explanations.methods), ("class_method", [explanations.class_method]))
                 if key in explanations.model_fields_set for m in values if m in refused]
        named += [("measures.names", m) for m, method in measured.items()
                  if method in refused and "names" in measures.model_fields_set]
        if named:
            where, method = named[0]
            raise ConfigError(f"{where} names {method!r}, which the given members cannot take: "
                              f"{refused[measured.get(method, method)]}")
        for method, reason in refused.items():
            self.log(f"{method} left out: {reason}")
        methods = tuple(m for m in explanations.methods if m not in refused) or ("gradient",)
        class_method = ("gradient" if explanations.class_method in refused
                        else explanations.class_method)
        names = tuple(m for m in settings.measure_names if measured.get(m) not in refused)
        self.settings = settings.model_copy(update={
            "explanations": explanations.model_copy(
                update={"methods": methods, "class_method": class_method}),
            "measures": measures.model_copy(update={"names": names})})

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
