"""One trust score from several: output-space measures, feature detectors, explanation disagreement.

Scores live on unrelated scales (entropy in nats, Mahalanobis distances in the thousands, rank
correlations in [-1, 1]), so they are put on a common one before they are combined, and every
combination is fitted on held-out data only: the ID validation split, and for the logistic
combination OOD sets other than the one it is tested on. All scores are higher = more likely OOD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from trustmap.errors import DataError
from trustmap.evaluate.ood import detection_metrics

Scores = Mapping[str, torch.Tensor]


def _table(scores: Scores, what: str, names: list[str] | None = None) -> np.ndarray:
    """Float64 [N, K] with one column per name (in ``names``' order), or a DataError."""
    if not scores:
        raise DataError(f"{what} holds no scores; pass a mapping of score name -> tensor [N]")
    if names is not None and set(scores) != set(names):
        missing, extra = sorted(set(names) - set(scores)), sorted(set(scores) - set(names))
        raise DataError(f"{what} must hold the same score names as the other sets, "
                        f"{sorted(names)}; missing {missing}, unexpected {extra}")
    columns = []
    for name in names if names is not None else list(scores):
        values = scores[name]
        array = (values.detach().cpu().numpy() if isinstance(values, torch.Tensor)
                 else np.asarray(values))
        if array.ndim != 1 or array.size == 0:
            raise DataError(f"{what}[{name!r}] must be a non-empty 1-D tensor of scores [N], "
                            f"got shape {array.shape}")
        if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
            raise DataError(f"{what}[{name!r}] must hold numeric scores, got dtype {array.dtype}")
        bad = ~np.isfinite(array)
        if bad.any():
            raise DataError(f"{what}[{name!r}] holds {int(bad.sum())} NaN or infinite score(s), "
                            f"the first at index {int(bad.argmax())}; that measure failed on "
                            "those inputs: fix or drop it before combining")
        columns.append(array.astype(np.float64))
    lengths = {len(column) for column in columns}
    if len(lengths) > 1:
        raise DataError(f"the scores in {what} have different lengths {sorted(lengths)}; each "
                        "must score the same inputs, one value per input")
    return np.stack(columns, axis=1)


def rank_average(reference: Scores, scores: Scores) -> torch.Tensor:
    """Mean over the names of each score's empirical CDF on the reference (ID validation) set.

    Parameter-free: score s of name j maps to F_j(s) = (#{ref_j < s} + #{ref_j = s} / 2) / n_j,
    the fraction of reference values below it, ties counting half, so every name contributes on
    the same [0, 1] scale whatever its units. Returns float64 [N].
    """
    names = list(reference)
    ref = np.sort(_table(reference, "reference"), axis=0)
    values = _table(scores, "scores", names)
    below = np.stack([np.searchsorted(ref[:, j], values[:, j], side="left")
                      for j in range(len(names))], axis=1)
    at_most = np.stack([np.searchsorted(ref[:, j], values[:, j], side="right")
                        for j in range(len(names))], axis=1)
    return torch.from_numpy(((below + at_most) / (2 * len(ref))).mean(axis=1))


@dataclass
class LogisticCombination:
    """A fitted logistic regression on standardised scores.

    A dataclass rather than an sklearn Pipeline: the standardisation uses the ID statistics
    only (not the pooled ID + OOD ones a StandardScaler would fit), and keeping it next to the
    model means scoring cannot skip it, while ``weights`` stays readable per name.
    """

    names: list[str]
    mean: np.ndarray  # [K], ID mean of each score
    std: np.ndarray  # [K], ID std of each score; 1 for a score constant on the ID set
    model: LogisticRegression

    def score(self, scores: Scores) -> torch.Tensor:
        """The decision function w . (s - mean) / std + b, float64 [N], higher = more OOD."""
        values = _table(scores, "scores", self.names)
        return torch.from_numpy(self.model.decision_function((values - self.mean) / self.std))

    @property
    def weights(self) -> dict[str, float]:
        """Each name's coefficient on its standardised score (per ID standard deviation)."""
        return dict(zip(self.names, self.model.coef_[0].tolist(), strict=True))


def fit_logistic(id_scores: Scores, ood_scores: Scores) -> LogisticCombination:
    """Logistic regression of OOD (1) vs. ID (0) on the scores standardised by the ID statistics.

    Each score becomes (s - mean_ID) / std_ID, so the weights compare per ID standard deviation;
    a score constant on the ID set keeps std 1 (only centred), since dividing by 0 is undefined.
    L2 penalty with C = 1.0 (sklearn's default penalty) keeps the weights finite when a score
    separates the classes perfectly; class_weight="balanced" keeps the set sizes from setting
    the intercept. (lbfgs draws no random numbers: the fit is deterministic.)
    """
    names = list(id_scores)
    negative = _table(id_scores, "id_scores")
    positive = _table(ood_scores, "ood_scores", names)
    mean, std = negative.mean(axis=0), negative.std(axis=0)
    std[std == 0] = 1.0
    features = (np.concatenate([negative, positive]) - mean) / std
    labels = np.r_[np.zeros(len(negative), int), np.ones(len(positive), int)]
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    return LogisticCombination(names, mean, std, model.fit(features, labels))


def leave_one_out(id_validation: Scores, id_test: Scores, ood: Mapping[str, Scores]
                  ) -> pd.DataFrame:
    """Each OOD set held out in turn: do the combinations beat the best single score on it?

    For held-out set O, the logistic combination is fitted on ``id_validation`` (negatives) vs.
    the union of every other OOD set (positives), never on O or ``id_test``; ``rank_average``
    uses ``id_validation`` as its reference; both are scored on ``id_test`` vs. O. The best
    single score is the name with the highest AUROC on ``id_test`` vs. O itself, chosen on the
    test data (the first name on a tie), so it is an optimistic bar that no deployable choice
    reaches.

    Rows per held-out set: methods "best single: <name>", "rank average" and "logistic", with
    ``detection_metrics``' auroc, aupr_in, aupr_out, fpr95, and ``beats_best_single`` =
    auroc > the best single score's auroc (so False on the best single row itself).
    """
    if len(ood) < 2:
        raise DataError(f"leave_one_out needs at least two OOD sets, got {len(ood)} "
                        f"({sorted(ood)}): the logistic combination for a held-out set is "
                        "fitted on the other sets, so add another OOD set")
    names = list(id_validation)
    validation = _table(id_validation, "id_validation")
    test = _table(id_test, "id_test", names)
    tables = {key: _table(scores, f"ood[{key!r}]", names) for key, scores in ood.items()}

    def columns(table: np.ndarray) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(column) for name, column in zip(names, table.T, strict=True)}

    rows = []
    for held_out, positive in tables.items():
        others = np.concatenate([table for key, table in tables.items() if key != held_out])
        logistic = fit_logistic(columns(validation), columns(others))
        singles = {name: detection_metrics(test[:, j], positive[:, j])
                   for j, name in enumerate(names)}
        best = max(singles, key=lambda name: singles[name]["auroc"])
        methods = {
            f"best single: {best}": singles[best],
            "rank average": detection_metrics(rank_average(id_validation, columns(test)),
                                              rank_average(id_validation, columns(positive))),
            "logistic": detection_metrics(logistic.score(columns(test)),
                                          logistic.score(columns(positive))),
        }
        rows += [{"held_out": held_out, "method": method, **metrics,
                  "beats_best_single": metrics["auroc"] > singles[best]["auroc"]}
                 for method, metrics in methods.items()]
    return pd.DataFrame(rows)
