"""Figures of the explanation section: the maps, their spread, and how faithful they are.

Every function takes plain tensors, arrays or DataFrames (no run objects), checks them and
raises ``DataError`` on anything it cannot draw honestly, then returns one matplotlib Figure.
Signed maps are drawn with a diverging colormap centred at 0 on a symmetric scale; maps that
are non-negative everywhere get a sequential one, so no half of a colour scale is wasted.
"""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable

from trustmap.data.transforms import GRAY_WEIGHTS
from trustmap.errors import DataError
from trustmap.report import plot
from trustmap.report.plot import POSITIVE_CMAP, SIGNED_CMAP, SPREAD_CMAP

CELL_INCHES = 1.1
"""Size of one image cell of the explanation grid, legible at report size."""
ORDER_STYLES = {"morf": ("MoRF", "-"), "lerf": ("LeRF", "--"), "random": ("random", ":")}
"""Display name and line style of each deletion order of the perturbation curves."""


def _short(value: float) -> str:
    return f"{value:.2g}"


def _fit(text: str, width: int = 20) -> str:
    """``text`` wrapped to the width of one grid cell, so neighbouring titles never touch."""
    return textwrap.fill(text, width)


def _signed(maps: np.ndarray) -> bool:
    """Whether the maps need a diverging scale (some value below zero)."""
    return bool((maps < 0).any())


def _scale(values: np.ndarray) -> float:
    """The largest |value|, or 1 for an all-zero map, so imshow never gets an empty range."""
    return plot.limit(values) or 1.0


MAP_ALPHA = 0.75
"""Opacity of a mean map over its input: the map's colours stay readable, the image shows."""


def _show_map(axis: Any, values: np.ndarray, signed: bool, vmax: float,
              under: np.ndarray | None = None) -> Any:
    """A map in its colours; with ``under`` (the input as a gray [H, W] picture) drawn over it
    at MAP_ALPHA, so where the map points lies on the image (pale map colours let it show)."""
    cmap = SIGNED_CMAP if signed else POSITIVE_CMAP
    if under is not None:
        axis.imshow(under, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    return axis.imshow(values, cmap=cmap, vmin=-vmax if signed else 0.0, vmax=vmax,
                       interpolation="nearest", alpha=None if under is None else MAP_ALPHA)


def _gray(picture: np.ndarray) -> np.ndarray:
    """A gray [H, W] or RGB [H, W, 3] picture as gray (ITU-R BT.601 luma), for an underlay."""
    return picture if picture.ndim == 2 else picture @ GRAY_WEIGHTS


# --- 1. the grid of examples x methods


def explanation_grid(images: torch.Tensor, row_labels: Sequence[str], methods: Sequence[str],
                     mean_maps: Mapping[str, torch.Tensor],
                     uncertainty_maps: Mapping[str, torch.Tensor],
                     uncertainty_label: str = "std across members",
                     scores: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Each example's input, then per method its mean map and the spread of its map.

    ``images`` is [E, C, H, W] in [0, 1]; ``mean_maps`` and ``uncertainty_maps`` hold one
    [E, H, W] tensor per method. Every map has its own scale (stated under it: ``±v`` for a
    signed mean, ``≤v`` otherwise), since attributions of different inputs and methods differ by
    orders of magnitude; the bars at the bottom show what the colours mean. A method's mean maps
    are drawn diverging when any of them is signed, so one column never mixes two colormaps.
    ``scores`` (method -> one number per row) is printed under the uncertainty map.
    """
    pictures = plot.images(images, "images", 4, "[E, C, H, W]")
    count, height, width = pictures.shape[:3]
    if len(row_labels) != count:
        raise DataError(f"{len(row_labels)} row labels for {count} images; give one per image")
    if not methods:
        raise DataError("no methods given; name at least one method whose maps to draw")
    means, spreads, printed = {}, {}, {}
    for method in methods:
        for maps, kind in ((mean_maps, "mean_maps"), (uncertainty_maps, "uncertainty_maps")):
            if method not in maps:
                raise DataError(f"{kind} has no maps for method {method!r} (it has "
                                f"{sorted(maps)}); pass one [E, H, W] tensor per method")
        means[method] = plot.array(mean_maps[method], f"mean_maps[{method!r}]", 3, "[E, H, W]")
        spreads[method] = plot.array(uncertainty_maps[method], f"uncertainty_maps[{method!r}]", 3,
                                 "[E, H, W]")
        for name, array in ((f"mean_maps[{method!r}]", means[method]),
                            (f"uncertainty_maps[{method!r}]", spreads[method])):
            plot.same_shape(array, (count, height, width), name, "images [E, H, W]")
        if scores is not None:
            if method not in scores:
                raise DataError(f"scores has no values for method {method!r} (it has "
                                f"{sorted(scores)}); give every method one score per row")
            printed[method] = np.asarray(scores[method], dtype=float).reshape(-1)
            if len(printed[method]) != count:
                raise DataError(f"scores[{method!r}] has {len(printed[method])} values for "
                                f"{count} rows; give one per row")

    signed = {method: _signed(means[method]) for method in methods}
    columns = 1 + 2 * len(methods)
    figure = plt.figure(layout="constrained",
                        figsize=(CELL_INCHES * columns + 1.2, CELL_INCHES * 1.15 * count + 1.6))
    grid_part, bar_part = figure.subfigures(2, 1, height_ratios=[CELL_INCHES * 1.15 * count + 0.5,
                                                                 1.1])
    axes = grid_part.subplots(count, columns, squeeze=False)
    small = {"fontsize": 7}
    for row in range(count):
        plot.show_image(axes[row, 0], pictures[row])
        axes[row, 0].set_ylabel(row_labels[row], rotation=0, ha="right", va="center", **small)
        for index, method in enumerate(methods):
            mean_axis, spread_axis = axes[row, 1 + 2 * index], axes[row, 2 + 2 * index]
            vmax = _scale(means[method][row])
            _show_map(mean_axis, means[method][row], signed[method], vmax, _gray(pictures[row]))
            mean_axis.set_xlabel(("±" if signed[method] else "≤") + _short(vmax), fontsize=6)
            spread = spreads[method][row]
            top = _scale(spread)
            spread_axis.imshow(spread, cmap=SPREAD_CMAP, vmin=0.0, vmax=top,
                               interpolation="nearest")
            text = "≤" + _short(top)
            if scores is not None:
                text += f"\nscore {printed[method][row]:.3g}"
            spread_axis.set_xlabel(text, fontsize=6)
    for axis in axes.flat:
        axis.set_xticks([])  # the frames stay: they separate the cells
        axis.set_yticks([])
    axes[0, 0].set_title("input", **small)
    for index, method in enumerate(methods):
        axes[0, 1 + 2 * index].set_title(f"{_fit(method)}\nmean", **small)
        axes[0, 2 + 2 * index].set_title(f"{_fit(method)}\n{_fit(uncertainty_label)}", **small)
    _scale_bars(bar_part, signed.values(), uncertainty_label)
    return figure


def _scale_bars(part: Any, signed: Collection[bool], uncertainty_label: str) -> None:
    """One horizontal bar per colormap in use, in units of each map's own scale."""
    bars = []
    if any(signed):
        bars.append((SIGNED_CMAP, -1.0, "signed mean map, scaled per map to ± its largest |value|",
                     {-1.0: "−max", 0.0: "0", 1.0: "+max"}))
    if not all(signed):
        bars.append((POSITIVE_CMAP, 0.0, "non-negative mean map, scaled per map to its maximum",
                     {0.0: "0", 1.0: "max"}))
    bars.append((SPREAD_CMAP, 0.0, f"{uncertainty_label}, scaled per map to its maximum",
                 {0.0: "0", 1.0: "max"}))
    bar_axes = part.subplots(1, len(bars), squeeze=False)[0]
    inches = part.get_figure(root=True).get_figwidth() / len(bars)
    for axis, (cmap, low, label, ticks) in zip(bar_axes, bars, strict=True):
        bar = part.colorbar(ScalarMappable(Normalize(low, 1.0), cmap), cax=axis,
                            orientation="horizontal")
        bar.set_ticks(list(ticks), labels=list(ticks.values()), fontsize=7)
        bar.set_label(textwrap.fill(label, max(16, int(inches * 12))), fontsize=7)
        axis.set_box_aspect(0.08)


# --- 2. and 3. class saliency: the mean map of a class with its standard error


def class_saliency_map(mean: torch.Tensor, sem: torch.Tensor, title: str) -> Figure:
    """A class's mean map with its column and row sums in the margins, and its 1-D profile.

    The margins (above: sum of each column, right: sum of each row) share the map's axes, so a
    peak in a margin sits exactly over the columns or beside the rows that make it. Their band is
    ± the *sum of the per-pixel SEMs* of that column or row: seed 001's conservative band (a
    bound, since errors of neighbouring pixels may cancel), not the SEM of the sum. Below, the
    flattened map (pixel index row-major) with ± its per-pixel SEM.
    """
    values = plot.array(mean, "mean", 2, "[H, W]")
    errors = plot.array(sem, "sem", 2, "[H, W]")
    plot.same_shape(errors, values.shape, "sem", "mean")
    if (errors < 0).any():
        raise DataError("sem holds negative values; a standard error is never below zero")
    height, width = values.shape
    signed = _signed(values)

    figure = plt.figure(figsize=(6.2, 7.4))
    grid = figure.add_gridspec(2, 1, height_ratios=[4.6, 1.4], hspace=0.35,
                               left=0.12, right=0.9, top=0.92, bottom=0.08)
    main = figure.add_subplot(grid[0])
    shown = _show_map(main, values, signed, _scale(values))
    main.set_xlabel("column")
    main.set_ylabel("row")

    divider = make_axes_locatable(main)
    above = divider.append_axes("top", size="28%", pad=0.12, sharex=main)
    beside = divider.append_axes("right", size="28%", pad=0.12, sharey=main)
    colour_axis = divider.append_axes("right", size="5%", pad=0.45)
    bar = figure.colorbar(shown, cax=colour_axis)
    bar.set_label("mean attribution")

    columns, rows = np.arange(width), np.arange(height)
    column_sum, column_band = values.sum(0), errors.sum(0)
    above.fill_between(columns, column_sum - column_band, column_sum + column_band,
                       color="C0", alpha=0.3, linewidth=0)
    above.plot(columns, column_sum, color="C0", linewidth=1.2)
    above.axhline(0, color="0.6", linewidth=0.6)
    above.set_ylabel("column\nsum", fontsize=8)
    above.tick_params(labelbottom=False, labelsize=7)
    row_sum, row_band = values.sum(1), errors.sum(1)
    beside.fill_betweenx(rows, row_sum - row_band, row_sum + row_band, color="C0", alpha=0.3,
                         linewidth=0)
    beside.plot(row_sum, rows, color="C0", linewidth=1.2)
    beside.axvline(0, color="0.6", linewidth=0.6)
    beside.set_xlabel("row sum", fontsize=8)
    beside.tick_params(labelleft=False, labelsize=7)
    beside.tick_params(axis="x", labelrotation=90)

    profile = figure.add_subplot(grid[1])
    pixels, flat, flat_sem = np.arange(height * width), values.reshape(-1), errors.reshape(-1)
    profile.fill_between(pixels, flat - flat_sem, flat + flat_sem, color="C0", alpha=0.3,
                         linewidth=0, label="± SEM")
    profile.plot(pixels, flat, color="C0", linewidth=0.8, label="mean")
    profile.axhline(0, color="0.6", linewidth=0.6)
    profile.set_xlim(0, height * width - 1)
    profile.set_xlabel(f"pixel index (row × {width} + column)")
    profile.set_ylabel("mean attribution")
    profile.legend(fontsize="x-small", loc="upper right")
    figure.suptitle(f"{title}\nmargins: sums with ± summed per-pixel SEM (conservative)",
                    fontsize=10)
    return figure


def class_saliency_panel(means: torch.Tensor, sems: torch.Tensor, class_names: Sequence[str],
                         title: str) -> Figure:
    """Every class's mean map on one shared scale, with its mean per-pixel SEM under it.

    One scale for all classes, because the point of the panel is to compare them.
    """
    values = plot.array(means, "means", 3, "[K, H, W]")
    errors = plot.array(sems, "sems", 3, "[K, H, W]")
    plot.same_shape(errors, values.shape, "sems", "means")
    if (errors < 0).any():
        raise DataError("sems holds negative values; a standard error is never below zero")
    if len(class_names) != len(values):
        raise DataError(f"{len(class_names)} class names for {len(values)} maps; give one per map")
    count = len(values)
    columns = min(count, 5)
    lines = -(-count // columns)
    figure, axes = plt.subplots(lines, columns, squeeze=False, layout="constrained",
                                figsize=(1.35 * columns + 1.0, 1.55 * lines + 0.6))
    signed, vmax = _signed(values), _scale(values)
    shown = None
    for axis in axes.flat:
        plot.bare(axis)
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    for axis, name, value, error in zip(axes.flat, class_names, values, errors, strict=False):
        shown = _show_map(axis, value, signed, vmax)
        axis.set_title(str(name), fontsize=8)
        axis.set_xlabel(f"mean SEM {_short(float(error.mean()))}", fontsize=7)
    bar = figure.colorbar(shown, ax=axes, shrink=0.8)
    bar.set_label("mean attribution (shared scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


# --- 4. to 6. faithfulness, sanity and disagreement


def perturbation_curves(curves: pd.DataFrame) -> Figure:
    """Probability of the explained class as patches are removed, per method and order.

    Removing the most relevant patches first (MoRF) should make the probability fall fast,
    the least relevant first (LeRF) slowly; random order is the reference between them.
    """
    plot.frame(curves, ["method", "order", "step", "mean", "sem"], "perturbation curves",
               unique=["method", "order", "step"])
    unknown = sorted(set(curves["order"]) - set(ORDER_STYLES))
    if unknown:
        raise DataError(f"perturbation curves have unknown orders {unknown}; use "
                        f"{list(ORDER_STYLES)}")
    methods = list(dict.fromkeys(curves["method"]))
    colours = plot.colours(methods)
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    for method in methods:
        for order, (name, style) in ORDER_STYLES.items():
            rows = curves[(curves["method"] == method) & (curves["order"] == order)]
            if rows.empty:
                continue
            rows = rows.sort_values("step")
            steps, mean = rows["step"].to_numpy(float), rows["mean"].to_numpy(float)
            sem = rows["sem"].to_numpy(float)
            axis.fill_between(steps, mean - sem, mean + sem, color=colours[method], alpha=0.15,
                              linewidth=0)
            axis.plot(steps, mean, color=colours[method], linestyle=style, linewidth=1.5,
                      label=f"{method}, {name}")
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("patches removed")
    axis.set_ylabel("probability of the explained class")
    axis.set_title("deletion curves, mean ± SEM over inputs\n"
                   "(higher AOPC under MoRF = more faithful)",
                   fontsize=10)
    plot.legend_outside(axis)
    figure.tight_layout()
    return figure


def sanity_curves(frame: pd.DataFrame) -> Figure:
    """Similarity of each method's maps to the original as more layers are randomised.

    A map that stays similar to the original after the weights are destroyed does not explain
    the model (Adebayo et al.'s parameter randomisation test); a good method falls to ~0.
    """
    plot.frame(frame, ["method", "step", "layer", "similarity", "sem"], "sanity curves",
               unique=["method", "step"])
    layers = frame.drop_duplicates(["step", "layer"])
    clashing = layers["step"][layers["step"].duplicated()]
    if len(clashing):
        raise DataError(f"sanity curves name different layers at step {clashing.iloc[0]}; every "
                        "method must randomise the same layers in the same order")
    names = {int(step): "original" if step == 0 else str(layer)
             for step, layer in zip(layers["step"], layers["layer"], strict=True)}
    methods = list(dict.fromkeys(frame["method"]))
    colours = plot.colours(methods)
    steps = sorted(names)
    figure, axis = plt.subplots(figsize=(max(5.6, 0.45 * len(steps) + 3.0), 4.0))
    lowest = -0.2
    for method in methods:
        rows = frame[frame["method"] == method].sort_values("step")
        x, y = rows["step"].to_numpy(float), rows["similarity"].to_numpy(float)
        sem = rows["sem"].to_numpy(float)
        axis.fill_between(x, y - sem, y + sem, color=colours[method], alpha=0.2, linewidth=0)
        axis.plot(x, y, color=colours[method], marker="o", markersize=3, linewidth=1.5,
                  label=method)
        band = (y - sem)[np.isfinite(y - sem)]  # NaN: a constant map has no rank correlation
        if band.size:
            lowest = min(lowest, float(band.min()) - 0.05)
    axis.axhline(0, color="0.5", linewidth=0.8, linestyle="--")
    axis.set_ylim(lowest, 1.05)
    axis.set_xticks(steps, [names[step] for step in steps], rotation=45, ha="right",
                    fontsize=8)
    axis.set_xlabel("layer randomised at this step")
    axis.set_ylabel("Spearman rank correlation\nwith the original map")
    axis.set_title("model parameter randomisation: a faithful map loses its similarity",
                   fontsize=10)
    plot.legend_outside(axis)
    figure.tight_layout()
    return figure
