"""Figures of the influence study: maps of how weighted means move when a pixel goes up, their
spread over the ensemble's members, and the curves behind them.

Every function takes plain tensors (no results object), refuses with a ``DataError`` what it
cannot draw honestly, and returns one matplotlib Figure. Signed maps are drawn diverging on a
scale symmetric around 0, as ethik draws them; constant pixels (no tilt, every map exactly 0
there) are greyed, and pixels whose tilt missed the tolerance are marked with a small x.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from trustmap.report import plot
from trustmap.report.plot import SIGNED_CMAP, SPREAD_CMAP
from trustmap.uncertainty import MEASURES

CONSTANT_COLOUR = "0.72"
"""Constant pixels: a mid grey, apart from the white centre of the diverging scale."""
MISSED_STYLE = {"marker": "x", "s": 9, "color": "black", "linewidths": 0.6, "zorder": 3,
                "path_effects": [patheffects.withStroke(linewidth=1.8, foreground="white")]}
"""Pixels (and curve points) whose tilt did not converge: black with a white rim, visible on
every colour of both scales."""
MAP_COLUMNS = 5
"""Panels per row of the per-class figures (10 classes: two rows)."""
CURVE_COLUMNS = 4
HIGHER_IS_BETTER = {"accuracy"}
LOWER_IS_BETTER = {"log-loss", "log_loss", "nll", "brier", "error"}


def metric_sense(name: str) -> str:
    """What a positive change of the metric means, where its direction is known."""
    if name.lower() in HIGHER_IS_BETTER:
        return "better"
    if name.lower() in LOWER_IS_BETTER:
        return "worse"
    return "higher"


def change_label(name: str) -> str:
    """Colorbar label of a change map: of an uncertainty measure's mean, or of a metric."""
    if name in MEASURES:
        return f"change of mean {name} (+ = less sure)"
    return f"change of {name} (+ = {metric_sense(name)})"


# --- checks and small helpers


def _mask(value: Any) -> np.ndarray:
    """A bool mask of the maps' pixels (the page checked its shape and dtype)."""
    return torch.as_tensor(value).detach().cpu().bool().numpy()


def _cmap(name: str) -> Colormap:
    return matplotlib.colormaps[name].with_extremes(bad=CONSTANT_COLOUR)


def _show(axis: Any, values: np.ndarray, constant: np.ndarray, cmap: Colormap,
          norm: Normalize) -> Any:
    """A map with its constant pixels masked (drawn grey) and no ticks."""
    shown = axis.imshow(np.ma.masked_array(values, mask=constant), cmap=cmap, norm=norm,
                        interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    return shown


def _mark_missed(axis: Any, missed: np.ndarray) -> None:
    rows, columns = np.nonzero(missed)
    if len(rows):
        axis.scatter(columns, rows, **MISSED_STYLE)


def _mask_legend(figure: Figure, constant: np.ndarray, missed: np.ndarray) -> None:
    """What the grey pixels and the x marks mean, with their counts."""
    handles = [Patch(facecolor=CONSTANT_COLOUR, edgecolor="none",
                     label=f"constant pixel, exactly 0 ({int(constant.sum())})")]
    if missed.any():
        handles.append(Line2D([], [], marker="x", linestyle="", color="black", markersize=5,
                              label=f"tilt not converged ({int(missed.sum())})"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                  fontsize="x-small")


# --- 1. one map per class, one scale


def _class_maps(maps: Any, classes: Sequence[str], constant: Any, not_converged: Any,
                what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = plot.array(maps, what, 3, "[K, H, W] one map per class")
    return values, _mask(constant), _mask(not_converged)


def _class_panels(values: np.ndarray, classes: Sequence[str], constant: np.ndarray,
                  missed: np.ndarray, cmap: str, norm: Normalize, label: str,
                  title: str) -> Figure:
    figure, axes = plot.panels(len(values), MAP_COLUMNS, 1.7, 1.85)
    shown = None
    for axis, name, plane in zip(axes.flat, classes, values, strict=False):
        shown = _show(axis, plane, constant, _cmap(cmap), norm)
        _mark_missed(axis, missed)
        axis.set_title(str(name), fontsize=9)
    bar = figure.colorbar(shown, ax=axes, shrink=0.85, aspect=30)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    _mask_legend(figure, constant, missed)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def influence_maps(maps: Any, classes: Sequence[str], constant: Any, not_converged: Any,
                   title: str = "") -> Figure:
    """Each class's influence map [K, H, W] on one shared symmetric scale, one colorbar.

    Red: the class's mean probability rises when the pixel goes up; blue: it falls.
    """
    values, still, missed = _class_maps(maps, classes, constant, not_converged, "maps")
    return _class_panels(values, classes, still, missed, SIGNED_CMAP,
                         plot.symmetric(plot.limit(values)),
                         "change of mean probability, τ = +1 minus τ = −1 (shared scale)", title)


def spread_maps(std: Any, classes: Sequence[str], constant: Any, not_converged: Any,
                title: str = "") -> Figure:
    """Each class's std over members [K, H, W], sequential, one scale from 0 for all."""
    values, still, missed = _class_maps(std, classes, constant, not_converged, "std")
    largest = float(values.max())
    return _class_panels(values, classes, still, missed, SPREAD_CMAP,
                         Normalize(0.0, largest if largest > 0 else 1.0),
                         "std over members of the influence (shared scale)", title)


# --- 2. one map per metric or measure, each its own scale


def change_maps(maps: Mapping[str, Any], labels: Mapping[str, str], constant: Any,
                not_converged: Any, title: str = "") -> Figure:
    """One panel per name of ``maps`` (each [H, W]), diverging on its own symmetric scale
    with its own colorbar labelled ``labels[name]``: metrics differ in units and range."""
    planes = {name: plot.array(value, f"maps[{name!r}]", 2, "[H, W] one value per pixel")
              for name, value in maps.items()}
    still, missed = _mask(constant), _mask(not_converged)
    figure, axes = plot.panels(len(planes), 3, 3.1, 2.9)
    for axis, (name, plane) in zip(axes.flat, planes.items(), strict=False):
        shown = _show(axis, plane, still, _cmap(SIGNED_CMAP), plot.symmetric(plot.limit(plane)))
        _mark_missed(axis, missed)
        axis.set_title(name, fontsize=10)
        bar = figure.colorbar(shown, ax=axis, shrink=0.85)
        bar.set_label(labels.get(name, f"change of {name}"), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    _mask_legend(figure, still, missed)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


# --- 3. curves


def influence_curves(targets: Any, values: Any, converged: Any,
                     pixels: Sequence[tuple[int, int]], classes: Sequence[str], mean_image: Any,
                     title: str = "") -> Figure:
    """Mean probability of every class against each pixel's target mean, one panel per pixel.

    ``targets`` [T, Q], ``values`` [T, Q, K], ``converged`` [T, Q] bool; ``pixels`` the Q
    (row, column). A first, small panel shows ``mean_image`` [H, W] with the pixels numbered;
    in each curve panel a dotted line marks the pixel's test-set mean (tau = 0) and black x
    the points whose tilt did not converge.
    """
    goal = plot.array(targets, "targets", 2, "[T, Q] target means")
    count = len(pixels)
    probability = plot.array(values, "values", 3, "[T, Q, K]")
    done = _mask(converged)
    picture = plot.array(mean_image, "mean_image", 2, "[H, W]")
    colours = plot.palette(len(classes))
    figure, axes = plot.panels(count + 1, CURVE_COLUMNS, 3.0, 2.6)
    axis = axes.flat[0]
    plot.show_image(axis, np.clip(picture, 0.0, 1.0))
    axis.scatter([c for _, c in pixels], [r for r, _ in pixels], s=40, facecolors="none",
                 edgecolors="red", linewidths=1.2)
    for number, (row, column) in enumerate(pixels, start=1):
        axis.annotate(str(number), (column, row), xytext=(4, 4), textcoords="offset points",
                      color="red", fontsize=9, fontweight="bold")
    plot.bare(axis)
    axis.set_title("mean image, curve pixels", fontsize=9)
    for number, (axis, (row, column)) in enumerate(zip(axes.flat[1:], pixels, strict=False)):
        order = np.argsort(goal[:, number], kind="stable")
        x = goal[order, number]
        missed = ~done[order, number]
        for k, colour in enumerate(colours):
            y = probability[order, number, k]
            axis.plot(x, y, color=colour, linewidth=1.3, marker="o", markersize=2)
            if missed.any():
                axis.scatter(x[missed], y[missed], **{**MISSED_STYLE, "s": 22})
        axis.axvline(picture[row, column], color="0.45", linestyle=":", linewidth=1.0)
        note = f"\n{int(missed.sum())} of {len(x)} points not converged" if missed.any() else ""
        axis.set_title(f"pixel {number + 1}: ({row}, {column}){note}", fontsize=9)
        axis.set_xlabel("pixel's target mean", fontsize=8)
        axis.set_ylabel("mean probability", fontsize=8)
        axis.tick_params(labelsize=7)
    handles = [Line2D([], [], color=colour, linewidth=1.5, label=str(name))
               for name, colour in zip(classes, colours, strict=True)]
    handles.append(Line2D([], [], color="0.45", linestyle=":", label="test-set mean (τ = 0)"))
    if not done.all():
        handles.append(Line2D([], [], marker="x", linestyle="", color="black",
                              label="tilt not converged"))
    figure.legend(handles=handles, loc="outside right upper", fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
