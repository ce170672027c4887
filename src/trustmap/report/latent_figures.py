"""Figures of the latent-map study: uncertainty over a VAE's 2-D latent plane, what that plane
decodes to, and how uncertainty changes along interpolations.

Every function takes plain tensors (no results object), refuses with a ``DataError`` what it
cannot draw honestly, and returns one matplotlib Figure. Grid values come row-major, z0 along
the columns and z1 along the rows (``trustmap.evaluate.latent.LatentGrid``); maps and mosaic
both draw z1 increasing upward with each grid point at the centre of its cell, so they overlay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.spatial import ConvexHull, QhullError

from trustmap.errors import DataError
from trustmap.report import plot

MAP_CMAP = "gray"
"""Uncertainty maps: black is the lowest score (confident), white the highest."""
FAR_STYLE = {"marker": "X", "s": 46, "facecolors": "red", "edgecolors": "white",
             "linewidths": 0.6, "zorder": 4, "clip_on": False}
"""The confident far points: a filled red cross with a white rim, visible on black and white."""
PATH_COLOURS = {"pixel": "#1f77b4", "latent": "#ff7f0e"}
"""Pixel-space and latent-space interpolations in every figure that compares them."""
TILE_GAP = 2
"""Pixels of white between the images of a strip."""
MIN_COLUMNS = 6
"""Tile slots of the confident-image figure at least, so a short row keeps its tiles' size."""


# --- checks and small helpers


def _resolution(resolution: int, bound: float) -> None:
    if resolution < 2 or not np.isfinite(bound) or bound <= 0:
        raise DataError(f"a latent grid needs resolution >= 2 and a finite bound > 0, got "
                        f"resolution={resolution}, bound={bound}")


def grid_axis(resolution: int, bound: float) -> np.ndarray:
    """[R] coordinates of the grid along z0 and z1: -bound to bound, both included."""
    return np.linspace(-bound, bound, resolution)


def map_extent(resolution: int, bound: float) -> tuple[float, float, float, float]:
    """imshow's extent that centres the cell of each grid point on its coordinates.

    The cells therefore reach half a spacing beyond ±bound; the axes show [-bound, bound].
    """
    half = bound / (resolution - 1)
    return (-bound - half, bound + half, -bound - half, bound + half)


def grid_map(values: Any, resolution: int, what: str) -> np.ndarray:
    """Per-point values [R*R] as an [R, R] array whose row i is z1 = axis[i] (origin lower)."""
    array = plot.array(values, what, 1, f"[{resolution}*{resolution}] one value per grid point")
    if len(array) != resolution ** 2:
        raise DataError(f"{what} has {len(array)} values; a {resolution}x{resolution} grid has "
                        f"{resolution ** 2} points, in grid order")
    return array.reshape(resolution, resolution)


def hull_outline(codes: np.ndarray) -> np.ndarray:
    """[V + 1, 2] the convex hull of the codes as a closed polygon (the "near" region)."""
    try:
        hull = ConvexHull(codes)
    except QhullError as error:
        raise DataError(f"the convex hull of the {len(codes)} codes could not be computed "
                        f"({str(error).splitlines()[0]}); they must not all lie on one line"
                        ) from error
    vertices = hull.vertices  # counter-clockwise in 2-D
    return codes[np.r_[vertices, vertices[:1]]]


def _codes(codes: Any, code_labels: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    points = plot.array(codes, "codes", 2, "[M, 2] latent codes")
    labels = torch.as_tensor(code_labels).detach().cpu().long().numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"code_labels hold classes {labels.min()}..{labels.max()} but there are "
                        f"{len(classes)} class names; give a name for every class")
    return points, labels


# --- 1. uncertainty over the latent plane


def uncertainty_maps(maps: Mapping[tuple[str, str], Any], predictives: Sequence[str],
                     measures: Sequence[str], resolution: int, bound: float, codes: Any,
                     code_labels: Any, classes: Sequence[str],
                     confident: Mapping[str, Any] | None = None, title: str = "",
                     max_points: int = 2000, seed: int = 0) -> Figure:
    """Each measure (rows) under each predictive (columns) over the grid, the data on top.

    ``maps`` holds [R*R] scores per (predictive, measure), drawn gray with
    ``origin="lower"``: black is the row's lowest score, i.e. confident; one scale per measure
    (its colorbar), shared by the predictives so they compare. The encoded test set (``codes``
    [M, 2], at most ``max_points`` drawn with ``seed``) is scattered on top by class, its convex
    hull outlined, and ``confident`` (predictive -> grid indices) marked with red crosses.
    """
    _resolution(resolution, bound)
    planes = {(p, m): grid_map(maps[p, m], resolution, f"maps[{p!r}, {m!r}]")
              for p in predictives for m in measures}
    points, labels = _codes(codes, code_labels, classes)
    outline = hull_outline(points)
    shown = np.arange(len(points))
    if len(points) > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(len(points), max_points,
                                                           replace=False))
    axis_values = grid_axis(resolution, bound)
    marks = {}
    for predictive, indices in (confident or {}).items():
        index = torch.as_tensor(indices).detach().cpu().long().numpy().reshape(-1)
        marks[predictive] = np.stack([axis_values[index % resolution],
                                      axis_values[index // resolution]], axis=1)
    colours = plot.palette(len(classes))
    rows, columns = len(measures), len(predictives)
    figure, axes = plt.subplots(rows, columns, squeeze=False, sharex=True, sharey=True,
                                layout="constrained",
                                figsize=(3.1 * columns + 1.6, 3.0 * rows + 1.2))
    extent = map_extent(resolution, bound)
    for row, measure in enumerate(measures):
        low = min(float(planes[p, measure].min()) for p in predictives)
        high = max(float(planes[p, measure].max()) for p in predictives)
        norm = Normalize(low, high if high > low else low + 1.0)
        for column, predictive in enumerate(predictives):
            axis = axes[row, column]
            axis.imshow(planes[predictive, measure], cmap=MAP_CMAP, norm=norm, origin="lower",
                        extent=extent, interpolation="nearest")
            for label, colour in enumerate(colours):
                chosen = shown[labels[shown] == label]
                axis.scatter(points[chosen, 0], points[chosen, 1], s=3, color=colour,
                             alpha=0.6, linewidths=0, rasterized=True)
            axis.plot(outline[:, 0], outline[:, 1], color="white", linewidth=2.2)
            axis.plot(outline[:, 0], outline[:, 1], color="black", linewidth=0.9,
                      linestyle="--")
            if predictive in marks:
                axis.scatter(marks[predictive][:, 0], marks[predictive][:, 1], **FAR_STYLE)
            axis.set_xlim(-bound, bound)
            axis.set_ylim(-bound, bound)
            axis.set_aspect("equal")
            if row == 0:
                axis.set_title(predictive, fontsize=10)
            if row == rows - 1:
                axis.set_xlabel("z0")
            if column == 0:
                axis.set_ylabel(f"{measure}\nz1")
        bar = figure.colorbar(ScalarMappable(norm, MAP_CMAP), ax=axes[row, :], shrink=0.85,
                              aspect=25, pad=0.02)
        bar.set_label(f"{measure} (dark = certain)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour, markersize=5, label=name)
               for name, colour in zip(classes, colours, strict=True)]
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.0,
                          label="convex hull of the codes"))
    if marks:
        handles.append(Line2D([], [], marker="X", linestyle="", markerfacecolor="red",
                              markeredgecolor="white", markersize=8,
                              label="most confident far from the data"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
                  fontsize="x-small")
    outside = int((np.abs(points) > bound).any(1).sum())
    note = f"{len(shown)} of {len(points)} test codes drawn"
    if outside:
        note += f"; {outside} lie outside the grid and are not shown"
    figure.suptitle(f"{title}\n{note}" if title else note, fontsize=10)
    return figure


# --- 2. the decoded plane


def grid_mosaic(images: Any, resolution: int, bound: float, max_tiles: int = 20,
                title: str = "") -> Figure:
    """The decoded images of every k-th grid row and column, laid out as the latent plane.

    ``images`` is [R*R, C, H, W] in grid order; k is the smallest step that keeps at most
    ``max_tiles`` tiles per side. Tiles are centred on their grid point and z1 increases
    upward, like the maps.
    """
    _resolution(resolution, bound)
    pictures = plot.images(images, "grid images", 4, "[R*R, C, H, W]")
    if len(pictures) != resolution ** 2:
        raise DataError(f"grid images holds {len(pictures)} images; a {resolution}x{resolution} "
                        f"grid has {resolution ** 2}, in grid order")
    step = -(-resolution // max(1, max_tiles))
    picks = np.arange(0, resolution, step)
    tiles = pictures.reshape(resolution, resolution, *pictures.shape[1:])[np.ix_(picks, picks)]
    tiles = tiles[::-1]  # the highest z1 on top
    count, height, width = len(picks), *pictures.shape[1:3]
    mosaic = np.swapaxes(tiles, 1, 2).reshape(count * height, count * width,
                                              *pictures.shape[3:])
    axis_values = grid_axis(resolution, bound)
    half = step * bound / (resolution - 1)
    low, high = axis_values[picks[0]] - half, axis_values[picks[-1]] + half
    figure, axis = plt.subplots(figsize=(7.0, 7.0), layout="constrained")
    plot.show_image(axis, mosaic, extent=(low, high, low, high), interpolation="antialiased")
    axis.set_xlabel("z0")
    axis.set_ylabel("z1")
    shown = f"{count}x{count} of the {resolution}x{resolution} grid points" + (
        f" (one in {step} per side)" if step > 1 else "")
    axis.set_title(f"{title}\n{shown}" if title else shown, fontsize=10)
    return figure


# --- 3. confident far from the data


def confident_images(images: Mapping[str, Any], captions: Mapping[str, Sequence[str]],
                     title: str = "") -> Figure:
    """Decoded images in rows (one per key, e.g. a predictive), each tile captioned.

    ``images`` maps a row name to [K, C, H, W]; ``captions`` gives K texts for that row (e.g.
    the predicted class). A row with no images says so instead of leaving a blank.
    """
    rows = {}
    for name, value in images.items():
        pictures = torch.as_tensor(value)
        if pictures.ndim == 4 and len(pictures) == 0:
            rows[name] = np.zeros((0, 1, 1))
            continue
        rows[name] = plot.images(value, f"images[{name!r}]", 4, "[K, C, H, W]")
    columns = max(MIN_COLUMNS, max(len(pictures) for pictures in rows.values()))
    figure, axes = plt.subplots(len(rows), columns, squeeze=False, layout="constrained",
                                figsize=(1.05 * columns + 1.4, 1.45 * len(rows) + 0.6))
    for row, (name, pictures) in enumerate(rows.items()):
        for column in range(columns):
            axis = axes[row, column]
            plot.bare(axis)
            axis.patch.set_visible(False)  # the note of an empty row runs across its slots
            if column < len(pictures):
                plot.show_image(axis, pictures[column])
                axis.set_xlabel(captions[name][column], fontsize=8, labelpad=2)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        if not len(pictures):
            note = axes[row, 0].text(0.0, 0.5, "no grid point far enough from the data",
                                     transform=axes[row, 0].transAxes, fontsize=8,
                                     va="center")
            note.set_in_layout(False)  # it may run over the empty slots beside it
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


# --- 4. interpolations


def strip_steps(steps: int, max_tiles: int = 9) -> np.ndarray:
    """Indices of at most ``max_tiles`` steps spread evenly along a path, both ends included
    (and, for odd steps and tiles, the exact midpoint)."""
    if steps <= max_tiles:
        return np.arange(steps)
    return np.unique(np.rint(np.linspace(0, steps - 1, max_tiles)).astype(int))


def interpolation(strips: Mapping[str, Any], scores: Mapping[tuple[str, str, str], Any],
                  lines: Sequence[str], measures: Sequence[str], title: str = "",
                  max_tiles: int = 9) -> Figure:
    """One pair's interpolations (columns, e.g. pixel and latent) with their scores below.

    ``strips`` maps a path to its [steps, C, H, W] images, shown as a strip of at most
    ``max_tiles`` (their position t under each); ``scores`` holds [steps] per (path, line,
    measure), drawn under the strip, a panel per measure sharing its y axis across paths and a
    line per entry of ``lines`` (e.g. architectures). The dotted line marks the midpoint.
    """
    pictures = {path: plot.images(value, f"strips[{path!r}]", 4, "[steps, C, H, W]")
                for path, value in strips.items()}
    curves = {}
    for path, images in pictures.items():
        if len(images) < 2:
            raise DataError(f"strips[{path!r}] has {len(images)} step(s); a path needs two ends")
        for line in lines:
            for measure in measures:
                key = (path, line, measure)
                curves[key] = plot.array(scores[key], f"scores[{key}]", 1, "[steps]")
                if len(curves[key]) != len(images):
                    raise DataError(f"scores[{key}] has {len(curves[key])} values for "
                                    f"{len(images)} steps; give one per step")
    colours = plot.palette(len(lines))
    figure, axes = plt.subplots(1 + len(measures), len(pictures), squeeze=False,
                                layout="constrained", sharey="row",
                                height_ratios=[1.0] + [1.5] * len(measures),
                                figsize=(5.0 * len(pictures) + 1.8, 1.2 + 1.7 * len(measures)))
    for column, (path, images) in enumerate(pictures.items()):
        picks = strip_steps(len(images), max_tiles)
        height, width = images.shape[1:3]
        gap = np.ones((height, TILE_GAP, *images.shape[3:]))
        strip = np.concatenate([part for index in picks for part in (images[index], gap)][:-1],
                               axis=1)
        axis = axes[0, column]
        plot.show_image(axis, strip, aspect="equal")
        axis.set_xticks([i * (width + TILE_GAP) + (width - 1) / 2 for i in range(len(picks))],
                        [f"{index / (len(images) - 1):.2f}" for index in picks], fontsize=7)
        axis.set_yticks([])
        axis.tick_params(length=0, pad=1)
        axis.set_title(f"{path} path", fontsize=10)
        positions = np.arange(len(images)) / (len(images) - 1)
        for row, measure in enumerate(measures, start=1):
            axis = axes[row, column]
            for number, line in enumerate(lines):
                axis.plot(positions, curves[path, line, measure], color=colours[number],
                          linewidth=1.4, marker="o", markersize=2, label=line)
            axis.axvline(0.5, color="0.5", linestyle=":", linewidth=1.0)
            axis.set_xlim(0.0, 1.0)
            if column == 0:
                axis.set_ylabel(measure, fontsize=9)
            if row == len(measures):
                axis.set_xlabel("position along the path t (dotted: midpoint)", fontsize=8)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="x-small")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def midpoint_histograms(scores: Mapping[tuple[str, str], Any], measures: Sequence[str],
                        paths: Sequence[str], title: str = "", bins: int = 20) -> Figure:
    """Each measure's scores at the midpoints of every pair, one panel per measure, a histogram
    per path over shared bins, medians dashed."""
    colours = {path: PATH_COLOURS.get(path, colour)
               for path, colour in zip(paths, plot.palette(len(paths)), strict=True)}
    figure, axes = plt.subplots(1, len(measures), squeeze=False, layout="constrained",
                                figsize=(3.8 * len(measures) + 0.4, 3.1))
    for axis, measure in zip(axes[0], measures, strict=True):
        values = {path: plot.array(scores[measure, path], f"scores[{measure!r}, {path!r}]", 1,
                                   "[pairs]") for path in paths}
        edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=bins)
        for path, scored in values.items():
            median = float(np.median(scored))
            axis.hist(scored, bins=edges, histtype="stepfilled", alpha=0.25,
                      color=colours[path])
            axis.hist(scored, bins=edges, histtype="step", linewidth=1.4, color=colours[path],
                      label=f"{path} (median {median:.3f})")
            axis.axvline(median, color=colours[path], linestyle="--", linewidth=1.0)
        axis.set_xlabel(f"{measure} at the midpoint", fontsize=9)
        axis.legend(fontsize="x-small")
    axes[0, 0].set_ylabel("pairs")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
