"""Detection metrics: how well an uncertainty score separates two sets of inputs.

The positive class is the set a score should flag (OOD, adversarial or misclassified inputs), so
a useful score is higher on positives. AUROC, AUPR-in, AUPR-out and FPR at 95% TPR always come
together (DESIGN.md): AUROC alone hides both the base rate and the operating point.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from sklearn import config_context
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from trustmap.errors import DataError

ArrayLike = torch.Tensor | npt.ArrayLike


def _numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _scores(values: ArrayLike, name: str) -> np.ndarray:
    """A finite 1-D float64 copy of one set of scores, or a DataError naming what is wrong."""
    array = _numpy(values)
    if array.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of scores [N], got shape {array.shape}")
    if array.size == 0:
        raise DataError(f"{name} is empty, so there is only one class to tell apart; detection "
                        "needs at least one negative (in-distribution) and one positive score")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{name} must hold numeric scores, got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        raise DataError(f"{name} holds {int(bad.sum())} NaN or infinite score(s), the first at "
                        f"index {int(bad.argmax())}; a measure failed on those inputs")
    return array


def _labelled(scores_negative: ArrayLike, scores_positive: ArrayLike
              ) -> tuple[np.ndarray, np.ndarray]:
    negative = _scores(scores_negative, "scores_negative")
    positive = _scores(scores_positive, "scores_positive")
    is_positive = np.r_[np.zeros(len(negative), int), np.ones(len(positive), int)]
    return np.concatenate([negative, positive]), is_positive


def detection_metrics(scores_negative: ArrayLike, scores_positive: ArrayLike) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95% TPR of telling positives (higher score) apart.

    - ``auroc``: probability that a random positive scores above a random negative, ties 1/2.
    - ``aupr_out``: average precision with the positives (OOD) as the positive class.
    - ``aupr_in``: average precision with the negatives (in-distribution) as the positive class,
      ranked by the negated score.
    - ``fpr95``: an input is flagged when its score is >= a threshold t; t is the highest score
      at which at least 95% of positives are flagged (the ceil(0.95 P)-th largest positive
      score), and fpr95 is the fraction of negatives with score >= t. Every input tied at t is
      flagged, so negatives tied with that positive all count as false positives: no
      interpolation, the operating point a deterministic threshold can actually reach.
    """
    scores, is_positive = _labelled(scores_negative, scores_positive)
    # The arguments are checked above; sklearn's own checks of them took a fifth of the time
    # of a run's tables (thousands of rows), so they are skipped, not the computation.
    with config_context(skip_parameter_validation=True, assume_finite=True):
        # drop_intermediate=False keeps every distinct threshold, so the first point reaching
        # 95% TPR is the exact one described above rather than a later collinear corner.
        fpr, tpr, _ = roc_curve(is_positive, scores, drop_intermediate=False)
        return {
            "auroc": float(roc_auc_score(is_positive, scores)),
            "aupr_in": float(average_precision_score(1 - is_positive, -scores)),
            "aupr_out": float(average_precision_score(is_positive, scores)),
            "fpr95": float(fpr[np.argmax(tpr >= 0.95)]),
        }


def roc_points(scores_negative: ArrayLike, scores_positive: ArrayLike
               ) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve from (0, 0) to (1, 1), corners only, for figures."""
    scores, is_positive = _labelled(scores_negative, scores_positive)
    fpr, tpr, _ = roc_curve(is_positive, scores)
    return fpr, tpr


def misclassification_metrics(scores: ArrayLike, correct: ArrayLike) -> dict[str, float]:
    """Detection metrics for flagging wrong predictions: wrong = positive, right = negative."""
    values = _scores(scores, "scores")
    mask = _numpy(correct)
    if mask.dtype != bool:
        raise DataError(f"correct must be a boolean array (True where the prediction is right), "
                        f"got dtype {mask.dtype}; pass e.g. predicted == labels")
    if mask.shape != values.shape:
        raise DataError(f"correct has shape {mask.shape} but scores has shape {values.shape}; "
                        "they must describe the same inputs")
    if mask.all() or not mask.any():
        which = "correct" if mask.all() else "wrong"
        raise DataError(f"every one of the {len(mask)} predictions is {which}, so there is only "
                        "one class; misclassification detection needs right and wrong ones")
    return detection_metrics(values[mask], values[~mask])
