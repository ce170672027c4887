"""The latent-map study's page: where in a VAE's 2-D latent space a classifier is sure.

It reads only ``LatentResults`` and is written like ``report.html`` (``html.write_page``):
figures staged, then the page atomically. Its figures are named ``latent-*.png``, so it can
share ``figures/`` with other pages in the same directory without touching theirs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
import torch

from trustmap.errors import TrustmapError
from trustmap.report import latent_figures
from trustmap.report.html import (
    Section,
    Table,
    build_table,
    page_header,
    render_page,
    write_page,
)
from trustmap.report.results import LATENT_SHARE_COLUMNS, MIDPOINT_COLUMNS, LatentResults

LATENT_NAME = "latent.html"
FIGURE_PREFIX = "latent-"
DEFAULT_TITLE = "trustmap latent-space uncertainty maps"
DEFAULT_PREDICTIVE = "ensemble"
"""The predictive whose scores the interpolation figures show, where an architecture has it."""
PATHS = ("pixel", "latent")
FAR_MEASURE = "entropy"
"""The measure ``confident`` ranks by, printed under its images (else the first measure)."""
MAX_PAIRS = 4
"""Example interpolations drawn; the midpoint histograms and table cover every pair."""
SHARE_TABLE = ("architecture", "predictive", "measure", "share", "share_near", "share_far",
               "threshold")
ROW_HEADERS = ("architecture", "predictive", "measure")


def write_latent_report(results: LatentResults, out_dir: Path | str) -> Path:
    """Write ``out_dir/latent.html`` and its ``figures/latent-*.png``; return the page.

    If any figure or the page fails, an earlier latent page in ``out_dir`` and every figure it
    points at are left as they were; other pages' figures are never touched.
    """
    _check(results)
    return write_page(Path(out_dir) / LATENT_NAME, lambda: _plan_figures(results),
                      lambda sections: _render(results, sections), prefix=FIGURE_PREFIX)


def scored_predictives(results: LatentResults, architecture: str) -> list[str]:
    """The predictives ``architecture`` was scored under, in the study's order (one without
    dropout has no MC dropout)."""
    return [p for p in results.predictives
            if any((architecture, p, m) in results.maps for m in results.measures)]


def shown_predictive(results: LatentResults, architecture: str) -> str:
    """Whose scores the interpolations show: "ensemble" if scored, else the first."""
    scored = scored_predictives(results, architecture)
    return DEFAULT_PREDICTIVE if DEFAULT_PREDICTIVE in scored else scored[0]


# --- checks: everything the page reads, before anything is drawn


def _fail(message: str) -> NoReturn:
    raise TrustmapError(f"LatentResults.{message}")


def _shape(value: Any, name: str, shape: tuple[int | None, ...], layout: str,
           integer: bool = False) -> torch.Tensor:
    """``value`` as a tensor of ``shape`` (None: any size), finite, integer where asked."""
    if not isinstance(value, torch.Tensor):
        _fail(f"{name} is a {type(value).__name__}; expected a tensor {layout}")
    got = tuple(value.shape)
    if len(got) != len(shape) or any(s is not None and s != g
                                      for s, g in zip(shape, got, strict=True)):
        _fail(f"{name} has shape {list(got)}; expected {layout}")
    if integer and (value.is_floating_point() or value.dtype == torch.bool):
        _fail(f"{name} is {value.dtype}; expected integer {layout}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        _fail(f"{name} holds NaN or infinite values; fix the computation that made it")
    return value


def _check(results: LatentResults) -> None:
    """Fail before drawing anything if a table, map or image is not what the page reads."""
    if not results.architectures or not results.predictives or not results.measures:
        _fail("architectures, predictives and measures must not be empty; the study must fill "
              "them before writing a report")
    if not results.classes:
        _fail("classes is empty; give the class names the codes and predictions index")
    resolution, bound = results.resolution, results.bound
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        _fail(f"resolution is {resolution!r}; expected an integer >= 2 (points per grid side)")
    if isinstance(bound, bool) or not isinstance(bound, int | float) \
            or not (math.isfinite(bound) and bound > 0):
        _fail(f"bound is {bound!r}; expected a finite number > 0 (the grid spans "
              "[-bound, bound]^2)")
    points = resolution ** 2
    codes = _shape(results.codes, "codes", (None, 2), "[M, 2] latent codes")
    if len(codes) < 3:
        _fail(f"codes holds {len(codes)} code(s); the convex hull needs at least 3")
    labels = _shape(results.code_labels, "code_labels", (len(codes),),
                    f"[{len(codes)}] one class index per code", integer=True)
    _class_indices(labels, "code_labels", len(results.classes))
    images = _shape(results.grid_images, "grid_images", (points, None, None, None),
                    f"[{points}, C, H, W] one decoded image per grid point")
    if images.shape[1] not in (1, 3):
        _fail(f"grid_images has {images.shape[1]} channels; expected 1 (gray) or 3 (RGB)")
    near = _shape(results.near, "near", (points,), f"[{points}] bool, one per grid point")
    if near.dtype != torch.bool:
        _fail(f"near is {near.dtype}; expected a bool tensor [{points}]")
    _check_maps(results, points)
    _check_tables(results)
    _check_paths(results)


def _class_indices(values: torch.Tensor, name: str, classes: int) -> None:
    if len(values) and (int(values.min()) < 0 or int(values.max()) >= classes):
        _fail(f"{name} holds classes {int(values.min())}..{int(values.max())} but there are "
              f"{classes} class names")


def _check_maps(results: LatentResults, points: int) -> None:
    known = (set(results.architectures), set(results.predictives), set(results.measures))
    for key in results.maps:
        if len(key) != 3 or any(part not in names for part, names in zip(key, known,
                                                                          strict=True)):
            _fail(f"maps has the key {key!r}, not an (architecture, predictive, measure) of "
                  "this study's lists")
    for architecture in results.architectures:
        scored = scored_predictives(results, architecture)
        if not scored:
            _fail(f"maps has nothing for the architecture {architecture!r}; score its grid or "
                  "leave it out of architectures")
        for predictive in scored:
            for measure in results.measures:
                key = (architecture, predictive, measure)
                if key not in results.maps:
                    _fail(f"maps[{key!r}]: none; every predictive scored must have every "
                          "measure")
                _shape(results.maps[key], f"maps[{key!r}]", (points,),
                       f"[{points}] float scores in grid order")
            pair = (architecture, predictive)
            if pair not in results.predicted:
                _fail(f"predicted[{pair!r}]: none; give the class of each grid image")
            _class_indices(_shape(results.predicted[pair], f"predicted[{pair!r}]", (points,),
                                  f"[{points}] class indices", integer=True),
                           f"predicted[{pair!r}]", len(results.classes))
    for pair, indices in results.confident.items():
        if pair not in results.predicted:
            _fail(f"confident has the key {pair!r} but no grid was scored under it")
        _shape(indices, f"confident[{pair!r}]", (None,), "[K] grid indices", integer=True)
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= points):
            _fail(f"confident[{pair!r}] holds indices outside the grid's {points} points")


def _check_tables(results: LatentResults) -> None:
    for name, columns, keys in (
            ("shares", LATENT_SHARE_COLUMNS, ["architecture", "predictive", "measure"]),
            ("midpoints", MIDPOINT_COLUMNS, ["architecture", "predictive", "measure", "path"])):
        frame = getattr(results, name)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            _fail(f"{name} lacks the columns {missing}; see trustmap.report.results for the "
                  "columns each table has")
        if frame.duplicated(keys).any():
            _fail(f"{name} has more than one row per {keys}; aggregate it first")
    unknown = sorted(set(results.midpoints["path"]) - set(PATHS))
    if unknown:
        _fail(f"midpoints has unknown paths {unknown}; use {list(PATHS)}")


def _paths(results: LatentResults) -> list[str]:
    """Interpolations the study drew examples of, pixel first."""
    return [path for path in PATHS if path in results.path_images]


def _midpoint_paths(results: LatentResults) -> list[str]:
    return [path for path in PATHS if any(key[3] == path for key in results.midpoint_scores)]


def _check_paths(results: LatentResults) -> None:
    for name in ("path_scores", "midpoint_scores"):
        for key in getattr(results, name):
            if not isinstance(key, tuple) or len(key) != 4:
                _fail(f"{name} has the key {key!r}; expected (architecture, predictive, "
                      "measure, path)")
    unknown = sorted(set(results.path_images) - set(PATHS))
    unknown += sorted({key[3] for key in [*results.path_scores, *results.midpoint_scores]
                       if key[3] not in PATHS})
    if unknown:
        _fail(f"path_images, path_scores or midpoint_scores name unknown paths {unknown}; use "
              f"{list(PATHS)}")
    pairs = len(results.path_labels)
    steps = {}
    for path in _paths(results):
        images = _shape(results.path_images[path], f"path_images[{path!r}]",
                        (pairs, None, None, None, None),
                        f"[{pairs}, steps, C, H, W]: one path per entry of path_labels")
        steps[path] = images.shape[1]
        if steps[path] < 2:
            _fail(f"path_images[{path!r}] has {steps[path]} step(s); a path needs two ends")
    if any(len(labels) != 2 for labels in results.path_labels):
        _fail("path_labels must hold (start class, end class) pairs")
    for key, scores in results.path_scores.items():
        if key[3] not in steps:
            _fail(f"path_scores has the key {key!r} but path_images has no such path")
        _shape(scores, f"path_scores[{key!r}]", (pairs, steps[key[3]]),
               f"[{pairs}, {steps[key[3]]}] scores along each example path")
    for key, scores in results.midpoint_scores.items():
        _shape(scores, f"midpoint_scores[{key!r}]", (None,), "[pairs] scores")
        if not len(scores):
            _fail(f"midpoint_scores[{key!r}] is empty; leave it out or score some pairs")
    for architecture in results.architectures:
        predictive = shown_predictive(results, architecture)
        for measure in results.measures:
            for path in _paths(results):
                key = (architecture, predictive, measure, path)
                if key not in results.path_scores:
                    _fail(f"path_scores[{key!r}]: none; the interpolation figures show it")
            for path in _midpoint_paths(results):
                key = (architecture, predictive, measure, path)
                if key not in results.midpoint_scores:
                    _fail(f"midpoint_scores[{key!r}]: none; the midpoint histograms show it")


# --- figures


def _plan_figures(results: LatentResults) -> list[Section]:
    """Every figure the page shows, grouped by section, as deferred drawing calls."""
    maps, mosaic, confident = Section("maps"), Section("mosaic"), Section("confident")
    for architecture in results.architectures:
        predictives = scored_predictives(results, architecture)
        maps.jobs.append((
            f"maps-{architecture}",
            f"{architecture}: each measure (rows) under each predictive (columns) over the "
            "decoded grid, dark = certain (one scale per measure); the encoded test set by "
            "class, its convex hull dashed, red crosses: the most confident grid points far "
            "from the data",
            lambda a=architecture, ps=predictives: latent_figures.uncertainty_maps(
                {(p, m): results.maps[a, p, m] for p in ps for m in results.measures}, ps,
                results.measures, results.resolution, results.bound, results.codes,
                results.code_labels, results.classes,
                {p: results.confident[a, p] for p in ps if (a, p) in results.confident},
                title=f"{a} on {results.dataset}")))
        far = [p for p in predictives if (architecture, p) in results.confident]
        if far:
            measure = _far_measure(results)
            confident.jobs.append((
                f"confident-{architecture}",
                f"{architecture}: the decoded grid points far from the data it is most sure "
                f"about, most confident first, each with the class it is given and its {measure}",
                lambda a=architecture, ps=far, m=measure: latent_figures.confident_images(
                    {p: results.grid_images[results.confident[a, p]] for p in ps},
                    {p: _far_captions(results, a, p, m) for p in ps},
                    title=f"{a}: confident far from the data")))
    mosaic.jobs.append((
        "mosaic", "the decoded latent plane: the VAE's image at grid points, laid out like the "
        "maps (z1 upward)",
        lambda: latent_figures.grid_mosaic(results.grid_images, results.resolution,
                                           results.bound, title="decoded grid")))
    return [maps, mosaic, confident, *_interpolation_figures(results)]


def _far_measure(results: LatentResults) -> str:
    return FAR_MEASURE if FAR_MEASURE in results.measures else results.measures[0]


def _far_captions(results: LatentResults, architecture: str, predictive: str,
                  measure: str) -> list[str]:
    indices = results.confident[architecture, predictive].tolist()
    predicted = results.predicted[architecture, predictive]
    scores = results.maps[architecture, predictive, measure]
    return [f"{results.classes[int(predicted[i])]}\n{float(scores[i]):.3f}" for i in indices]


def _interpolation_figures(results: LatentResults) -> tuple[Section, Section]:
    paths, histograms = Section("paths"), Section("midpoints")
    shown = {a: shown_predictive(results, a) for a in results.architectures}
    lines = {a: f"{a} ({p})" for a, p in shown.items()}
    for pair, (start, end) in enumerate(results.path_labels[:MAX_PAIRS]):
        if not _paths(results):
            break
        paths.jobs.append((
            f"path-{pair}",
            f"pair {pair + 1}, {start} to {end}: the images along each path (position t "
            "under each) and every measure along it, a line per architecture",
            lambda i=pair, s=start, e=end: latent_figures.interpolation(
                {path: results.path_images[path][i] for path in _paths(results)},
                {(path, lines[a], m): results.path_scores[a, p, m, path][i]
                 for path in _paths(results) for a, p in shown.items()
                 for m in results.measures},
                list(lines.values()), results.measures, title=f"pair {i + 1}: {s} → {e}")))
    if _midpoint_paths(results):
        for architecture, predictive in shown.items():
            histograms.jobs.append((
                f"midpoints-{architecture}",
                f"{architecture} ({predictive}): each measure at the midpoints of every pair, "
                "pixel against latent paths; dashed: medians",
                lambda a=architecture, p=predictive: latent_figures.midpoint_histograms(
                    {(m, path): results.midpoint_scores[a, p, m, path]
                     for m in results.measures for path in _midpoint_paths(results)},
                    results.measures, _midpoint_paths(results),
                    title=f"{a} ({p}): scores at the midpoints")))
    return paths, histograms


# --- the page


def _render(results: LatentResults, sections: list[Section]) -> str:
    title, items = page_header(results.header, DEFAULT_TITLE)
    near = int(results.near.sum())
    return render_page(
        "latent.html.j2",
        title=title,
        header=items,
        dataset=results.dataset,
        resolution=results.resolution,
        bound=f"{results.bound:g}",
        points=results.resolution ** 2,
        near=near,
        far=results.resolution ** 2 - near,
        codes=len(results.codes),
        far_measure=_far_measure(results),
        shown=[{"architecture": a, "predictive": shown_predictive(results, a)}
               for a in results.architectures],
        shares=_shares(results),
        constant=_constant_rows(results),
        midpoints=_midpoints(results),
        figures={section.key: section.drawn for section in sections},
    )


def _ordered(results: LatentResults, frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows in the study's order of architectures, predictives, measures and paths."""
    ranks = {"architecture": results.architectures, "predictive": results.predictives,
             "measure": results.measures, "path": list(PATHS)}

    def rank(column: pd.Series) -> pd.Series:
        known = {value: i for i, value in enumerate(dict.fromkeys(ranks[column.name]))}
        return column.map(lambda value: known.get(value, len(known)))

    return frame.sort_values(by, kind="stable", key=rank)


def _constant(results: LatentResults, key: tuple[str, str, str]) -> bool:
    """A map with one value over the whole grid (mutual information of a single network):
    its share says nothing about where the model is sure."""
    values = results.maps.get(key)
    return values is not None and bool(values.max() == values.min())


def _constant_rows(results: LatentResults) -> list[str]:
    return [f"{m} under {p} ({a})" for a, p, m in results.maps if _constant(results, (a, p, m))]


def _shares(results: LatentResults) -> Table:
    """Shares per architecture, predictive and measure; the largest share far from the data of
    each architecture marked (the finding), among maps that vary over the grid."""
    frame = _ordered(results, results.shares, ["architecture", "predictive", "measure"])
    frame = frame.reindex(columns=list(SHARE_TABLE))
    keys = list(zip(frame["architecture"], frame["predictive"], frame["measure"], strict=True))
    varying = pd.Series([not _constant(results, key) for key in keys])
    greyed = {(p, m) for a, p, m in keys if _constant(results, (a, p, m))}
    greyed = {pair for pair in greyed
              if all(_constant(results, (a, *pair)) for a, p, m in keys if (p, m) == pair)}
    return build_table("shares", frame, greyed, directions={"share_far": 1},
                       group_by=["architecture"], row_headers=ROW_HEADERS, competing=varying)


def _midpoints(results: LatentResults) -> Table:
    frame = _ordered(results, results.midpoints, ["architecture", "predictive", "measure", "path"])
    return build_table("midpoints", frame.reindex(columns=list(MIDPOINT_COLUMNS)), directions={},
                       row_headers=ROW_HEADERS)
