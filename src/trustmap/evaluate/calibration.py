"""Calibration: do predicted probabilities match how often the model is right?

Accuracy, NLL, Brier score, ECE and MCE of probabilities, the reliability table behind a
reliability diagram, and temperature scaling.

Temperature scaling of an ensemble (or MC dropout): there are no single logits, so pass the log
of the predictive distribution, ``prediction.mean_probs.clamp_min(1e-30).log()``, as "logits".
One temperature then acts on the log predictive: softmax(log p / T) is proportional to p**(1/T),
which sharpens (T < 1) or flattens (T > 1) the averaged distribution; members are not rescaled
one by one.
"""

from __future__ import annotations

import math
import warnings

import numpy.typing as npt
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from trustmap.errors import ConfigError, DataError

ArrayLike = torch.Tensor | npt.ArrayLike

TEMPERATURE_RANGE = (0.01, 100.0)
"""fit_temperature searches T in this interval (on a log scale)."""


def _matrix(values: ArrayLike, name: str) -> torch.Tensor:
    matrix = torch.as_tensor(values)
    if matrix.ndim != 2 or 0 in matrix.shape or not matrix.is_floating_point():
        raise DataError(f"{name} must be a non-empty float array [N, K], got {matrix.dtype} of "
                        f"shape {tuple(matrix.shape)}")
    bad = int((~torch.isfinite(matrix)).sum())
    if bad:
        raise DataError(f"{name} holds {bad} NaN or infinite value(s); for the log of "
                        "probabilities use probs.clamp_min(1e-30).log()")
    return matrix


def _labels(labels: ArrayLike, n: int, k: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise DataError(f"labels must have shape ({n},) to match the {n} rows, "
                        f"got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= k:
        raise DataError(f"labels must lie in [0, {k - 1}] for {k} classes, got values from "
                        f"{int(labels.min())} to {int(labels.max())}")
    return labels.long()


def _probs(probs: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    probs = _matrix(probs, "probs")
    sums = probs.double().sum(1)
    worst = int((sums - 1).abs().argmax())
    if (probs < 0).any() or abs(float(sums[worst]) - 1) > 1e-3:
        raise DataError(f"probs must be non-negative rows summing to 1 (row {worst} sums to "
                        f"{float(sums[worst]):.6g}); pass softmax probabilities, not logits")
    return probs, _labels(labels, *probs.shape)


def _binned(probs: torch.Tensor, labels: torch.Tensor, bins: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges [B+1] and per-bin count, summed confidence and summed correctness [B] (float64).

    Bins are (lower, upper] with the first one closed at 0. Confidences are compared with edges
    rounded to the probabilities' dtype, so a float32 confidence of 0.8 lands in the bin that
    ends at 12/15 = 0.8, as it does in float64.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    confidence, predicted = probs.max(1)
    edges = torch.arange(bins + 1, dtype=torch.float64) / bins
    index = torch.bucketize(confidence, edges[1:-1].to(probs.dtype))
    zeros = torch.zeros(bins, dtype=torch.float64)
    count = torch.bincount(index, minlength=bins).double()
    confidence_sum = zeros.index_add(0, index, confidence.double())
    correct_sum = zeros.index_add(0, index, (predicted == labels).double())
    return edges, count, confidence_sum, correct_sum


def calibration_metrics(probs: ArrayLike, labels: ArrayLike, bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL, Brier, ECE and MCE of probabilities [N, K] against labels [N].

    - ``nll``: mean of -log p_label, with p clamped at 1e-30 (as Prediction.from_probs does), so
      one probability of exactly 0 costs 69 nats instead of making the mean infinite.
    - ``brier``: mean over inputs of sum_k (p_k - onehot_k)^2, in [0, 2].
    - ``ece``: sum over bins of (n_b / N) |accuracy_b - confidence_b|, confidence = max_k p_k,
      ``bins`` equal-width bins (lower, upper] on [0, 1], the first including 0.
    - ``mce``: the largest |accuracy_b - confidence_b| over non-empty bins.
    """
    probs, labels = _probs(probs, labels)
    p = probs.double()
    p_label = p.gather(1, labels[:, None])[:, 0]
    onehot = F.one_hot(labels, p.shape[1]).double()
    _, count, confidence_sum, correct_sum = _binned(probs, labels, bins)
    gap = (correct_sum - confidence_sum).abs()
    return {
        "accuracy": float(correct_sum.sum() / len(p)),
        "nll": float(-p_label.clamp_min(1e-30).log().mean()),
        "brier": float(((p - onehot) ** 2).sum(1).mean()),
        "ece": float(gap.sum() / len(p)),
        "mce": float((gap / count)[count > 0].max()),
    }


def reliability_bins(probs: ArrayLike, labels: ArrayLike, bins: int = 15) -> pd.DataFrame:
    """One row per confidence bin (a reliability diagram): edges, confidence, accuracy, count.

    Empty bins keep their row with count 0 and NaN confidence and accuracy.
    """
    probs, labels = _probs(probs, labels)
    edges, count, confidence_sum, correct_sum = _binned(probs, labels, bins)
    return pd.DataFrame({
        "bin_lower": edges[:-1].numpy(),
        "bin_upper": edges[1:].numpy(),
        "confidence": (confidence_sum / count).numpy(),
        "accuracy": (correct_sum / count).numpy(),
        "count": count.long().numpy(),
    })


def apply_temperature(logits: ArrayLike, temperature: float) -> torch.Tensor:
    """softmax(logits / T): calibrated probabilities [N, K]."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}")
    return (_matrix(logits, "logits") / temperature).softmax(1)


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (held-out) labels.

    NLL is convex in 1/T, hence unimodal in log T, so a bounded Brent search on log T over
    TEMPERATURE_RANGE finds the minimum deterministically. The result never has a higher NLL on
    these labels than T = 1. Fit on data the model was not trained on: logits that separate
    their labels perfectly drive T towards 0, which ends at the range's bound with a warning.
    For an ensemble pass log(mean_probs) (module docstring).
    """
    logits = _matrix(logits, "logits").double()
    labels = _labels(labels, *logits.shape)

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    if result.fun > nll(0.0):
        return 1.0
    if min(result.x - low, high - result.x) < 0.01:
        warnings.warn(f"the fitted temperature {math.exp(result.x):.4g} is at the edge of "
                      f"TEMPERATURE_RANGE {TEMPERATURE_RANGE}; the NLL keeps falling beyond it, "
                      "as it does on data the model fits perfectly: fit on held-out data",
                      RuntimeWarning, stacklevel=2)
    return math.exp(result.x)
