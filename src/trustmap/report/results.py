"""What a run hands to the report: tables and arrays, nothing the report must compute again.

The study (``trustmap.studies``) fills a ``RunResults``; ``trustmap.report`` only draws and
writes it. Keeping this a plain container of DataFrames makes the report testable with
hand-made tables, and makes ``metrics.json`` and ``per_sample.parquet`` straight dumps of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

# Column sets of each table; the study produces exactly these and the report reads them.
PER_SAMPLE_KEYS = ("dataset", "index", "label")
"""``per_sample`` also has, for each predictive P: ``P:predicted``, ``P:confidence`` (mean
probability of P's predicted class), ``P:vote_ratio``, and ``P:<measure>`` for every measure."""
OOD_COLUMNS = ("ood_set", "predictive", "measure", "auroc", "aupr_in", "aupr_out", "fpr95")
MISCLASSIFICATION_COLUMNS = ("predictive", "measure", "auroc", "aupr_in", "aupr_out", "fpr95")
CALIBRATION_COLUMNS = ("predictive", "stage", "temperature", "accuracy", "nll", "brier", "ece",
                       "mce")
RELIABILITY_COLUMNS = ("predictive", "stage", "bin_lower", "bin_upper", "confidence", "accuracy",
                       "count")
ADVERSARIAL_COLUMNS = ("attack", "epsilon", "attacked", "success_rate", "negatives", "subset",
                       "predictive", "measure", "auroc")
"""``attacked``: the predictive the gradients came from; ``negatives``: "clean" or "noise" (clean
plus noise of the perturbation's L2 norm); ``subset``: "all" attempts or "successful" only."""


@dataclass
class RunResults:
    """Everything one ``trustmap run`` measured, ready to render."""

    header: dict[str, Any]
    """What was run: command, config, datasets with provenance, seed, versions, seconds."""
    in_distribution: str
    """Name of the ID test set, one of ``per_sample.dataset``."""
    predictives: list[str]
    measures: dict[str, str]
    """Measure name -> one-line definition, in display order."""
    per_sample: pd.DataFrame
    ood: pd.DataFrame
    misclassification: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    adversarial: pd.DataFrame
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    """Dataset name -> float32 [N, C, H, W] images in ``per_sample`` row order (by ``index``)."""
