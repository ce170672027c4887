"""Figures of the recurrent study: maps of wide sequence inputs, and where their relevance lies.

Every function takes plain tensors and DataFrames (no results object), refuses with a
``DataError`` what it cannot draw honestly, and returns one matplotlib Figure. A method keeps
its colour in every figure (its position in ``methods``), so the figures read together.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from trustmap.report import plot
from trustmap.report.plot import SIGNED_CMAP

CELL_WIDTH = 2.3
"""Inches of one map of the heatmap grid: a 28x84 input is three times wider than high."""
RANDOM_ORDER = "random"
"""The perturbation order drawn as the grey reference, not as a method's curve."""
ORDER_STYLES = {"morf": "-", "lerf": ":"}
"""Line style of each order drawn in a method's colour (most / least relevant first)."""
REGION_COLOUR = "#2ca02c"
"""The data region: its outline on the inputs and the shaded ideal steps of the profile."""


def _plane(value: torch.Tensor, what: str) -> np.ndarray:
    """A [C, H, W] map as a finite float [H, W] array, its channels summed."""
    return plot.array(value, what, 3, "[C, H, W]").sum(0)


def _outline(axis: Any, mask: np.ndarray, colour: Any, width: float) -> None:
    """The border of ``mask``'s True pixels, on pixel edges, also where it meets the image's."""
    height, width_px = mask.shape
    padded = np.pad(mask.astype(float), 1)
    lines = axis.contour(np.arange(-1, width_px + 1), np.arange(-1, height + 1), padded,
                         levels=[0.5], colors=[colour], linewidths=width)
    lines.set_clip_on(False)  # on the image's edge half of the line would lie outside
    axis.set_xlim(-0.5, width_px - 0.5)
    axis.set_ylim(height - 0.5, -0.5)


def heatmap_grid(image: torch.Tensor, mask: torch.Tensor,
                 maps: Mapping[tuple[str, str], torch.Tensor], architectures: Sequence[str],
                 methods: Sequence[str], title: str) -> Figure:
    """One input under every architecture (rows) and method (columns after the input).

    ``image`` is a gray [1, H, W] in [0, 1], ``mask`` its [1, H, W] data region (outlined on the
    input and, thinly, on every map), ``maps`` holds one [C, H, W] map per (architecture,
    method). Each map is drawn diverging on its own scale, symmetric around 0 (the ± value
    under it), since methods differ by orders of magnitude; a non-negative map simply uses
    the red half.
    """
    shown = plot.images(image, "image", 3, "one gray [1, H, W]")
    region = torch.as_tensor(mask).detach().cpu().numpy().astype(bool)[0]
    planes = {(a, m): _plane(maps[a, m], f"maps[{a!r}, {m!r}]")
              for a in architectures for m in methods}
    height, width = shown.shape
    rows, columns = len(architectures), 1 + len(methods)
    cell = CELL_WIDTH * height / width + 0.3
    figure, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                                figsize=(CELL_WIDTH * columns + 1.3, cell * rows + 1.2))
    for row, architecture in enumerate(architectures):
        axis = axes[row, 0]
        plot.show_image(axis, shown)
        _outline(axis, region, REGION_COLOUR, 1.6)
        axis.set_ylabel(architecture, rotation=0, ha="right", va="center", fontsize=10)
        for column, method in enumerate(methods, start=1):
            axis = axes[row, column]
            values = planes[architecture, method]
            largest = plot.limit(values) or 1.0
            axis.imshow(values, cmap=SIGNED_CMAP, norm=plot.symmetric(largest),
                        interpolation="nearest")
            _outline(axis, region, "0.25", 0.6)
            axis.set_xlabel(f"±{largest:.2g}", fontsize=7, labelpad=1)
    for axis in axes.flat:
        plot.bare(axis)
    axes[0, 0].set_title("input\n(data region outlined)", fontsize=9)
    for column, method in enumerate(methods, start=1):
        axes[0, column].set_title(textwrap.fill(method, 24), fontsize=10)
    bar = figure.colorbar(ScalarMappable(Normalize(-1.0, 1.0), SIGNED_CMAP), ax=axes,
                          orientation="horizontal", shrink=0.35, aspect=40, pad=0.02)
    bar.set_ticks([-1.0, 0.0, 1.0], labels=["−max", "0", "+max"], fontsize=7)
    bar.set_label("relevance, scaled per map to ± its largest |value|", fontsize=8)
    figure.suptitle(title, fontsize=11)
    return figure


def region_shares(region: pd.DataFrame, architectures: Sequence[str], methods: Sequence[str],
                  chance: float) -> Figure:
    """Share of relevance in the data region per architecture (x), a line per method.

    Error bars are ± the standard error over inputs; the dashed line is what a map without
    information about the input's content scores.
    """
    plot.frame(region, ["architecture", "method", "share", "sem"], "region shares")
    colours = plot.colours(methods)
    positions = {architecture: i for i, architecture in enumerate(architectures)}
    figure, axis = plt.subplots(figsize=(max(5.0, 0.9 * len(architectures) + 2.6), 3.8),
                                layout="constrained")
    lowest, highest = chance, chance
    for method in methods:
        rows = region[(region["method"] == method) & region["architecture"].isin(positions)]
        if rows.empty:
            continue
        rows = rows.sort_values("architecture", key=lambda column: column.map(positions))
        x = rows["architecture"].map(positions).to_numpy(float)
        share, sem = rows["share"].to_numpy(float), rows["sem"].fillna(0.0).to_numpy(float)
        axis.errorbar(x, share, yerr=sem, color=colours[method], marker="o", markersize=4,
                      linewidth=1.5, capsize=2, label=method)
        if np.isfinite(share).any():
            lowest = min(lowest, float(np.nanmin(share - sem)))
            highest = max(highest, float(np.nanmax(share + sem)))
    axis.axhline(chance, color="0.35", linestyle="--", linewidth=1.0)
    axis.annotate("chance", (1.0, chance), xycoords=("axes fraction", "data"),
                  xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom",
                  fontsize=8, color="0.35")
    margin = 0.05 * max(highest - lowest, 0.1)
    axis.set_ylim(lowest - margin, highest + margin)
    axis.set_xticks(range(len(architectures)), list(architectures), rotation=30, ha="right")
    axis.set_xlim(-0.5, len(architectures) - 0.5)
    axis.set_xlabel("architecture")
    axis.set_ylabel("share of positive relevance\nin the data region")
    axis.set_title("relevance on the two class-c blocks (higher is better)", fontsize=10)
    plot.legend_outside(axis)
    return figure


def step_profiles(steps: pd.DataFrame, architectures: Sequence[str], methods: Sequence[str],
                  ideal_steps: int) -> Figure:
    """Share of relevance at each step, one panel per architecture, a line per method.

    The first ``ideal_steps`` steps (shaded) are where a perfect map puts all of it; the dotted
    line is a map spread evenly over the steps.
    """
    plot.frame(steps, ["architecture", "method", "step", "share"], "step profiles")
    last = int(steps["step"].max())
    colours = plot.colours(methods)
    figure, axes = plot.panels(len(architectures), 3, 3.6, 2.8, margin=1.8,
                               sharex=True, sharey=True)
    for axis, architecture in zip(axes.flat, architectures, strict=False):
        axis.axvspan(0.5, ideal_steps + 0.5, color=REGION_COLOUR, alpha=0.12, linewidth=0,
                     label=f"data region (steps 1–{ideal_steps})")
        axis.axhline(1 / last, color="0.5", linestyle=":", linewidth=1.0,
                     label=f"evenly spread (1/{last})")
        for method in methods:
            rows = steps[(steps["architecture"] == architecture) & (steps["method"] == method)]
            rows = rows.sort_values("step")
            axis.plot(rows["step"], rows["share"], color=colours[method], marker="o",
                      markersize=2.5, linewidth=1.3, label=method)
        axis.set_title(architecture, fontsize=10)
        axis.set_xlim(0.5, last + 0.5)
    for axis in axes[-1]:
        axis.set_xlabel("step (7 columns each)")
    for axis in axes[:, 0]:
        axis.set_ylabel("share of relevance")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="x-small")
    figure.suptitle("relevance per step of inputs whose odd item is the last block", fontsize=11)
    return figure


def aopc_curves(curves: pd.DataFrame, architectures: Sequence[str],
                methods: Sequence[str]) -> Figure:
    """Mean probability of the explained class as patches are removed, one panel each.

    Each method's most-relevant-first (MoRF) curve is solid in its colour; a random order is
    the dashed grey reference: a faithful map falls below it, and fast.
    """
    keys = ["architecture", "method", "order", "step"]
    plot.frame(curves, [*keys, "mean"], "perturbation curves", unique=keys)
    others = [m for m in dict.fromkeys(curves.loc[curves["order"] != RANDOM_ORDER, "method"])
              if m not in methods]
    colours = plot.colours([*methods, *others])
    figure, axes = plot.panels(len(architectures), 3, 3.6, 2.8, margin=1.8,
                               sharex=True, sharey=True)
    for axis, architecture in zip(axes.flat, architectures, strict=False):
        rows = curves[curves["architecture"] == architecture]
        random = rows[rows["order"] == RANDOM_ORDER]
        for number, (_, curve) in enumerate(random.groupby("method", sort=False)):
            curve = curve.sort_values("step")
            axis.plot(curve["step"], curve["mean"], color="0.45", linestyle="--",
                      linewidth=1.2, label="random order" if number == 0 else None)
        for method in colours:
            for order, style in ORDER_STYLES.items():
                curve = rows[(rows["method"] == method) & (rows["order"] == order)]
                if curve.empty:
                    continue
                curve = curve.sort_values("step")
                name = method if order == "morf" else f"{method}, {order.upper()}"
                axis.plot(curve["step"], curve["mean"], color=colours[method], linestyle=style,
                          linewidth=1.4, label=name)
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(architecture, fontsize=10)
    for axis in axes[-1]:
        axis.set_xlabel("patches removed")
    for axis in axes[:, 0]:
        axis.set_ylabel("mean probability\nof the explained class")
    entries: dict[str, Any] = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    figure.legend(list(entries.values()), list(entries), loc="outside right upper",
                  fontsize="x-small")
    figure.suptitle("region perturbation, most relevant first (higher AOPC = more faithful)",
                    fontsize=11)
    return figure
