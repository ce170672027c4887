"""Split conformal prediction sets: a set of classes per input that holds the true class for at
least 1 - alpha of inputs, whatever the model, from probabilities [N, K] alone.

A held-out calibration split of labelled inputs gives one conformity score per input (higher =
the true class looks less plausible); the threshold is their ceil((n + 1)(1 - alpha))-th
smallest value, and a new input's set holds every class whose score is within it. Because
calibration and new inputs are exchangeable, the true class's score is within the threshold with
probability >= 1 - alpha (Vovk et al. 2005; Angelopoulos and Bates 2021, arXiv:2107.07511).
The guarantee is marginal, over inputs: a class or a kind of input can be covered less often.

- ``lac``: score 1 - p_y. The smallest sets on average, but hard inputs are covered less
  often than easy ones (Sadinle, Lei and Wasserman, JASA 2019).
- ``aps``: score = mass of the classes ranked above y + U p_y, U ~ Uniform(0, 1); sets grow
  with the model's uncertainty (Romano, Sesia and Candès, NeurIPS 2020).
- ``raps``: the APS score + lam (rank of y - k_reg)^+, which keeps classes past the first
  k_reg from entering on their small, noisy probabilities: smaller, steadier sets (Angelopoulos,
  Bates, Malik and Jordan, ICLR 2021).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy.typing as npt
import torch

from trustmap.errors import ConfigError, DataError, did_you_mean

ArrayLike = torch.Tensor | npt.ArrayLike

METHODS = ("lac", "aps", "raps")
"""Conformity scores calibrate knows; see the module docstring."""


@dataclass(frozen=True)
class Calibrated:
    """A calibrated threshold and what it applies to; ``prediction_sets`` turns it into sets.

    ``threshold`` is +inf where the calibration split is too small for ``alpha`` (every set then
    holds every class); ``n`` is the calibration split's size and ``num_classes`` its K, which
    new probabilities must have. ``k_reg`` and ``lam`` are the penalties used (0 except for
    raps), and ``randomized`` is False for lac, whose score has no U.
    """

    method: str
    alpha: float
    threshold: float
    n: int
    num_classes: int
    randomized: bool
    k_reg: int
    lam: float


def calibrate(probs: ArrayLike, labels: ArrayLike, alpha: float, method: str = "aps", *,
              classes: Sequence[str] | None = None, randomized: bool = True, k_reg: int = 1,
              lam: float = 0.01, generator: torch.Generator | None = None) -> Calibrated:
    """The threshold for sets that miss the true class for at most ``alpha`` of inputs.

    ``probs`` [n, K] and ``labels`` [n] are a calibration split that played no part in
    training or model selection. ``classes`` (K names), when given, makes a split that lacks a
    class an error, since its sets would be calibrated on no input of it.

    APS and RAPS draw U from ``generator`` (one per input, here and in ``prediction_sets``).
    U spreads each class's probability mass over an interval, so scores do not tie and
    coverage is exactly 1 - alpha, up to 1 / (n + 1); a set can then be empty. With
    ``randomized=False`` scores take U = 1 (the mass up to and including y) and sets keep the
    class that crosses the threshold (as the RAPS paper's code, and MAPIE's
    ``include_last_label=True``): never empty and still >= 1 - alpha, but often well above it,
    so sets are larger. On a confident model the APS threshold nears 1 and such sets take
    most classes (a 98%-accurate MNIST ensemble at alpha = 0.1: coverage 1.0, 4.4 classes,
    against 0.90 and 0.94 randomized); RAPS's penalty keeps them small.
    """
    alpha = _alpha(alpha)
    method = _method(method)
    if isinstance(k_reg, bool) or not isinstance(k_reg, Integral) or k_reg < 0:
        raise ConfigError(f"k_reg must be an integer >= 0 (the number of top classes RAPS "
                          f"leaves unpenalised, e.g. 1), got {k_reg!r}")
    if isinstance(lam, bool) or not isinstance(lam, Real) or not 0 <= lam < math.inf:
        raise ConfigError(f"lam must be a finite number >= 0 (RAPS's penalty per class past "
                          f"k_reg, e.g. 0.01), got {lam!r}")
    p = _probs(probs)
    n, k = p.shape
    labels = _labels(labels, n, k, "calibration labels").to(p.device)
    if classes is not None:
        _check_classes(classes, k)
        counts = torch.bincount(labels, minlength=k).tolist()
        missing = [name for name, count in zip(classes, counts, strict=True) if count == 0]
        if missing:
            raise DataError(f"the calibration split ({n} inputs) has no input of class(es) "
                            f"{', '.join(map(repr, missing))}; their class-conditional figures "
                            "would be empty: use a larger calibration split")
    randomized = randomized and method != "lac"
    if method != "raps":
        k_reg, lam = 0, 0.0
    u = torch.rand(n, 1, generator=generator, dtype=p.dtype, device=p.device) if randomized else 1
    scores = _scores(p, method, k_reg, lam, u).gather(1, labels[:, None])[:, 0]
    rank = math.ceil((n + 1) * (1 - alpha))
    if rank > n:
        enough = next(m for m in itertools.count(max(1, math.floor((1 - alpha) / alpha) - 1))
                      if math.ceil((m + 1) * (1 - alpha)) <= m)
        warnings.warn(f"a calibration split of n={n} inputs is too small for alpha={alpha}: "
                      f"ceil((n + 1)(1 - alpha)) = {rank} > n, so the threshold is +inf and "
                      f"every prediction set holds every class; use n >= {enough} calibration "
                      "inputs or a larger alpha", stacklevel=2)
        threshold = math.inf
    else:
        threshold = float(scores.kthvalue(rank).values)
    return Calibrated(method, alpha, threshold, n, k, randomized, int(k_reg), float(lam))


def prediction_sets(calibrated: Calibrated, probs: ArrayLike, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool [M, K]: True where a class is in an input's set.

    Randomized APS and RAPS draw one U per input from ``generator``, shared by its classes.
    """
    p = _probs(probs)
    if p.shape[1] != calibrated.num_classes:
        raise DataError(f"probs have {p.shape[1]} classes but were calibrated on "
                        f"{calibrated.num_classes}: pass the same model's probabilities")
    method, q = _method(calibrated.method), calibrated.threshold
    if method == "lac":
        return 1 - p <= q
    if calibrated.randomized:
        u = torch.rand(len(p), 1, generator=generator, dtype=p.dtype, device=p.device)
        return _scores(p, method, calibrated.k_reg, calibrated.lam, u) <= q
    # Scores rise along the ranking, so the classes within q come first; keep the next one too.
    ranked, order = _ranked_scores(p, calibrated.k_reg, calibrated.lam, 1)
    keep = torch.cat([torch.ones_like(ranked[:, :1], dtype=torch.bool), ranked[:, :-1] <= q], 1)
    return _unsort(keep, order)


def set_summary(sets: ArrayLike, labels: ArrayLike, classes: Sequence[str]
                ) -> dict[str, float | dict[str, float]]:
    """Coverage and size of prediction sets [M, K] against labels [M], overall and by class.

    ``coverage``: share of sets holding the true class; ``mean_size``: mean number of classes;
    ``empty``: share of empty sets; ``size_by_class`` and ``coverage_by_class``: the same among
    inputs of each true class (NaN for a class with no input), since marginal coverage can hide
    a class that is covered far less often.
    """
    sets = torch.as_tensor(sets)
    if sets.dtype != torch.bool or sets.ndim != 2 or 0 in sets.shape:
        raise DataError(f"sets must be a non-empty bool array [M, K] (from prediction_sets), "
                        f"got {sets.dtype} of shape {tuple(sets.shape)}")
    m, k = sets.shape
    _check_classes(classes, k)
    labels = _labels(labels, m, k, "labels").to(sets.device)
    covered = sets.gather(1, labels[:, None])[:, 0].double()
    size = sets.sum(1).double()
    count = torch.bincount(labels, minlength=k).double()

    def by_class(values: torch.Tensor) -> dict[str, float]:
        means = torch.zeros_like(count).index_add(0, labels, values) / count
        return dict(zip(classes, means.tolist(), strict=True))

    return {"coverage": float(covered.mean()), "mean_size": float(size.mean()),
            "empty": float((size == 0).double().mean()), "size_by_class": by_class(size),
            "coverage_by_class": by_class(covered)}


def _scores(p: torch.Tensor, method: str, k_reg: int, lam: float,
            u: torch.Tensor | float) -> torch.Tensor:
    """The conformity score [N, K] every class would have as the label."""
    if method == "lac":
        return 1 - p
    return _unsort(*_ranked_scores(p, k_reg, lam, u))


def _ranked_scores(p: torch.Tensor, k_reg: int, lam: float, u: torch.Tensor | float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """RAPS scores in each row's descending order of p, and that order (APS where lam = 0).

    The r-th class scores (mass ranked above it) + u p_r + lam (r - k_reg)^+, summed in float64
    so that mass near 1 keeps its precision.
    """
    ranked, order = p.sort(dim=1, descending=True, stable=True)
    mass = ranked.cumsum(1)
    above = torch.cat([torch.zeros_like(mass[:, :1]), mass[:, :-1]], 1)
    rank = torch.arange(1, p.shape[1] + 1, dtype=p.dtype, device=p.device)
    return above + u * ranked + lam * (rank - k_reg).clamp_min(0), order


def _unsort(ranked: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Values given in ranked order back in class order."""
    return torch.empty_like(ranked).scatter_(1, order, ranked)


def _alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must be a number in (0, 1), the share of sets allowed to miss "
                          f"the true class (0.1 for 90% coverage), got {alpha!r}")
    return float(alpha)


def _method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown conformal method {method!r}{did_you_mean(method, METHODS)}; "
                          f"choose one of {', '.join(METHODS)}")
    return method


def _probs(probs: ArrayLike) -> torch.Tensor:
    """Probabilities [N, K] as float64, checked to be finite, non-negative rows summing to 1."""
    p = torch.as_tensor(probs)
    if p.ndim != 2 or 0 in p.shape or not p.is_floating_point():
        raise DataError(f"probs must be a non-empty float array [N, K] of probabilities, got "
                        f"{p.dtype} of shape {tuple(p.shape)}")
    p = p.double()
    bad = int((~torch.isfinite(p)).sum())
    if bad:
        raise DataError(f"probs hold {bad} NaN or infinite value(s); pass the model's finite "
                        "softmax probabilities")
    sums = p.sum(1)
    worst = int((sums - 1).abs().argmax())
    if (p < 0).any() or abs(float(sums[worst]) - 1) > 1e-4:
        raise DataError(f"probs must be non-negative rows summing to 1 within 1e-4 (row {worst} "
                        f"sums to {float(sums[worst]):.6g}, smallest value {float(p.min()):.3g})"
                        "; pass softmax probabilities, not logits")
    return p


def _labels(labels: ArrayLike, n: int, k: int, name: str) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"{name} must be integer class indices, got dtype {labels.dtype}; "
                        "convert them with .long()")
    if labels.shape != (n,):
        raise DataError(f"{name} must have shape ({n},) to match the {n} rows of probs, got "
                        f"{tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= k:
        raise DataError(f"{name} must lie in [0, {k - 1}] for {k} classes, got values from "
                        f"{int(labels.min())} to {int(labels.max())}; drop unlabelled inputs "
                        "(label -1) first")
    return labels.long()


def _check_classes(classes: Sequence[str], k: int) -> None:
    if len(classes) != k:
        raise DataError(f"classes must name the {k} classes of probs in order, got "
                        f"{len(classes)} names")
