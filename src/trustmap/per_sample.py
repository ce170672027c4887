"""The per-sample table: one row per input and predictive, the same for ``run`` and ``predict``.

Columns, in this order:

- ``set`` (the test set's name), ``role`` (``id``, ``ood``, ``adversarial`` or ``noise``, the
  same-norm noise control of an adversarial set), ``attack``, ``epsilon``, ``attacked`` (null
  outside adversarial and noise sets), ``index`` (the input's place in its set);
- ``predictive``; ``label`` (null where the set has no labels in the model's classes, such as an
  OOD set or unlabelled images), ``label_name`` (the set's own class name where it has one),
  ``pred``, ``pred_name``, ``correct`` (null without a label), ``confidence`` (mean probability
  of the predicted class), ``vote_ratio`` (share of samples voting for the modal class);
- ``p_<class>``: the mean probability of every class of the model;
- every measure, named as what it holds (``msp`` is max p; a variance is >= 0), feature
  detectors included;
- where the run made conformal prediction sets, ``conformal_<method>_<alpha>``: the class names
  in each input's set (a list), and ``conformal_calibration``: whether the ID input was one the
  thresholds were calibrated on (null outside the ID set).

What a higher value of each measure says ("less trustworthy" or "more trustworthy") is recorded
once, in the table's metadata (``frame.attrs["trustmap"]``, kept by parquet), with the model's
classes and the ID set; detection metrics read it through ``trustmap.uncertainty``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from trustmap.predictive import Prediction
from trustmap.uncertainty import higher_means

ROLES = ("id", "ood", "adversarial", "noise")
KEY_COLUMNS = ("set", "role", "attack", "epsilon", "attacked", "index", "predictive")
PREDICTION_COLUMNS = ("label", "label_name", "pred", "pred_name", "correct", "confidence",
                      "vote_ratio")
METADATA = "trustmap"


def probability_column(class_name: str) -> str:
    """The column of the mean probability of one of the model's classes."""
    return f"p_{class_name}"


def rows(set_name: str, role: str, *, labels: torch.Tensor | None, label_names: Sequence[str],
         classes: Sequence[str], predictions: Mapping[str, Prediction],
         scores: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
         attack: Mapping[str, Any] | None = None,
         class_sets: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
         calibration: torch.Tensor | None = None) -> pd.DataFrame:
    """The rows of one set under every predictive of ``predictions``.

    ``labels`` are indices into the model's ``classes`` (None where the set has none of them:
    an OOD or unlabelled set); ``label_names`` are the set's own name for each input ("" where
    it has none). ``scores[predictive][measure]`` are the measures' values; ``attack`` holds
    ``attack``, ``epsilon`` and ``attacked`` of an adversarial or noise set.
    ``class_sets[predictive][column]`` are bool [N, K] prediction sets, written as lists of
    class names; ``calibration`` (bool [N]) marks the inputs they were calibrated on.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    frames = []
    names = np.asarray(list(classes), dtype=object)
    own = pd.array([name or None for name in label_names], dtype="string")
    for kind, prediction in predictions.items():
        n = prediction.mean_probs.shape[0]
        predicted = prediction.predicted.cpu()
        probs = prediction.mean_probs.cpu()
        columns: dict[str, Any] = {
            "set": set_name, "role": role,
            "attack": (attack or {}).get("attack"), "epsilon": (attack or {}).get("epsilon"),
            "attacked": (attack or {}).get("attacked"),
            "index": np.arange(n), "predictive": kind,
            "label": pd.array(labels.cpu().numpy() if labels is not None else [None] * n,
                              dtype="Int64"),
            "label_name": own,
            "pred": predicted.numpy(), "pred_name": names[predicted.numpy()],
            "correct": pd.array((predicted == labels.cpu()).numpy() if labels is not None
                                else [None] * n, dtype="boolean"),
            "confidence": probs.gather(1, predicted[:, None])[:, 0].numpy(),
            "vote_ratio": prediction.vote_ratio.cpu().numpy(),
        }
        columns |= {probability_column(c): probs[:, k].numpy() for k, c in enumerate(classes)}
        columns |= {m: v.cpu().numpy() for m, v in ((scores or {}).get(kind) or {}).items()}
        columns |= {c: _names_in(v, names) for c, v in ((class_sets or {}).get(kind) or {}).items()}
        if class_sets:
            columns["conformal_calibration"] = pd.array(
                calibration.cpu().numpy() if calibration is not None else [None] * n,
                dtype="boolean")
        frames.append(pd.DataFrame(columns))
    frame = pd.concat(frames, ignore_index=True)
    return frame.astype({"set": "string", "role": "string", "attack": "string",
                         "epsilon": "Float64", "attacked": "string", "predictive": "string",
                         "pred_name": "string"})


def _names_in(members: torch.Tensor, names: np.ndarray) -> pd.Series:
    """Bool [N, K] set membership as a column of arrays of class names (parquet stores it as a
    list<string> column and reads it back as the same arrays), cut from one array of names."""
    mask = members.cpu().numpy()
    cut = np.cumsum(mask.sum(1))[:-1]
    return pd.Series(np.split(names[np.nonzero(mask)[1]], cut), dtype=object)


def table(parts: Sequence[pd.DataFrame], *, classes: Sequence[str], in_distribution: str,
          measures: Sequence[str]) -> pd.DataFrame:
    """The per-sample table of ``parts`` (from ``rows``), with its metadata: what a higher value
    of each measure says, the model's classes and the ID set."""
    frame = pd.concat(parts, ignore_index=True)
    measure_columns = [m for m in measures if m in frame.columns]
    fixed = [c for c in frame.columns if c not in measure_columns]
    frame = frame[fixed + measure_columns]
    frame.attrs[METADATA] = {
        "classes": list(classes),
        "in_distribution": in_distribution,
        "higher_means": {m: higher_means(m) for m in measure_columns},
    }
    return frame


def metadata(frame: pd.DataFrame) -> dict[str, Any]:
    """The table's metadata as ``table`` recorded it (empty for a table without it)."""
    return dict(frame.attrs.get(METADATA, {}))
