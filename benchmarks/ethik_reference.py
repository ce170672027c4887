"""Run ethik 0.0.4 on images and probabilities saved by ``influence_throughput.py``.

This file runs under a throw-away interpreter that has ethik (it needs pandas < 2), never
under trustmap's own environment, and ethik is never a dependency of trustmap:

    python3 -m venv /tmp/ethik-env
    /tmp/ethik-env/bin/pip install ethik==0.0.4 "pandas<2" "numpy<2" scikit-learn
    /tmp/ethik-env/bin/python benchmarks/ethik_reference.py INPUTS.npz OUTPUT.npz

INPUTS.npz holds ``images`` [N, H, W], ``labels`` [N] and ``probs`` [N, K]; OUTPUT.npz gets
ethik's maps (tau = +1 minus tau = -1, as its ``plot_influence`` and ``plot_performance`` draw
them) and the seconds each explanation took, with one job (one core).
"""

from __future__ import annotations

import sys
import time
import warnings

import ethik
import numpy as np
import pandas as pd
from sklearn import metrics


def _maps(frame: pd.DataFrame, column: str, shape: tuple[int, ...]) -> np.ndarray:
    """[K or 1, *shape] from ethik's long table, one row per (feature, tau[, label])."""
    labels = sorted(frame["label"].unique())
    maps = []
    for label in labels:
        rows = frame[frame["label"] == label]
        up = rows[rows["tau"] == 1][column].to_numpy(float)
        down = rows[rows["tau"] == -1][column].to_numpy(float)
        maps.append((up - down).reshape(shape))
    return np.stack(maps)


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    warnings.simplefilter("ignore")
    data = np.load(source)
    images, labels, probs = data["images"], data["labels"], data["probs"]
    shape = images.shape[1:]

    def explainer() -> ethik.ImageClassificationExplainer:
        return ethik.ImageClassificationExplainer(n_jobs=1, verbose=False, memoize=False)

    started = time.perf_counter()
    influence = explainer().explain_influence(images, pd.DataFrame(probs))
    seconds_influence = time.perf_counter() - started
    started = time.perf_counter()
    accuracy = explainer().explain_performance(images, labels, probs.argmax(1),
                                               metrics.accuracy_score)
    seconds_accuracy = time.perf_counter() - started
    started = time.perf_counter()
    log_loss = explainer().explain_performance(
        images, pd.DataFrame(np.eye(probs.shape[1])[labels]), pd.DataFrame(probs),
        metrics.log_loss)
    seconds_log_loss = time.perf_counter() - started
    pairs = influence.drop_duplicates(["feature", "tau"])
    np.savez(target, influence=_maps(influence, "influence", shape),
             accuracy=_maps(accuracy, "accuracy_score", shape)[:1],
             log_loss=_maps(log_loss, "log_loss", shape)[:1],
             seconds=np.array([seconds_influence, seconds_accuracy, seconds_log_loss]),
             not_converged=int((~pairs["converged"].astype(bool)).sum()))


if __name__ == "__main__":
    main()
