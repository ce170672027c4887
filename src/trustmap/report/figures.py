"""Figures of a run (``RunResults``) and of a dataset's classes; each draws one concept."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from trustmap.data.dataset import Dataset
from trustmap.evaluate import selective
from trustmap.report import plot
from trustmap.report.plot import save_figure as save_figure  # where the CLI imports it from
from trustmap.report.results import RunResults
from trustmap.uncertainty import MORE_TRUSTWORTHY, higher_means


def class_grid(dataset: Dataset, per_class: int = 10, max_classes: int = 10) -> Figure:
    """The first ``per_class`` images of each class, one row per class; an unlabelled set's
    first images, ``per_class`` to a row."""
    if dataset.labelled:
        rows = [(dataset.classes[label], (dataset.labels == label).nonzero().flatten()[:per_class])
                for label in range(min(dataset.num_classes, max_classes))]
    else:
        first = torch.arange(min(len(dataset), per_class * max_classes))
        rows = [("", chunk) for chunk in first.split(per_class)]
    figure, axes = plt.subplots(len(rows), per_class, squeeze=False,
                                figsize=(per_class * 0.9, len(rows) * 0.95 + 0.4))
    for row, (label, index) in enumerate(rows):
        for col in range(per_class):
            plot.bare(axes[row, col])
            if col < len(index):
                plot.show_image(axes[row, col], plot.images(dataset.images[index[col]],
                                                            "image", 3, "[C, H, W]"))
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    kind = "" if dataset.labelled else ", unlabelled"
    figure.suptitle(f"{dataset.name} ({dataset.split}, {len(dataset)} images{kind})")
    return figure


# --- Figures of a run (``RunResults``); each function draws one concept and returns the Figure.

RANKING_MEASURES = ("entropy", "predictive_entropy")
"""Measures that rank inputs by total uncertainty, preferred in this order for the input grids."""


def scored(results: RunResults, predictive: str, measure: str) -> bool:
    """Whether ``measure`` has values under ``predictive`` (explanation disagreement is scored
    under the explained predictives only)."""
    frame = results.per_sample
    return measure in frame.columns and bool(
        frame.loc[frame["predictive"] == predictive, measure].notna().any())


def sample_rows(results: RunResults, predictive: str, dataset: str | None = None) -> pd.DataFrame:
    """The per-sample rows of ``predictive`` (on one set, if given)."""
    frame = results.per_sample
    keep = frame["predictive"] == predictive
    if dataset is not None:
        keep &= frame["set"] == dataset
    return frame[keep.to_numpy(dtype=bool)]


def ranked(measure: str, values: pd.Series | np.ndarray) -> np.ndarray:
    """A measure's values as a score that rises with uncertainty (``msp`` and
    ``softmax_variance`` fall with it): what "most uncertain" and ROC curves rank by."""
    array = np.asarray(values, dtype=float)
    return -array if higher_means(measure) == MORE_TRUSTWORTHY else array


def ranking_measure(results: RunResults) -> str:
    """Entropy where the run has it, else the first measure: what "most uncertain" means here."""
    preferred = [m for m in RANKING_MEASURES if m in results.measures]
    return preferred[0] if preferred else next(iter(results.measures))


def dataset_order(results: RunResults) -> list[str]:
    """The ID set first, then the others in table order, so every figure agrees on colours."""
    names = results.per_sample["set"].unique()  # in order of appearance
    return [results.in_distribution] + [name for name in names if name != results.in_distribution]


def compared_sets(results: RunResults) -> list[str]:
    """The sets whose distributions are compared: all but the same-norm noise controls.

    Those controls (``noise:...``) are negatives of the adversarial protocol, reported in its
    table; drawn beside twenty other sets they would only crowd the figures.
    """
    sets = results.per_sample[["set", "role"]].drop_duplicates("set")
    noise = set(sets.loc[sets["role"] == "noise", "set"])
    return [name for name in dataset_order(results) if name not in noise]


def _colours(results: RunResults) -> dict[str, Any]:
    return plot.colours(compared_sets(results) + dataset_order(results))  # compared first


def _floats(values: pd.Series) -> np.ndarray:
    return values.to_numpy(dtype=float, na_value=np.nan)


def _finite(values: pd.Series) -> np.ndarray:
    array = _floats(values)
    return array[np.isfinite(array)]


def measure_histogram(results: RunResults, measure: str, predictive: str) -> Figure:
    """Density of one measure on every dataset over shared bins: how far apart ID and OOD lie."""
    scores = sample_rows(results, predictive)
    bins = np.histogram_bin_edges(_finite(scores[measure]), bins=40)
    colours = _colours(results)
    figure, axis = plt.subplots(figsize=(5.6, 3.4))
    for name in compared_sets(results):
        values = _finite(scores.loc[scores["set"] == name, measure])
        density, _ = np.histogram(values, bins=bins, density=True)
        # stairs: one path per set (hist's per-bar patches took most of the figure's time)
        axis.stairs(density, bins, fill=True, alpha=0.3, color=colours[name])
        axis.stairs(density, bins, linewidth=1.4, color=colours[name],
                    label=f"{name} (n={len(values)})")
    axis.set_xlabel(f"{measure} (higher = {higher_means(measure)})")
    axis.set_ylabel("density")
    axis.set_title(f"{measure} under {predictive}")
    plot.legend_outside(axis)
    return figure


def confidence_scatter(results: RunResults, measure: str, predictive: str,
                       max_points: int = 2000, seed: int = 0) -> Figure:
    """Confidence in the predicted class against a measure: where the two disagree is news.

    At most ``max_points`` per dataset, drawn with ``seed``, so large sets stay legible.
    """
    colours = _colours(results)
    rng = np.random.default_rng(seed)
    figure, axis = plt.subplots(figsize=(5.6, 3.8))
    for name in compared_sets(results):
        shown = sample_rows(results, predictive, name)
        if len(shown) > max_points:
            shown = shown.iloc[np.sort(rng.choice(len(shown), max_points, replace=False))]
        axis.scatter(_floats(shown["confidence"]), _floats(shown[measure]), s=6, alpha=0.45,
                     color=colours[name], label=name, rasterized=True, linewidths=0)
    axis.set_xlabel("confidence (mean probability of the predicted class)")
    axis.set_ylabel(measure)
    axis.set_title(f"confidence vs {measure} under {predictive}")
    plot.legend_outside(axis, markerscale=2.5)
    return figure


def vote_ratio_histogram(results: RunResults, predictive: str) -> Figure:
    """Share of inputs at each vote ratio, one panel per dataset: how often the samples agree."""
    names = compared_sets(results)
    colours = _colours(results)
    columns = min(len(names), 5)
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, sharey=True, squeeze=False,
                                figsize=(2.6 * columns + 0.6, 2.6 * rows + 0.3))
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, names, strict=False):
        values = _finite(sample_rows(results, predictive, name)["vote_ratio"])
        ratios, counts = np.unique(values, return_counts=True)
        axis.bar(ratios, counts / max(len(values), 1), width=0.04, color=colours[name])
        axis.set_xlim(0, 1.05)
        axis.set_title(name, fontsize="small")
        axis.set_xlabel("vote ratio")
    for row in axes:
        row[0].set_ylabel("share of inputs")
    figure.suptitle(f"agreement of the samples of {predictive}")
    figure.tight_layout()
    return figure


def roc_curves(results: RunResults, ood_set: str, predictive: str) -> Figure:
    """ROC of every measure separating ``ood_set`` (positives) from the ID set (negatives)."""
    scores = sample_rows(results, predictive)
    scores = scores[scores["set"].isin([results.in_distribution, ood_set]).to_numpy(dtype=bool)]
    is_ood = (scores["set"] == ood_set).to_numpy(dtype=bool)
    figure, axis = plt.subplots(figsize=(4.6, 4.2))
    axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for measure in results.measures:
        if not scored(results, predictive, measure):
            continue
        fpr, tpr, _ = roc_curve(is_ood, ranked(measure, _floats(scores[measure])))
        axis.plot(fpr, tpr, linewidth=1.6, label=f"{measure} (AUROC {auc(fpr, tpr):.3f})")
    axis.set_xlabel(f"false positive rate ({results.in_distribution} called OOD)")
    axis.set_ylabel(f"true positive rate ({ood_set} caught)")
    axis.set_title(f"{ood_set} vs {results.in_distribution}, {predictive}")
    axis.set_aspect("equal")
    axis.legend(fontsize="small", loc="lower right")
    return figure


def reliability_diagram(results: RunResults) -> Figure:
    """Accuracy against confidence per bin, each stage overlaid, one panel per predictive."""
    table = results.reliability
    predictives = [p for p in results.predictives if (table["predictive"] == p).any()]
    figure, axes = plt.subplots(1, len(predictives), squeeze=False, sharey=True,
                                figsize=(3.9 * len(predictives) + 0.4, 4.0))
    for axis, predictive in zip(axes[0], predictives, strict=True):
        axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        rows = table[table["predictive"] == predictive]
        for stage, bins in rows.groupby("stage", sort=False):
            calibration = results.calibration[(results.calibration["predictive"] == predictive)
                                              & (results.calibration["stage"] == stage)]
            label = str(stage)
            if len(calibration):
                first = calibration.iloc[0]
                label += f" (ECE {first['ece']:.3f}, T={first['temperature']:.2f})"
            bins = bins[bins["count"] > 0]
            axis.plot(bins["confidence"], bins["accuracy"], marker="o", linewidth=1.4,
                      label=label)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_aspect("equal")
        axis.set_xlabel("confidence")
        axis.set_title(predictive)
        axis.legend(fontsize="small", loc="upper left")
    axes[0, 0].set_ylabel("accuracy")
    figure.tight_layout()
    return figure


def extreme_inputs(results: RunResults, dataset: str, predictive: str, measure: str,
                   count: int = 16, columns: int = 8) -> Figure:
    """The ``count`` most and least uncertain inputs of a dataset with prediction and score.

    Each block is one mosaic in one axis, captions under the tiles: one image to draw instead
    of one axis per input, which is what made these figures the slowest of the page.
    """
    shown = sample_rows(results, predictive, dataset)
    shown = shown.iloc[np.argsort(-ranked(measure, _floats(shown[measure])), kind="stable")]
    images = results.images[dataset]
    blocks = [("most uncertain", shown.head(count)), ("least uncertain", shown.tail(count)[::-1])]
    lines = -(-count // columns)
    figure = plt.figure(figsize=(columns * 0.95, 2 * lines * 1.1 + 0.8))
    for axis, (title, block) in zip(figure.subplots(2, 1), blocks, strict=True):
        chosen = [int(index) for index in block["index"]]
        pictures = plot.images(images[chosen], f"images[{dataset!r}]", 4, "[N, C, H, W]")
        height, width = pictures.shape[1:3]
        gap_x, gap_y = width // 4, height // 2  # room for two caption lines under each tile
        tiles = np.pad(pictures, [(0, lines * columns - len(pictures)), (0, gap_y), (0, gap_x)]
                       + [(0, 0)] * (pictures.ndim - 3), constant_values=1.0)
        tiles = tiles.reshape(lines, columns, *tiles.shape[1:]).swapaxes(1, 2)
        plot.show_image(axis, tiles.reshape(lines * (height + gap_y), columns * (width + gap_x),
                                            *pictures.shape[3:]))
        for place, (_, row) in enumerate(block.iterrows()):
            axis.text(place % columns * (width + gap_x) + width / 2,
                      place // columns * (height + gap_y) + height,
                      f"pred {row['pred_name']}\n{row[measure]:.3f}", fontsize=7, ha="center",
                      va="top")
        axis.set_axis_off()
        axis.set_title(f"{dataset}: {title} by {measure} under {predictive}", fontsize=10)
    return figure


def risk_coverage(results: RunResults, predictive: str, shown: int = 6) -> Figure:
    """Risk (error among accepted inputs) against coverage on the ID test set, rejecting the
    least trustworthy first, for the ``shown`` scores of lowest AURC and the oracle (errors
    rejected first): the gap to the oracle is what a score leaves on the table."""
    table = results.selective[results.selective["predictive"] == predictive]
    best = table.nsmallest(shown, "aurc")
    rows = sample_rows(results, predictive, results.in_distribution)
    correct = rows["correct"].to_numpy(dtype=bool)
    figure, axis = plt.subplots(figsize=(8.4, 4.2))  # the legend takes a third of it
    for _, row in best.iterrows():
        coverage, risk = selective.risk_coverage(
            torch.from_numpy(ranked(row["measure"], _floats(rows[row["measure"]]))),
            torch.from_numpy(correct))
        axis.plot(coverage, risk, linewidth=1.5,
                  label=f"{row['measure']} (AURC {row['aurc']:.4f})")
    coverage, risk = selective.risk_coverage(torch.from_numpy((~correct).astype(np.float64)),
                                             torch.from_numpy(correct))
    axis.plot(coverage, risk, color="black", linestyle="--", linewidth=1.2,
              label=f"oracle (AURC {best['oracle_aurc'].iloc[0]:.4f})")
    axis.axhline(1 - correct.mean(), color="0.6", linestyle=":", linewidth=1,
                 label="no rejection")
    axis.set_xlabel("coverage (share of inputs accepted)")
    axis.set_ylabel("risk (error rate among accepted)")
    axis.set_title(f"{results.in_distribution}, {predictive}")
    axis.set_xlim(0, 1)
    axis.set_ylim(bottom=0)
    plot.legend_outside(axis)
    figure.tight_layout()
    return figure
