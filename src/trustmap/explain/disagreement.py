"""How much the samples' explanations disagree, as scores judged like uncertainty measures.

A deep ensemble or an MC-dropout model has one map per sample [S, N, C, H, W]; when those
maps disagree the model's reasons are uncertain even where its probabilities agree (seed 000).
Each measure here reads the maps of one attribution method and returns [N] scores, higher =
more disagreement, so the OOD and adversarial tables can rank them beside entropy or mutual
information. The registry is a plain, explicit table: nothing registers itself on import.

The table holds the measures of a few methods (METHODS), the default set a run scores; any other
method gets the same measures on request: ``measures_for(method)`` for any method reference
(a registered name, "captum:Name", a Captum Attribution class or instance, a callable), and
``measure(name)`` for a name ``<method>_rank_disagreement`` or ``<method>_cosine_disagreement``,
where <method> is a registered name or "captum:Name" with every other character than letters
and digits written "_": ``lrp_epsilon_rank_disagreement``, ``captum_Saliency_rank_disagreement``.
A measure's ``method`` is the method's stable display name (``methods.resolve``), which groups
measures reading the same maps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from trustmap.errors import ConfigError, did_you_mean
from trustmap.explain import methods
from trustmap.explain.aggregate import cosine_disagreement, rank_disagreement, seed000_uncertainty
from trustmap.explain.captum_methods import PREFIX


@dataclass(frozen=True)
class DisagreementMeasure:
    """A score of the maps of every sample of one attribution method."""

    name: str
    definition: str
    method: str
    """The display name of the attribution method whose sample maps it reads."""
    statistic: Callable[[torch.Tensor], torch.Tensor]
    """[S, N, C, H, W] maps -> [N] scores."""
    needs_multiple_samples: bool = True
    reference: object = None
    """What computes the maps where ``method`` is not a name ``methods.get`` takes (a callable
    or a Captum instance); None where it is."""

    @property
    def source(self) -> object:
        """The method reference to compute its maps with (``attribute_samples(source, ...)``)."""
        return self.method if self.reference is None else self.reference


METHODS = ("gradcam", "gradient", "guided-backprop", "lrp-epsilon-plus")
"""Methods whose disagreement the table holds: the measures a run scores by default."""

SUFFIXES = ("_rank_disagreement", "_cosine_disagreement")


def slug(method: str) -> str:
    """A display name as it appears in measure names: every run of characters other than
    letters and digits becomes "_" ("guided-backprop" -> "guided_backprop")."""
    return re.sub(r"[^0-9A-Za-z]+", "_", method)


def measures_for(method: methods.MethodRef) -> dict[str, DisagreementMeasure]:
    """The disagreement measures of any method's sample maps, by name: rank and cosine
    disagreement (and seed 000's CV for Grad-CAM)."""
    name, _ = methods.resolve(method)
    reference = None if isinstance(method, str) else method
    if reference is not None and name in methods.METHODS and methods.METHODS[name] is method:
        reference = None  # a registered function: its name computes the same maps
    measures = []
    if name == "gradcam":
        measures.append(DisagreementMeasure(
            "gradcam_cv", "seed 000: mean over pixels of std/mean across the samples' min-max "
            "normalised Grad-CAM maps", "gradcam", seed000_uncertainty))
    measures += [
        DisagreementMeasure(f"{slug(name)}_rank_disagreement", "1 - mean pairwise Spearman "
                            f"correlation of the samples' |{name}| maps", name,
                            rank_disagreement, reference=reference),
        DisagreementMeasure(f"{slug(name)}_cosine_disagreement", "1 - mean pairwise cosine "
                            f"similarity of the samples' {name} maps", name,
                            cosine_disagreement, reference=reference)]
    return {measure.name: measure for measure in measures}


def _table() -> dict[str, DisagreementMeasure]:
    table: dict[str, DisagreementMeasure] = {}
    for method in METHODS:
        table.update(measures_for(method))
    return table


MEASURES: Mapping[str, DisagreementMeasure] = _table()
"""The table: the measures of METHODS by name, in display order."""


def names() -> tuple[str, ...]:
    """The table's measure names (any method's measures are there on request: ``measure``)."""
    return tuple(MEASURES)


def _unknown(name: object) -> ConfigError:
    return ConfigError(
        f"unknown explanation-disagreement measure {name!r}{did_you_mean(name, MEASURES)}; "
        f"known: {', '.join(MEASURES)}, or for any method <method>_rank_disagreement and "
        "<method>_cosine_disagreement, <method> a method name with '-' and ':' written '_' "
        "(e.g. lrp_epsilon_rank_disagreement, captum_Saliency_rank_disagreement)")


def measure(name: str) -> DisagreementMeasure:
    """A measure by name: one of the table's, or a method's rank or cosine disagreement named
    as the module text says. Unknown names and unknown methods raise ConfigError."""
    if not isinstance(name, str):
        raise _unknown(name)
    if name in MEASURES:
        return MEASURES[name]
    suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise _unknown(name)
    prefix = name[:-len(suffix)]
    registered = {slug(m): m for m in methods.names()}
    captum = slug(PREFIX)
    if prefix in registered:
        method = registered[prefix]
    elif prefix.startswith(captum) and len(prefix) > len(captum):
        method = PREFIX + prefix[len(captum):]
    else:
        raise _unknown(name)
    found = measures_for(method)  # an unknown Captum class says so
    if name not in found:
        raise _unknown(name)
    return found[name]


def is_measure(name: object) -> bool:
    """Whether ``measure(name)`` knows the name (without raising)."""
    try:
        measure(name)  # type: ignore[arg-type]
    except ConfigError:
        return False
    return True


def _as_measure(item: str | DisagreementMeasure) -> DisagreementMeasure:
    return item if isinstance(item, DisagreementMeasure) else measure(item)


def by_method(selected: Iterable[str | DisagreementMeasure]) -> dict[str, list[str]]:
    """The measures (names, or measures from ``measures_for``) grouped by the display name of
    the method whose maps they read (each map set once)."""
    grouped: dict[str, list[str]] = {}
    for item in selected:
        found = _as_measure(item)
        grouped.setdefault(found.method, []).append(found.name)
    return grouped


def compute(maps: Mapping[str, torch.Tensor],
            selected: Iterable[str | DisagreementMeasure]) -> dict[str, torch.Tensor]:
    """Scores [N] of the measures from the sample maps of their methods, keyed by the methods'
    display names (``methods.name_of``)."""
    chosen = [_as_measure(item) for item in selected]
    scores = {}
    for method, names_ in by_method(chosen).items():
        if method not in maps:
            raise ConfigError(f"measures {names_} read the {method!r} maps of every sample; "
                              f"pass them (trustmap.explain.attribute_samples)")
    for found in chosen:
        scores[found.name] = found.statistic(maps[found.method])
    return scores
