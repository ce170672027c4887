"""Selective prediction: how the error rate falls as the most uncertain inputs are rejected.

A classifier that may abstain accepts the inputs it is least uncertain about (Geifman &
El-Yaniv, "Selective classification for deep neural networks", NeurIPS 2017). Accepting the k
lowest-uncertainty of N inputs gives coverage k / N and selective risk = errors among them / k;
the area under that risk-coverage curve (AURC, Geifman, Uziel & El-Yaniv, "Bias-reduced
uncertainty estimation for deep neural classifiers", ICLR 2019) summarises it, lower = better.

Ties are averaged, not broken: vote-based measures (variation ratio, ensemble disagreement) give
many inputs the same uncertainty, and an arbitrary order among them would make the curve depend
on sort stability. Every point is the expectation over a uniformly random order of tied inputs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from scipy.special import digamma

from trustmap.errors import DataError

ArrayLike = torch.Tensor | npt.ArrayLike


def _numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _correct(correct: ArrayLike) -> np.ndarray:
    mask = _numpy(correct)
    if mask.dtype != bool:
        raise DataError(f"correct must be a boolean array (True where the prediction is right), "
                        f"got dtype {mask.dtype}; pass e.g. predicted == labels")
    if mask.ndim != 1 or mask.size == 0:
        raise DataError(f"correct must be a non-empty 1-D array [N], got shape {mask.shape}")
    return mask


def _inputs(uncertainty: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Checked float64 uncertainty [N] and boolean correct [N], or a DataError saying why not."""
    mask = _correct(correct)
    scores = _numpy(uncertainty)
    if scores.dtype == bool or not np.issubdtype(scores.dtype, np.number):
        raise DataError(f"uncertainty must hold numeric scores, got dtype {scores.dtype}")
    if scores.shape != mask.shape:
        raise DataError(f"uncertainty has shape {scores.shape} but correct has shape "
                        f"{mask.shape}; they must describe the same inputs, one value each")
    scores = scores.astype(np.float64)
    bad = np.isnan(scores)
    if bad.any():
        raise DataError(f"uncertainty holds {int(bad.sum())} NaN score(s), the first at index "
                        f"{int(bad.argmax())}; a measure failed on those inputs, so they cannot "
                        "be ranked")
    return scores, mask


def risk_coverage(uncertainty: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk) [N] after accepting the k = 1..N least uncertain inputs.

    Highest uncertainty is rejected first (+inf is allowed: only the order matters). Within a
    tie group g of n_g inputs with e_g errors, preceded by E_g errors in lower groups, accepting
    r of the group gives expected errors E_g + r e_g / n_g over a uniformly random order of the
    tied inputs, while the count k is fixed, so risk(k) = (E_g + r e_g / n_g) / k exactly: the
    curve interpolates linearly in errors between group boundaries.
    """
    scores, mask = _inputs(uncertainty, correct)
    values, group, sizes = np.unique(scores, return_inverse=True, return_counts=True)
    errors = np.bincount(group, weights=~mask, minlength=len(values))
    starts = np.cumsum(sizes) - sizes  # inputs accepted before each group
    before = np.cumsum(errors) - errors  # errors accepted before each group
    accepted = np.arange(1, len(scores) + 1)
    g = np.sort(group)  # the group of the k-th accepted input
    expected = before[g] + (accepted - starts[g]) * errors[g] / sizes[g]
    return accepted / len(scores), expected / accepted


def aurc(uncertainty: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve: (1/N) sum_{k=1..N} risk(k), ties averaged."""
    return float(risk_coverage(uncertainty, correct)[1].mean())


def oracle_aurc(correct: ArrayLike) -> float:
    """The least AURC any score can reach on these predictions: every error rejected first.

    With C right of N, risk(k) = 0 for k <= C and (k - C) / k after, so
    AURC* = (1/N) sum_{k=C+1..N} (1 - C/k) = (N - C - C (H_N - H_C)) / N, with the harmonic
    numbers' difference H_N - H_C = digamma(N + 1) - digamma(C + 1).
    """
    mask = _correct(correct)
    n, c = len(mask), int(mask.sum())
    return float((n - c - c * (digamma(n + 1) - digamma(c + 1))) / n)


def selective_metrics(uncertainty: ArrayLike, correct: ArrayLike) -> dict[str, float]:
    """AURC, its oracle and excess, and the risk at 80%, 90% and full coverage.

    ``excess_aurc`` = aurc - oracle_aurc, the part a better score could remove (the oracle alone
    depends on accuracy). ``risk_at_80`` / ``risk_at_90``: the risk after accepting the fewest
    inputs that reach the coverage, k = ceil(0.8 N) / ceil(0.9 N), ties averaged as in
    ``risk_coverage``; ``full_coverage_risk`` is the error rate of all N.
    """
    risk = risk_coverage(uncertainty, correct)[1]
    n = len(risk)
    at = {percent: risk[-(-percent * n // 100) - 1] for percent in (80, 90)}  # ceil, integer
    area, oracle = float(risk.mean()), oracle_aurc(correct)
    return {
        "aurc": area,
        "oracle_aurc": oracle,
        "excess_aurc": area - oracle,
        "risk_at_80": float(at[80]),
        "risk_at_90": float(at[90]),
        "full_coverage_risk": float(risk[-1]),
    }
