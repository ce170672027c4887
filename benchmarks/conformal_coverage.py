"""Coverage of trustmap's conformal prediction sets on a run's ID inputs, beside MAPIE's.

For every predictive of the run's per-sample table, method and alpha: the same seeded random
half/half calibration/test splits of the labelled ID rows; mean coverage, its standard
deviation over the splits and the mean set size. MAPIE (where installed) gets the same splits
and probabilities: lac as is, aps with include_last_label="randomized" (trustmap's default),
raps with the k_reg and lam that MAPIE tunes itself on a fifth of the calibration half (trustmap
keeps k_reg=1, lam=0.01), so only lac and aps compare like for like.

    .venv/bin/python benchmarks/conformal_coverage.py runs/default/per_sample.parquet
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from trustmap.evaluate.conformal import METHODS, calibrate, prediction_sets, set_summary
from trustmap.per_sample import metadata, probability_column

try:
    from mapie.classification import SplitConformalClassifier
except ImportError:
    SplitConformalClassifier = None

ALPHAS = (0.1, 0.05, 0.01)


class Fixed(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier for MAPIE: predict_proba returns the rows of probs that X indexes."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.classes_ = np.arange(probs.shape[1])

    def fit(self, x: np.ndarray, y: np.ndarray) -> Fixed:
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.probs[np.asarray(x)[:, 0]]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(1)


def ours(probs: torch.Tensor, labels: torch.Tensor, splits: list[torch.Tensor], method: str,
         alpha: float, classes: list[str], seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    summaries = []
    for cal, test in splits:
        calibrated = calibrate(probs[cal], labels[cal], alpha, method, generator=generator)
        sets = prediction_sets(calibrated, probs[test], generator=generator)
        summaries.append(set_summary(sets, labels[test], classes))
    return summaries


def mapies(probs: torch.Tensor, labels: torch.Tensor, splits: list[torch.Tensor], method: str,
           classes: list[str], seed: int) -> dict[float, list[dict]]:
    """MAPIE's summaries on the same splits, for every alpha at once (for raps, those with
    1 / alpha below the size of the fifth it tunes on, as MAPIE requires)."""
    fixed, index = Fixed(probs.numpy()), np.arange(len(probs))[:, None]
    tuning = math.ceil(0.2 * len(splits[0][0])) if method == "raps" else math.inf
    alphas = [alpha for alpha in ALPHAS if 1 / alpha < tuning]
    summaries: dict[float, list[dict]] = {alpha: [] for alpha in alphas}
    for number, (cal, test) in enumerate(splits):
        mapie = SplitConformalClassifier(fixed, confidence_level=[1 - a for a in alphas],
                                         conformity_score=method, random_state=seed + number)
        mapie.conformalize(index[cal.numpy()], labels[cal].numpy())
        sets = mapie.predict_set(index[test.numpy()], {"include_last_label": "randomized"})[1]
        for column, alpha in enumerate(alphas):
            summaries[alpha].append(set_summary(torch.from_numpy(sets[:, :, column]),
                                                labels[test], classes))
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("per_sample", nargs="?", default="runs/default/per_sample.parquet")
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frame = pd.read_parquet(args.per_sample)
    classes = metadata(frame).get("classes") or [
        c.removeprefix("p_") for c in frame.columns if c.startswith("p_")]
    frame = frame[(frame["role"] == "id") & frame["label"].notna()]
    frame = frame.sort_values([c for c in ("set", "index") if c in frame.columns], kind="stable")
    predictives = list(dict.fromkeys(frame["predictive"]))
    n = int((frame["predictive"] == predictives[0]).sum())
    generator = torch.Generator().manual_seed(args.seed)
    splits = [torch.randperm(n, generator=generator).chunk(2) for _ in range(args.splits)]
    print(f"{args.per_sample}: {n} labelled ID inputs, {len(classes)} classes, {args.splits} "
          f"half/half splits (seed {args.seed}); MAPIE "
          f"{'beside ours' if SplitConformalClassifier else 'not installed'}")
    print(f"{'predictive':14}{'method':8}{'alpha':>6}{'coverage':>10}{'std':>8}{'size':>8}"
          + (f"{'MAPIE cov':>11}{'size':>8}" if SplitConformalClassifier else ""))
    for predictive in predictives:
        rows = frame[frame["predictive"] == predictive]
        probs = torch.tensor(rows[[probability_column(c) for c in classes]].to_numpy(np.float64))
        labels = torch.tensor(rows["label"].to_numpy(np.int64))
        for method in METHODS:
            theirs = (mapies(probs, labels, splits, method, classes, args.seed)
                      if SplitConformalClassifier else {})
            for alpha in ALPHAS:
                summaries = ours(probs, labels, splits, method, alpha, classes, args.seed)
                coverage = [s["coverage"] for s in summaries]
                line = (f"{predictive:14}{method:8}{alpha:6g}{statistics.mean(coverage):10.4f}"
                        f"{statistics.stdev(coverage):8.4f}"
                        f"{statistics.mean(s['mean_size'] for s in summaries):8.3f}")
                if alpha in theirs:
                    line += (f"{statistics.mean(s['coverage'] for s in theirs[alpha]):11.4f}"
                             f"{statistics.mean(s['mean_size'] for s in theirs[alpha]):8.3f}")
                elif SplitConformalClassifier:
                    line += f"{'-':>11}{'-':>8}"  # MAPIE's raps refuses 1 / alpha >= its fifth
                print(line)


if __name__ == "__main__":
    main()
