"""Uncertainty measures: one score per input from a Prediction's samples [S, N, K].

Every measure returns a float tensor [N] that holds what its name says, with natural logarithms
(nats): ``msp`` is the maximum probability (higher = more confident), a variance is >= 0. Most
measures rise with uncertainty; those that fall with it carry ``as_uncertainty``, the score that
rises with it, which detection metrics rank by (``uncertainty_scores``). Measures live in a
registry so that the report and the CLI list, describe and compute them the same way. Measures
of how much the samples' explanations disagree read maps, not probabilities:
``trustmap.explain.disagreement``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from trustmap.errors import ConfigError, DataError, did_you_mean
from trustmap.predictive import Prediction


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis; xlogy makes 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def msp(prediction: Prediction) -> torch.Tensor:
    """The maximum softmax probability of the predictive distribution (Hendrycks & Gimpel 2017)."""
    return prediction.mean_probs.max(1).values


def entropy(prediction: Prediction) -> torch.Tensor:
    """Predictive entropy: total uncertainty, H of the averaged probabilities."""
    return _entropy(prediction.mean_probs)


def expected_entropy(prediction: Prediction) -> torch.Tensor:
    """Mean entropy of the samples: the aleatoric part of the predictive entropy."""
    return _entropy(prediction.sample_probs).mean(0)


def mutual_information(prediction: Prediction) -> torch.Tensor:
    """Entropy minus expected entropy: how much the samples disagree (epistemic part).

    Mathematically >= 0 (Jensen); rounding can leave values like -1e-8, which are clamped to 0.
    """
    return (entropy(prediction) - expected_entropy(prediction)).clamp_min(0)


def variation_ratio(prediction: Prediction) -> torch.Tensor:
    """Share of samples that did not vote for the modal class."""
    return 1 - prediction.vote_ratio.to(prediction.mean_probs.dtype)


def class_variance(prediction: Prediction) -> torch.Tensor:
    """Population variance over samples of the probability of the predicted class."""
    index = prediction.predicted[None, :, None]
    return torch.take_along_dim(prediction.sample_probs, index, dim=2)[..., 0].var(0, correction=0)


def softmax_variance(prediction: Prediction) -> torch.Tensor:
    """Population variance over classes of the averaged probabilities.

    Seed 000's "variance of the softmax vector" (np.var over the K outputs of one model): high
    for confident predictions, so it is ranked negated.
    """
    return prediction.mean_probs.var(1, correction=0)


def energy(prediction: Prediction) -> torch.Tensor:
    """Energy score -logsumexp of the sample-averaged logits (Liu et al. 2020).

    It reads logits, not probabilities: on a Prediction built with ``from_probs`` and S = 1 it is
    0 for every input, so use it only with a model's own logits.
    """
    return -torch.logsumexp(prediction.sample_logits.mean(0), dim=1)


@dataclass(frozen=True)
class Measure:
    """A registered uncertainty measure and what a report needs to show it honestly.

    ``needs_multiple_samples`` marks measures that are degenerate for S = 1 (constant, or equal to
    another measure): they are still computed, and a report can grey them out.
    ``as_uncertainty`` is given for measures that fall as uncertainty rises (``msp``): the score
    that rises with it, the one detection ranks inputs by.
    """

    name: str
    definition: str
    compute: Callable[[Prediction], torch.Tensor]
    needs_multiple_samples: bool
    as_uncertainty: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def higher_means(self) -> str:
        """What a higher value says about the input, for tables and figures."""
        return LESS_TRUSTWORTHY if self.as_uncertainty is None else MORE_TRUSTWORTHY

    def uncertainty(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` of this measure as a score that rises with uncertainty."""
        return values if self.as_uncertainty is None else self.as_uncertainty(values)


LESS_TRUSTWORTHY = "less trustworthy"
MORE_TRUSTWORTHY = "more trustworthy"


_REGISTRY: dict[str, Measure] = {}
MEASURES: Mapping[str, Measure] = MappingProxyType(_REGISTRY)
"""Read-only, live view of the registered measures by name, in registration order."""


def register(measure: Measure) -> Measure:
    """Add a measure to the registry; a name can be registered only once."""
    if not isinstance(measure, Measure):
        raise ConfigError(f"register() takes a Measure, got {type(measure).__name__}")
    if measure.name in _REGISTRY:
        raise ConfigError(f"an uncertainty measure named {measure.name!r} is already "
                          "registered; give the new measure another name")
    _REGISTRY[measure.name] = measure
    return measure


def names() -> tuple[str, ...]:
    """Names of the registered measures, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Measure:
    """The measure called ``name``; an unknown name gets the closest match as a hint."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ConfigError(f"unknown uncertainty measure {name!r}{did_you_mean(name, _REGISTRY)}; "
                      f"known measures: {', '.join(_REGISTRY)}")


def _check(prediction: Prediction) -> None:
    logits = prediction.sample_logits
    if logits.ndim != 3 or 0 in logits.shape or not logits.is_floating_point():
        raise DataError("prediction.sample_logits must be a non-empty float tensor [S, N, K]; "
                        f"got {logits.dtype} of shape {tuple(logits.shape)}")


def compute(prediction: Prediction, names: Iterable[str] | None = None
            ) -> dict[str, torch.Tensor]:
    """Scores [N] of the named measures (default: every registered one), keyed by name."""
    selected = list(_REGISTRY.values()) if names is None else [get(n) for n in names]
    _check(prediction)
    return {measure.name: measure.compute(prediction) for measure in selected}


def higher_means(name: str) -> str:
    """What a higher value of the score ``name`` says; scores not registered here (explanation
    disagreement) rise with uncertainty."""
    return _REGISTRY[name].higher_means if name in _REGISTRY else LESS_TRUSTWORTHY


def uncertainty_scores(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every score as one that rises with uncertainty (``Measure.uncertainty``); scores not
    registered here (explanation disagreement) already do."""
    return {name: _REGISTRY[name].uncertainty(values) if name in _REGISTRY else values
            for name, values in scores.items()}


for _measure in (
    Measure("msp", "max_k p_k of the mean probabilities p = mean_s p_s; ranked as 1 - max_k p_k",
            msp, False, lambda values: 1 - values),
    Measure("entropy", "H(p) = -sum_k p_k log p_k of the mean probabilities p", entropy, False),
    Measure("expected_entropy", "mean_s H(p_s), the average entropy of the samples",
            expected_entropy, True),
    Measure("mutual_information", "H(mean_s p_s) - mean_s H(p_s), disagreement of the samples",
            mutual_information, True),
    Measure("variation_ratio", "1 - (votes for the modal class) / S", variation_ratio, True),
    Measure("class_variance", "Var_s p_s[c] with c = argmax_k p_k (population variance)",
            class_variance, True),
    Measure("softmax_variance", "Var_k p_k of the mean probabilities (population variance); "
            "ranked negated", softmax_variance, False, torch.neg),
    Measure("energy", "-log sum_k exp(mean_s z_sk) of the sample-averaged logits z",
            energy, False),
):
    register(_measure)
