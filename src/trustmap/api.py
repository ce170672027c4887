"""The Python entry point, reached as ``trustmap.audit``: ``trustmap run`` pointed at the
caller's own members and data, in memory, returning the typed results beside the same report.

Everything ``trustmap run`` reads from a settings file can be given as ``settings`` (the same
tables, as a dict); the members and the datasets are given as objects instead of files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustmap.data import Dataset, from_torch
from trustmap.errors import ConfigError, DataError
from trustmap.models import Classifier, check_fits, user_classifier
from trustmap.report.results import RunResults
from trustmap.studies.base import Provided, RunContext
from trustmap.studies.registry import load_settings, run
from trustmap.studies.settings import RUN_NAME

DataLike = str | Path | Dataset | torch.utils.data.Dataset
"""A dataset name or path, a trustmap Dataset, or any torch Dataset of (image, label)."""


def _dataset(data: DataLike, name: str, split: str, classes: Sequence[str] | None
             ) -> Dataset | str:
    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, Dataset):
        return data
    if isinstance(data, torch.utils.data.Dataset):
        return from_torch(data, name, classes=classes, split=split)
    raise DataError(f"{name}: expected a dataset name or path, a trustmap Dataset or a torch "
                    f"Dataset, got {type(data).__name__}")


def _splits(data: DataLike | Mapping[str, DataLike], name: str,
            classes: Sequence[str] | None) -> str | dict[str, Dataset]:
    """A reference as it is, or the in-memory splits of ``data`` by split name."""
    if isinstance(data, Mapping):
        unknown = sorted(set(data) - {"train", "test"})
        if unknown or "test" not in data:
            raise DataError(f"{name}: give a mapping with 'test' (and 'train', from which the "
                            f"temperature's validation images are held out), got keys "
                            f"{sorted(data)}")
        found = {split: _dataset(item, name, split, classes) for split, item in data.items()}
        if any(isinstance(item, str) for item in found.values()):
            raise DataError(f"{name}: give the splits of a mapping as datasets, or the whole "
                            "set as one name or path")
        return found  # type: ignore[return-value]
    found_one = _dataset(data, name, "test", classes)
    if isinstance(found_one, str):
        return found_one
    return {"test": found_one}


def _members(members: nn.Module | Sequence[nn.Module], like: Dataset,
             mean: Sequence[float] | None, std: Sequence[float] | None,
             gradcam_layer: str | None) -> tuple[nn.Module, ...]:
    models = [members] if isinstance(members, nn.Module) else list(members)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise ConfigError("members must be one torch.nn.Module (its MC dropout is sampled) or "
                          "a non-empty list of them (an ensemble)")
    shape = (like.in_channels, *like.images.shape[2:])
    wrapped = []
    for index, model in enumerate(models):
        if not isinstance(model, Classifier):
            model = user_classifier(model, name=type(model).__name__,
                                    num_classes=like.num_classes, in_channels=shape[0],
                                    mean=mean, std=std, gradcam_layer=gradcam_layer,
                                    image_size=shape[1:], source=f"python member {index}")
        check_fits(model, shape, like.num_classes)
        wrapped.append(model.eval())
    return tuple(wrapped)


def audit(members: nn.Module | Sequence[nn.Module],
          data: DataLike | Mapping[str, DataLike],
          ood: Sequence[DataLike] = (),
          out: str | Path = "runs/audit",
          *,
          classes: Sequence[str] | None = None,
          mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None,
          gradcam_layer: str | None = None,
          settings: Mapping[str, Any] | None = None,
          log: Callable[[str], None] | None = None,
          progress: bool = False) -> RunResults:
    """Audit ``members`` (an ensemble, or one model with dropout) on ``data`` and ``ood``.

    ``data`` is a name or path (``trustmap run``'s data references), or in memory a mapping
    ``{"train": ..., "test": ...}`` of trustmap or torch Datasets (train is where the
    temperature's validation images are held out); ``ood`` sets are names, paths or datasets.
    ``mean``/``std`` are the normalisation the members expect; ``gradcam_layer`` a layer name in
    them (found when None). ``settings`` takes the tables of a settings file (e.g.
    ``{"data": {"max_per_set": 500}, "explanations": {"methods": ["gradient"]}}``). Writes
    ``report.html``, ``metrics.json`` and ``per_sample.parquet`` into ``out``; returns the run's
    results (``results.per_sample`` is the per-sample table).
    """
    out = Path(out)
    id_found = _splits(data, "data", classes)
    datasets: dict[str, dict[str, Dataset]] = {}
    id_name = id_found if isinstance(id_found, str) else "data"
    if not isinstance(id_found, str):
        if "train" not in id_found:
            raise DataError("data: give {'train': ..., 'test': ...}; the train split holds the "
                            "validation images the temperature is fitted on")
        datasets[id_name] = id_found
    ood_names = []
    for index, item in enumerate(ood):
        found = _splits(item, f"ood[{index}]", None)
        if isinstance(found, str):
            ood_names.append(found)
        else:
            name = found["test"].name or f"ood-{index}"
            datasets[name] = found
            ood_names.append(name)
    values = dict(settings or {})
    values["name"] = out.name if RUN_NAME.fullmatch(out.name) else "audit"
    values.setdefault("studies", ["uncertainty"])
    values["data"] = {**values.get("data", {}), "in_distribution": id_name, "ood": ood_names}
    loaded = load_settings(None, None, values, datasets=datasets)
    like = (datasets[id_name]["test"] if id_name in datasets
            else RunContext(loaded, out).load(id_name, "test"))
    if not like.labelled:
        raise DataError(f"data: {like.name!r} has images without a label; the in-distribution "
                        "images need their labels (accuracy, calibration, class maps): give "
                        "unlabelled images as an OOD set (data.ood)")
    provided = Provided(members=_members(members, like, mean, std, gradcam_layer),
                        datasets=datasets)
    _, computed = run(loaded, out, progress=progress, log=log or (lambda message: None),
                      command="trustmap.audit", provided=provided)
    results: RunResults = computed["uncertainty"]
    return results
