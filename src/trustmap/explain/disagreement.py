"""How much the samples' explanations disagree, as scores judged like uncertainty measures.

A deep ensemble or an MC-dropout model has one map per sample [S, N, C, H, W]; when those
maps disagree the model's reasons are uncertain even where its probabilities agree (seed 000).
Each measure here reads the maps of one attribution method and returns [N] scores, higher =
more disagreement, so the OOD and adversarial tables can rank them beside entropy or mutual
information. The registry is a plain, explicit table: nothing registers itself on import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from trustmap.errors import ConfigError, did_you_mean
from trustmap.explain.aggregate import cosine_disagreement, rank_disagreement, seed000_uncertainty


@dataclass(frozen=True)
class DisagreementMeasure:
    """A score of the maps of every sample of one attribution method."""

    name: str
    definition: str
    method: str
    """The attribution method whose sample maps it reads."""
    statistic: Callable[[torch.Tensor], torch.Tensor]
    """[S, N, C, H, W] maps -> [N] scores."""
    needs_multiple_samples: bool = True


METHODS = ("gradcam", "gradient", "guided-backprop", "lrp-epsilon-plus")
"""Methods whose disagreement is measured."""


def _table() -> dict[str, DisagreementMeasure]:
    measures = [DisagreementMeasure(
        "gradcam_cv", "seed 000: mean over pixels of std/mean across the samples' min-max "
        "normalised Grad-CAM maps", "gradcam", seed000_uncertainty)]
    for method in METHODS:
        slug = method.replace("-", "_")
        measures += [
            DisagreementMeasure(f"{slug}_rank_disagreement", "1 - mean pairwise Spearman "
                                f"correlation of the samples' |{method}| maps", method,
                                rank_disagreement),
            DisagreementMeasure(f"{slug}_cosine_disagreement", "1 - mean pairwise cosine "
                                f"similarity of the samples' {method} maps", method,
                                cosine_disagreement)]
    return {measure.name: measure for measure in measures}


MEASURES: Mapping[str, DisagreementMeasure] = _table()
"""Every explanation-disagreement measure by name, in display order."""


def names() -> tuple[str, ...]:
    return tuple(MEASURES)


def by_method(selected: Iterable[str]) -> dict[str, list[str]]:
    """The named measures grouped by the method whose maps they read (each map set once)."""
    grouped: dict[str, list[str]] = {}
    for name in selected:
        if name not in MEASURES:
            raise ConfigError(f"unknown explanation-disagreement measure {name!r}"
                              f"{did_you_mean(name, MEASURES)}; known: {', '.join(MEASURES)}")
        grouped.setdefault(MEASURES[name].method, []).append(name)
    return grouped


def compute(maps: Mapping[str, torch.Tensor], selected: Iterable[str]) -> dict[str, torch.Tensor]:
    """Scores [N] of the named measures from the sample maps of their methods."""
    scores = {}
    for method, measures in by_method(selected).items():
        if method not in maps:
            raise ConfigError(f"measures {measures} read the {method!r} maps of every sample; "
                              f"pass them (trustmap.explain.attribute_samples)")
        for name in measures:
            scores[name] = MEASURES[name].statistic(maps[method])
    return scores
