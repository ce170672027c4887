"""The influence study's page: which pixels move an ensemble's class probabilities, its metrics
and its uncertainty, by entropic projection (seed 004, after the ethik library).

It reads only ``InfluenceResults`` and is written by the page engine (``page.write_page``). Its
figures are named ``influence-*.png``, so it shares ``figures/`` with other pages in the same
directory without touching theirs. The run's page shows the same ``sections``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from trustmap.atomic import Outputs
from trustmap.errors import DataError
from trustmap.explain.influence import ALPHA
from trustmap.report import checks, influence_figures, plot
from trustmap.report.page import Job, Section, build_table, write_page
from trustmap.report.results import PROJECTION_KEYS, InfluenceResults

INFLUENCE_NAME = "influence.html"
TEMPLATE = "influence.html.j2"
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
SHAPES = {"mean_image": "H W", "influence": "K H W", "member_std": "K H W",
          "performance": "H W", "uncertainty": "H W", "constant": "bool H W",
          "not_converged": "bool H W", "curve_targets": "T Q", "curve_values": "T Q K",
          "curve_converged": "bool T Q", "member_maps": "_ K H W"}
"""K: one map per class; Q: one curve per entry of ``curve_pixels``."""


def write_influence_report(results: InfluenceResults, out_dir: Path | str,
                         outputs: Outputs | None = None) -> Path:
    """Write ``out_dir/influence.html`` and its ``figures/influence-*.png``; return the page.

    If any figure or the page fails, an earlier influence page in ``out_dir`` and every figure
    it points at are left as they were; other pages' figures are never touched. ``outputs``:
    the page changes together with them (``atomic.together``).
    """
    return write_page(Path(out_dir) / INFLUENCE_NAME, TEMPLATE, results.header,
                      DEFAULT_TITLE, lambda: sections(results), prefix=FIGURE_PREFIX,
                      outputs=outputs)


def check(results: InfluenceResults) -> None:
    """Fail before drawing anything if a field is not what the page reads, or the projection's
    summary does not describe its maps."""
    found = checks.check(results, SHAPES, {"accuracy": ACCURACY_COLUMNS,
                                           "timings": TIMING_COLUMNS}, nonempty=("classes",),
                         dims={"K": len(results.classes), "Q": len(results.curve_pixels)})
    alpha = results.header.get("alpha", ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 0.5:
        checks.fail(results, f"header['alpha'] is {alpha!r}; expected the projection's quantile "
                    "level, a number in (0, 0.5)")
    if bool((results.member_std < 0).any()):
        checks.fail(results, "member_std holds negative values; a standard deviation is never "
                    "below zero")
    for pixel in results.curve_pixels:
        if not (0 <= pixel[0] < found["H"] and 0 <= pixel[1] < found["W"]):
            checks.fail(results, f"curve_pixels holds {tuple(pixel)}, outside the "
                        f"{found['H']}x{found['W']} maps")
    missing = [key for key in PROJECTION_KEYS if key not in results.projection]
    if missing:
        checks.fail(results, f"projection lacks the keys {missing}; give Projection.summary() of "
                    "the maps' projection")
    for key, expected in (("pixels", found["H"] * found["W"]),
                          ("constant_pixels", int(results.constant.sum())),
                          ("pixels_not_converged", int(results.not_converged.sum()))):
        if results.projection[key] != expected:
            checks.fail(results, f"projection[{key!r}] is {results.projection[key]} but the maps "
                        f"and masks give {expected}; the summary and the masks must come from "
                        "the same projection")


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


def _map_jobs(results: InfluenceResults) -> dict[str, list[Job]]:
    """The figures of each section with maps: influence, spread, performance, uncertainty."""
    constant, missed = results.constant, results.not_converged
    masks = (f"grey: the {int(constant.sum())} constant pixels (exactly 0); ×: the "
             f"{int(missed.sum())} pixels whose tilt did not converge at some τ")
    sense = influence_figures.metric_sense
    senses = "; ".join(f"{name}: positive = {sense(name)} when the pixel goes up"
                       for name in results.performance)

    def changes(name: str, maps: dict[str, torch.Tensor], caption: str) -> list[Job]:
        return [Job(name, f"{caption}; {masks}", lambda: influence_figures.change_maps(
            maps, {key: influence_figures.change_label(key) for key in maps}, constant, missed,
            title=f"influence on {name}"))] if maps else []

    return {
        "influence": [Job(
            "influence", "change of the ensemble's mean probability of each class when the pixel "
            "goes from its low to its high side (τ = +1 minus τ = −1): red, the class gains; "
            f"blue, it loses; one scale, ±{plot.limit(results.influence):.3g}, shared by all "
            f"{len(results.classes)} classes; {masks}",
            lambda: influence_figures.influence_maps(results.influence, results.classes,
                                                     constant, missed,
                                                     title="influence on each class"))],
        "spread": [Job(
            "spread", "std over the ensemble's members of each member's influence map, one "
            f"scale from 0 to {float(results.member_std.max()):.3g} for all classes: where it is "
            f"comparable to |influence| the influence itself is uncertain; {masks}",
            lambda: influence_figures.spread_maps(results.member_std, results.classes, constant,
                                                  missed, title="spread of the influence"))],
        "performance": changes("performance", results.performance,
                               "change of each metric of the ensemble, τ = +1 minus τ = −1, each "
                               f"on its own symmetric scale ({senses})"),
        "uncertainty": changes("uncertainty", results.uncertainty,
                               "change of the mean of each uncertainty measure, τ = +1 minus "
                               "τ = −1, each on its own symmetric scale: positive, the ensemble "
                               "is less sure when the pixel goes up"),
    }


def sections(results: InfluenceResults) -> list[Section]:
    """The page's sections, on this page or the run's."""
    check(results)
    alpha = float(results.header.get("alpha", ALPHA))
    jobs = _map_jobs(results)
    curves = [Job(
        "curves", "the ensemble's mean probability of every class against each curve pixel's "
        "target mean, from τ = −1 to τ = +1 (dotted: the pixel's test-set mean, τ = 0; ×: points "
        "whose tilt did not converge); first panel: the mean image with the curve pixels numbered",
        lambda: influence_figures.influence_curves(
            results.curve_targets, results.curve_values, results.curve_converged,
            results.curve_pixels, results.classes, results.mean_image,
            title="probabilities along the projection"))] if results.curve_pixels else []
    projection = pd.DataFrame({"quantity": [PROJECTION_LABELS[key] for key in PROJECTION_KEYS],
                               "count": [results.projection[key] for key in PROJECTION_KEYS]})
    return [
        Section("overview", "Overview", context={
            "low": f"{alpha:g}", "high": f"{1 - alpha:g}", "projection": results.projection,
            "height": int(results.influence.shape[1]), "width": int(results.influence.shape[2]),
            "projection_table": build_table("projection", projection, directions={},
                                            row_headers=("quantity",)),
            "accuracy": build_table("accuracy", results.accuracy.reindex(
                columns=list(ACCURACY_COLUMNS)), directions={"accuracy": 1},
                row_headers=("model",)),
            "timings": build_table("timings", results.timings.reindex(
                columns=list(TIMING_COLUMNS)), directions={}, row_headers=("step",))}),
        Section("influence", "Influence maps", jobs=jobs["influence"],
                context={"classes": len(results.classes)}),
        Section("spread", "Spread across members", jobs=jobs["spread"], context={
            "share": f"{CERTAIN_SHARE:.0%}", "certainty": build_table(
                "certainty", certainty(results.influence, results.member_std, results.classes),
                directions={}, row_headers=("class",))}),
        Section("performance", "Performance maps", "Performance", jobs["performance"], context={
            "metrics": [{"name": name, "sense": influence_figures.metric_sense(name)}
                        for name in results.performance]}),
        Section("uncertainty", "Uncertainty influence", "Uncertainty", jobs["uncertainty"],
                context={"measures": list(results.uncertainty)}),
        Section("curves", "Curves", jobs=curves, context={"curves": len(results.curve_pixels)}),
    ]
