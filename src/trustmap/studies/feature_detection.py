"""Feature-space detectors in a run: fitted per member on the members' training images, scored
on every set, and handed to the tables as measures under each predictive.

A detector reads one network's features, so a predictive's score is its members': member 0's
for ``single`` and ``mc-dropout`` (features are read with dropout off), the mean over members
for ``ensemble`` and ``ensemble-mc``. The members' own scores are kept too, for the table of
every member beside their mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from trustmap.data import Dataset
from trustmap.errors import ConfigError, DataError, ModelError, did_you_mean
from trustmap.evaluate import detectors as registry
from trustmap.evaluate.ood import detection_metrics
from trustmap.models.features import features, linear_head
from trustmap.studies.base import RunContext, data_key
from trustmap.training import EnsembleRun

ENSEMBLE_KINDS = ("ensemble", "ensemble-mc")
"""Predictives whose detector score is the mean over members (the others read member 0)."""


@dataclass
class DetectorScores:
    """Scores of the run's detectors: ``members[set][i][name]`` per member, and ``by_kind``
    the predictives' view of them, ``[set][kind][name]``."""

    names: list[str]
    definitions: dict[str, str]
    members: dict[str, list[dict[str, torch.Tensor]]] = field(default_factory=dict)
    by_kind: dict[str, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def check_fit_split(ctx: RunContext, fit: Dataset, members: Sequence[nn.Module] = ()) -> None:
    """Before any training (or after loading given ``members``): the training split must hold
    what the detectors fit on (k neighbours; two images of every class for a class
    covariance). TorchScript members get no detectors, so nothing is asked of the split."""
    settings = ctx.settings.detectors
    if not settings.names or not _readable(members):
        return
    if "knn" in settings.names and settings.k > len(fit):
        raise ConfigError(f"detectors.k = {settings.k} neighbours, but the detectors are fitted "
                          f"on the {len(fit)} training images of {fit.name!r}; lower "
                          f"detectors.k to at most {len(fit)}")
    gaussian = {"mahalanobis", "relative_mahalanobis", "ddu"} & set(settings.names)
    counts = torch.bincount(fit.labels, minlength=fit.num_classes)
    if gaussian and int(counts.min()) < 2:
        scarce = int(counts.argmin())
        raise DataError(f"class {fit.classes[scarce]!r} has {int(counts[scarce])} training "
                        f"image(s) in {fit.name!r}; {', '.join(sorted(gaussian))} fit a class "
                        "mean and spread, which need at least two: add images of that class or "
                        "leave those detectors out of detectors.names")


def check_layer(ctx: RunContext, members: Sequence[nn.Module]) -> None:
    """Before the sets are attacked and scored: ``detectors.layer`` must name a layer of the
    members (ModelError listing theirs)."""
    layer = ctx.settings.detectors.layer
    if layer is None or not ctx.settings.detectors.names:
        return
    for member in members:
        modules = dict(member.named_modules())
        if layer not in modules:
            raise ModelError(f"detectors.layer = {layer!r} is not a layer of the members"
                             f"{did_you_mean(layer, modules)}; their layers: "
                             f"{', '.join(n for n in modules if n)}")


def _readable(members: Sequence[nn.Module]) -> bool:
    """Whether hooks can read the members' layers (not in a TorchScript member)."""
    return all(getattr(m, "supports_hooks", True) for m in members)


def _usable(ctx: RunContext, members: Sequence[nn.Module], example: torch.Tensor,
            names: list[str]) -> tuple[list[str], list[tuple[torch.Tensor, torch.Tensor]],
                                       list[str]]:
    """The detectors every member can feed, each member's head, and why others are left out."""
    layer = ctx.settings.detectors.layer
    if not _readable(members):
        return [], [], [f"{', '.join(names)}: the members are TorchScript files, whose layers "
                        "cannot be read; give factory + checkpoints for feature detectors"]
    heads, reasons = [], []
    for member in members:
        try:
            found = linear_head(member, example, layer)
        except ModelError as error:  # no nn.Linear: no default layer, no head
            if layer is None:
                ctx.log(f"leaving out the feature detectors: {error}")
                return [], [], [f"{', '.join(names)}: {error} (detectors.layer)"]
            found = str(error)
        if isinstance(found, str):
            reasons.append(found)
        else:
            heads.append(found)
    if reasons:
        needs_head = [n for n in names if registry.get(n).needs_head]
        if needs_head:
            ctx.log(f"leaving out {', '.join(needs_head)}: {reasons[0]}")
        return ([n for n in names if n not in needs_head], [],
                [f"{', '.join(needs_head)}: {reasons[0]}"] if needs_head else [])
    return names, heads, []


def _fitter(ctx: RunContext, member: nn.Module, head: tuple[torch.Tensor, torch.Tensor] | None,
            fit: Dataset, names: list[str]) -> Callable[[], dict[str, Callable]]:
    """Fits the member's detectors on first use only: a cached rerun reads no training
    features at all."""
    settings = ctx.settings.detectors
    options = registry.DetectorOptions(k=settings.k, react_percentile=settings.react_percentile,
                                       vim_dim=settings.vim_dim)
    fitted: dict[str, Callable] = {}

    def get() -> dict[str, Callable]:
        if not fitted:
            bank = features(member, fit.images, settings.layer, ctx.settings.batch_size)
            wrapped = None if head is None else registry.Head(*head)
            for name in names:
                fitted[name] = registry.fit(name, bank, fit.labels, wrapped, fit.classes, options)
        return fitted

    return get


def score(ctx: RunContext, ensemble: EnsembleRun, fit: Dataset, sets: Mapping[str, Dataset],
          kinds: Sequence[str]) -> DetectorScores:
    """Every detector of ``[detectors]`` fitted on ``fit`` and scored on ``sets``, per member
    and under each of ``kinds``; cached per member and set."""
    settings = ctx.settings.detectors
    members = ensemble.members
    for member in members:
        member.eval()
    names, heads, skipped = _usable(ctx, members, fit.images[:8], list(settings.names))
    found = DetectorScores(names, {n: _definition(n) for n in names}, skipped=skipped)
    if not names:
        return found
    cache = ctx.cache(ensemble)
    fitters = [_fitter(ctx, m, heads[i] if heads else None, fit, names)
               for i, m in enumerate(members)]
    base = {"detectors": names, **settings.model_dump(mode="json", exclude={"names"}),
            "fit": data_key(fit), "batch_size": ctx.settings.batch_size}
    for set_name, dataset in sets.items():
        per_member = []
        for i, (member, fitter) in enumerate(zip(members, fitters, strict=True)):
            def compute(member: nn.Module = member, fitter: Callable = fitter,
                        dataset: Dataset = dataset) -> dict[str, torch.Tensor]:
                bank = features(member, dataset.images, settings.layer,
                                ctx.settings.batch_size)
                return {name: scorer(bank) for name, scorer in fitter().items()}

            per_member.append(cache.get({**data_key(dataset), **base, "member": i}, compute))
        found.members[set_name] = per_member
        found.by_kind[set_name] = {
            kind: {name: (torch.stack([s[name] for s in per_member]).mean(0)
                          if kind in ENSEMBLE_KINDS else per_member[0][name]) for name in names}
            for kind in kinds}
    return found


def _definition(name: str) -> str:
    detector = registry.get(name)
    return f"{detector.definition} (feature space; {detector.paper})"


def member_table(found: DetectorScores, id_name: str, ood_names: Sequence[str],
                 near: Sequence[str]) -> pd.DataFrame:
    """AUROC, AUPR-in/out and FPR95 of every detector on every OOD set, for each member and
    for their mean, with the set's group (near or far OOD)."""
    rows = []
    for ood in ood_names:
        group = "near" if ood in near else "far"
        for name in found.names:
            negatives = [s[name] for s in found.members[id_name]]
            positives = [s[name] for s in found.members[ood]]
            pairs = [(str(i), n, p) for i, (n, p) in enumerate(zip(negatives, positives,
                                                                    strict=True))]
            pairs.append(("mean", torch.stack(negatives).mean(0), torch.stack(positives).mean(0)))
            for member, negative, positive in pairs:
                rows.append({"ood_set": ood, "group": group, "detector": name, "member": member,
                             **detection_metrics(negative, positive)})
    return pd.DataFrame(rows, columns=["ood_set", "group", "detector", "member", "auroc",
                                       "aupr_in", "aupr_out", "fpr95"])
