"""What a run does with its scores beyond detection: conformal prediction sets, selective
prediction (risk against coverage) and one combined trust score, each as tables.

Every fit here is made on data the tables do not score: conformal thresholds on a seeded
calibration share of the ID test set (coverage is measured on the rest), the combined score on
the ID validation split and on the OOD sets other than the one it is scored on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from trustmap.data import Dataset
from trustmap.errors import DataError
from trustmap.evaluate import conformal
from trustmap.evaluate.combine import leave_one_out
from trustmap.evaluate.selective import selective_metrics
from trustmap.predictive import Prediction
from trustmap.studies.settings import ConformalSettings


def calibration_mask(test: Dataset, fraction: float, seed: int) -> torch.Tensor:
    """Bool [N]: the seeded share of the ID test set the conformal thresholds are calibrated
    on, drawn per class (at least one image of a class on each side where it has two), so
    neither side misses a class; DataError, before anything is trained, where one does."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(test), dtype=torch.bool)
    for label in test.labels.unique():  # a loop over classes, not samples
        members = (test.labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        take = min(max(round(fraction * len(members)), 1), max(len(members) - 1, 1))
        mask[members[:take]] = True
    present = torch.bincount(test.labels[mask], minlength=test.num_classes)
    missing = [test.classes[k] for k in (present == 0).nonzero().flatten().tolist()]
    if missing:
        raise DataError(f"the conformal calibration share of the {len(test)} test images of "
                        f"{test.name!r} holds no image of class "
                        f"{', '.join(map(repr, missing))}, which the test images lack; add "
                        "images of it, or set conformal.methods = [] to make no sets")
    return mask


def set_column(method: str, alpha: float) -> str:
    """The per-sample column holding each input's prediction set (class names)."""
    return f"conformal_{method}_{alpha:g}"


def conformal_sets(settings: ConformalSettings, seed: int, id_name: str, mask: torch.Tensor,
                   labels: torch.Tensor, classes: Sequence[str],
                   predictions: Mapping[str, Mapping[str, Prediction]]
                   ) -> tuple[dict[str, dict[str, dict[str, torch.Tensor]]], pd.DataFrame,
                              pd.DataFrame]:
    """Prediction sets of every set under every predictive, method and alpha, calibrated on
    ``mask`` of the ID test set; the coverage table (held-out ID rows, and the mean set size on
    every other set) and the table of coverage and size by class."""
    sets: dict[str, dict[str, dict[str, torch.Tensor]]] = {n: {} for n in predictions}
    rows, by_class = [], []
    held = ~mask
    for kind in predictions[id_name]:
        probs = predictions[id_name][kind].mean_probs.double()
        for method in settings.methods:
            for alpha in settings.alpha:
                generator = torch.Generator().manual_seed(seed)
                fitted = conformal.calibrate(probs[mask], labels[mask], alpha, method,
                                             classes=classes, generator=generator)
                column = set_column(method, alpha)
                for name, by_kind in predictions.items():
                    made = conformal.prediction_sets(fitted, by_kind[kind].mean_probs.double(),
                                                     generator=generator)
                    sets[name].setdefault(kind, {})[column] = made
                    if name == id_name:
                        summary = conformal.set_summary(made[held], labels[held], classes)
                        role = "id (held out)"
                    else:
                        summary = {"coverage": None, "mean_size": float(made.sum(1).double()
                                                                        .mean()),
                                   "empty": float((made.sum(1) == 0).double().mean())}
                        role = "other"
                    rows.append({"set": name, "role": role, "predictive": kind,
                                 "method": method, "alpha": alpha,
                                 "target": 1 - alpha, "threshold": fitted.threshold,
                                 "n_calibration": fitted.n, "coverage": summary["coverage"],
                                 "mean_size": summary["mean_size"], "empty": summary["empty"]})
                    if name == id_name:
                        by_class += [{"predictive": kind, "method": method, "alpha": alpha,
                                      "class": c, "coverage": summary["coverage_by_class"][c],
                                      "mean_size": summary["size_by_class"][c]}
                                     for c in classes]
    return sets, pd.DataFrame(rows), pd.DataFrame(by_class)


def selective_table(labels: torch.Tensor, predictions: Mapping[str, Prediction],
                    ranked: Mapping[str, Mapping[str, torch.Tensor]]) -> pd.DataFrame:
    """AURC (with the oracle's beside it) of every score under every predictive on the ID
    test set: reject the least trustworthy inputs first, measure the error of the rest."""
    rows = []
    for kind, prediction in predictions.items():
        correct = prediction.predicted.cpu() == labels
        for measure, values in ranked[kind].items():
            rows.append({"predictive": kind, "measure": measure,
                         **selective_metrics(values, correct)})
    return pd.DataFrame(rows)


def combined_table(id_validation: Mapping[str, Mapping[str, torch.Tensor]],
                   id_test: Mapping[str, Mapping[str, torch.Tensor]],
                   ood: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]],
                   kinds: Sequence[str]) -> pd.DataFrame:
    """Per predictive, the combined scores against the best single one, leave-one-OOD-set-out
    (``combine.leave_one_out``); empty with fewer than two OOD sets (nothing to fit on)."""
    if len(ood) < 2:
        return pd.DataFrame()
    frames = []
    for kind in kinds:
        names = [n for n in id_test[kind] if n in id_validation[kind]]
        frame = leave_one_out({n: id_validation[kind][n] for n in names},
                              {n: id_test[kind][n] for n in names},
                              {s: {n: scores[kind][n] for n in names}
                               for s, scores in ood.items()})
        frames.append(frame.assign(predictive=kind))
    return pd.concat(frames, ignore_index=True)
