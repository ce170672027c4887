"""The influence study's page: which pixels move an ensemble's class probabilities, its metrics
and its uncertainty, by entropic projection (seed 004, after the ethik library).

It reads only ``InfluenceResults`` and is written like ``report.html`` (``html.write_page``):
figures staged, then the page atomically. Its figures are named ``influence-*.png``, so it can
share ``figures/`` with other pages in the same directory without touching theirs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
import torch

from trustmap.errors import DataError
from trustmap.explain.influence import ALPHA
from trustmap.report import influence_figures, plot
from trustmap.report.html import (
    Section,
    Table,
    build_table,
    page_header,
    render_page,
    write_page,
)
from trustmap.report.results import PROJECTION_KEYS, InfluenceResults

INFLUENCE_NAME = "influence.html"
FIGURE_PREFIX = "influence-"
DEFAULT_TITLE = "trustmap influence maps by entropic projection"
CERTAIN_SHARE = 0.1
"""The certainty summary reads pixels whose |influence| exceeds this share of the class's
largest: elsewhere the ratio std / |influence| divides by almost nothing."""
CERTAINTY_COLUMNS = ("class", "max_abs_influence", "pixels", "relative_std")
ACCURACY_COLUMNS = ("model", "accuracy")
TIMING_COLUMNS = ("step", "seconds")
PROJECTION_LABELS = {
    "pixels": "pixels",
    "constant_pixels": "constant pixels (no tilt, every map 0)",
    "pairs": "(τ, pixel) pairs solved",
    "pairs_at_bound": "pairs whose target is the pixel's minimum or maximum (exact limit)",
    "pairs_not_converged": "pairs that missed the tolerance",
    "pixels_not_converged": "pixels with such a pair",
    "max_iterations": "most Newton steps taken by a pair",
}


def write_influence_report(results: InfluenceResults, out_dir: Path | str) -> Path:
    """Write ``out_dir/influence.html`` and its ``figures/influence-*.png``; return the page.

    If any figure or the page fails, an earlier influence page in ``out_dir`` and every figure
    it points at are left as they were; other pages' figures are never touched.
    """
    _check(results)
    return write_page(Path(out_dir) / INFLUENCE_NAME, lambda: _plan_figures(results),
                      lambda sections: _render(results, sections), prefix=FIGURE_PREFIX)


def certainty(influence: torch.Tensor, member_std: torch.Tensor, classes: Sequence[str],
              share: float = CERTAIN_SHARE) -> pd.DataFrame:
    """How certain each class's influence is: a row per class with its largest |influence|,
    the number of pixels whose |influence| exceeds ``share`` of it, and the mean over those
    pixels of std / |influence| (near 0: the members agree; near 1 or more: the sign itself
    is in doubt). A class whose map is all 0 has no such pixels and a missing ratio.
    """
    size = torch.as_tensor(influence).to(torch.float64).abs()
    spread = torch.as_tensor(member_std).to(torch.float64)
    if size.dim() != 3 or spread.shape != size.shape or len(classes) != len(size):
        raise DataError(f"influence {tuple(size.shape)} and member_std {tuple(spread.shape)} "
                        f"must both be [K, H, W] with K = {len(classes)} class names")
    rows = []
    for name, magnitude, std in zip(classes, size, spread, strict=True):
        largest = float(magnitude.max())
        strong = magnitude > share * largest  # none where the map is all 0
        ratio = float((std[strong] / magnitude[strong]).mean()) if strong.any() else float("nan")
        rows.append((str(name), largest, int(strong.sum()), ratio))
    return pd.DataFrame(rows, columns=list(CERTAINTY_COLUMNS))


# --- checks: everything the page reads, before anything is drawn


def _fail(message: str) -> NoReturn:
    raise DataError(f"InfluenceResults.{message}")


def _tensor(value: Any, name: str, shape: tuple[int | None, ...], layout: str,
            boolean: bool = False) -> torch.Tensor:
    """``value`` as a tensor of ``shape`` (None: any size): finite floats, or bools if asked."""
    if not isinstance(value, torch.Tensor):
        _fail(f"{name} is a {type(value).__name__}; expected a tensor {layout}")
    got = tuple(value.shape)
    if len(got) != len(shape) or any(s is not None and s != g
                                      for s, g in zip(shape, got, strict=True)):
        _fail(f"{name} has shape {list(got)}; expected {layout}")
    if boolean and value.dtype != torch.bool:
        _fail(f"{name} is {value.dtype}; expected a bool tensor {layout}")
    if not boolean and not value.is_floating_point():
        _fail(f"{name} is {value.dtype}; expected a float tensor {layout}")
    if not boolean and not bool(torch.isfinite(value).all()):
        _fail(f"{name} holds NaN or infinite values; fix the computation that made it")
    return value


def _check(results: InfluenceResults) -> None:
    """Fail before drawing anything if a map, mask, table or curve is not what the page reads."""
    if not results.classes:
        _fail("classes is empty; give the name of every class the probabilities index")
    alpha = results.header.get("alpha", ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) \
            or not (math.isfinite(alpha) and 0 < alpha < 0.5):
        _fail(f"header['alpha'] is {alpha!r}; expected the projection's quantile level, a "
              "number in (0, 0.5)")
    count = len(results.classes)
    influence = results.influence
    if not isinstance(influence, torch.Tensor) or influence.dim() != 3:
        got = list(influence.shape) if isinstance(influence, torch.Tensor) \
            else type(influence).__name__
        _fail(f"influence is {got}; expected [K, H, W] with K = {count}, one map per class")
    height, width = influence.shape[1:]
    maps = f"[{count}, {height}, {width}]"
    _tensor(influence, "influence", (count, height, width), f"{maps}: one map per class")
    std = _tensor(results.member_std, "member_std", (count, height, width),
                  f"{maps} like influence")
    if bool((std < 0).any()):
        _fail("member_std holds negative values; a standard deviation is never below zero")
    plane = f"[{height}, {width}] like one influence map"
    _tensor(results.mean_image, "mean_image", (height, width), plane)
    for name in ("performance", "uncertainty"):
        for key, value in getattr(results, name).items():
            if not isinstance(key, str) or not key:
                _fail(f"{name} has the key {key!r}; expected a metric or measure name")
            _tensor(value, f"{name}[{key!r}]", (height, width), plane)
    constant = _tensor(results.constant, "constant", (height, width), f"{plane}, bool",
                       boolean=True)
    missed = _tensor(results.not_converged, "not_converged", (height, width), f"{plane}, bool",
                     boolean=True)
    _check_projection(results.projection, height * width, int(constant.sum()),
                      int(missed.sum()))
    for name, columns in (("accuracy", ACCURACY_COLUMNS), ("timings", TIMING_COLUMNS)):
        frame = getattr(results, name)
        if not isinstance(frame, pd.DataFrame):
            _fail(f"{name} is a {type(frame).__name__}; expected a DataFrame with the columns "
                  f"{list(columns)}")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            _fail(f"{name} lacks the columns {missing}; see trustmap.report.results")
    _check_curves(results, height, width)


def _check_projection(summary: dict[str, int], pixels: int, constant: int, missed: int) -> None:
    if not isinstance(summary, dict):
        _fail(f"projection is a {type(summary).__name__}; expected Projection.summary()'s dict")
    missing = [key for key in PROJECTION_KEYS if key not in summary]
    if missing:
        _fail(f"projection lacks the keys {missing}; give Projection.summary() of the maps' "
              "projection")
    for key in PROJECTION_KEYS:
        value = summary[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(f"projection[{key!r}] is {value!r}; expected a count, an integer >= 0")
    for key, expected in (("pixels", pixels), ("constant_pixels", constant),
                          ("pixels_not_converged", missed)):
        if summary[key] != expected:
            _fail(f"projection[{key!r}] is {summary[key]} but the maps and masks give "
                  f"{expected}; the summary and the masks must come from the same projection")


def _check_curves(results: InfluenceResults, height: int, width: int) -> None:
    pixels = results.curve_pixels
    for pixel in pixels:
        if not isinstance(pixel, tuple | list) or len(pixel) != 2 or not all(
                isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in pixel):
            _fail(f"curve_pixels holds {pixel!r}; expected (row, column) integer pairs")
        if not (0 <= pixel[0] < height and 0 <= pixel[1] < width):
            _fail(f"curve_pixels holds {tuple(pixel)}, outside the {height}x{width} maps")
    count, classes = len(pixels), len(results.classes)
    targets = _tensor(results.curve_targets, "curve_targets", (None, count),
                      f"[T, {count}]: each curve pixel's target mean per tau")
    steps = targets.shape[0]
    if pixels and steps < 2:
        _fail(f"curve_targets has {steps} tau(s); a curve needs at least 2")
    _tensor(results.curve_values, "curve_values", (steps, count, classes),
            f"[{steps}, {count}, {classes}]: the mean probability of each of the {classes} "
            "classes at every target")
    _tensor(results.curve_converged, "curve_converged", (steps, count),
            f"[{steps}, {count}] bool like curve_targets", boolean=True)


# --- figures


def _plan_figures(results: InfluenceResults) -> list[Section]:
    """Every figure the page shows, grouped by section, as deferred drawing calls."""
    sections = {key: Section(key) for key in ("influence", "spread", "performance",
                                              "uncertainty", "curves")}
    constant, missed = results.constant, results.not_converged
    masks = (f"grey: the {int(constant.sum())} constant pixels (exactly 0); ×: the "
             f"{int(missed.sum())} pixels whose tilt did not converge at some τ")
    limit = plot.limit(results.influence)
    sections["influence"].jobs.append((
        "influence", f"change of the ensemble's mean probability of each class when the pixel "
        f"goes from its low to its high side (τ = +1 minus τ = −1): red, the class gains; "
        f"blue, it loses; one scale, ±{limit:.3g}, shared by all {len(results.classes)} "
        f"classes; {masks}",
        lambda: influence_figures.influence_maps(results.influence, results.classes, constant,
                                                 missed, title="influence on each class")))
    largest = float(results.member_std.max())
    sections["spread"].jobs.append((
        "spread", f"std over the ensemble's members of each member's influence map, one scale "
        f"from 0 to {largest:.3g} for all classes: where it is comparable to |influence| the "
        f"influence itself is uncertain; {masks}",
        lambda: influence_figures.spread_maps(results.member_std, results.classes, constant,
                                              missed, title="spread of the influence")))
    if results.performance:
        sense = influence_figures.metric_sense
        senses = "; ".join(f"{name}: positive = {sense(name)} when the pixel goes up"
                           for name in results.performance)
        sections["performance"].jobs.append((
            "performance", f"change of each metric of the ensemble, τ = +1 minus τ = −1, each on "
            f"its own symmetric scale ({senses}); {masks}",
            lambda: influence_figures.change_maps(
                results.performance, {name: influence_figures.change_label(name)
                                      for name in results.performance},
                constant, missed, title="influence on performance")))
    if results.uncertainty:
        sections["uncertainty"].jobs.append((
            "uncertainty", "change of the mean of each uncertainty measure, τ = +1 minus "
            "τ = −1, each on its own symmetric scale: positive, the ensemble is less sure "
            f"when the pixel goes up; {masks}",
            lambda: influence_figures.change_maps(
                results.uncertainty, {name: influence_figures.change_label(name)
                                      for name in results.uncertainty},
                constant, missed, title="influence on uncertainty")))
    if results.curve_pixels:
        sections["curves"].jobs.append((
            "curves", "the ensemble's mean probability of every class against each curve "
            "pixel's target mean, from τ = −1 to τ = +1 (dotted: the pixel's test-set mean, "
            "τ = 0; ×: points whose tilt did not converge); first panel: the mean image with the "
            "curve pixels numbered",
            lambda: influence_figures.influence_curves(
                results.curve_targets, results.curve_values, results.curve_converged,
                results.curve_pixels, results.classes, results.mean_image,
                title="probabilities along the projection")))
    return list(sections.values())


# --- the page


def _render(results: InfluenceResults, sections: list[Section]) -> str:
    title, items = page_header(results.header, DEFAULT_TITLE)
    alpha = float(results.header.get("alpha", ALPHA))
    return render_page(
        "influence.html.j2",
        title=title,
        header=items,
        low=f"{alpha:g}",
        high=f"{1 - alpha:g}",
        classes=len(results.classes),
        height=int(results.influence.shape[1]),
        width=int(results.influence.shape[2]),
        projection=results.projection,
        projection_table=_projection(results),
        accuracy=build_table("accuracy", results.accuracy.reindex(columns=list(ACCURACY_COLUMNS)),
                             directions={"accuracy": 1}, row_headers=("model",)),
        timings=build_table("timings", results.timings.reindex(columns=list(TIMING_COLUMNS)),
                            directions={}, row_headers=("step",)),
        certainty=build_table("certainty", certainty(results.influence, results.member_std,
                                                     results.classes),
                              directions={}, row_headers=("class",)),
        share=f"{CERTAIN_SHARE:.0%}",
        metrics=[{"name": name, "sense": influence_figures.metric_sense(name)}
                 for name in results.performance],
        measures=list(results.uncertainty),
        curves=len(results.curve_pixels),
        figures={section.key: section.drawn for section in sections},
    )


def _projection(results: InfluenceResults) -> Table:
    frame = pd.DataFrame({"quantity": [PROJECTION_LABELS[key] for key in PROJECTION_KEYS],
                          "count": [results.projection[key] for key in PROJECTION_KEYS]})
    return build_table("projection", frame, directions={}, row_headers=("quantity",))
