"""The recurrent study's page: which explanation method works for which recurrent network.

It reads only ``RecurrentResults`` and is written by the page engine (``page.write_page``). Its
figures are named ``recurrent-*.png``, so it shares ``figures/`` with a ``report.html`` in the
same directory without touching that page's.
"""

from __future__ import annotations

import fractions
from pathlib import Path
from typing import Any

import pandas as pd

from trustmap.atomic import Outputs
from trustmap.report import checks, recurrent_figures
from trustmap.report.page import Job, Section, Table, build_table, ordered, write_page
from trustmap.report.results import (
    ACCURACY_COLUMNS,
    RECURRENT_AOPC_COLUMNS,
    RECURRENT_CURVE_COLUMNS,
    REGION_COLUMNS,
    STEP_COLUMNS,
    RecurrentResults,
)

RECURRENT_NAME = "recurrent.html"
TEMPLATE = "recurrent.html.j2"
FIGURE_PREFIX = "recurrent-"
DEFAULT_TITLE = "trustmap recurrent relevance study"
REFERENCE_KEY = "seed_002_accuracy"
"""Header entry with seed 002's reported accuracies: quoted under the accuracy table as given."""
SPEED_COLUMNS = ("architecture", "method", "maps_per_second")
ROW_HEADERS = ("architecture", "method")
MORF = "morf"
ORDERS = (*recurrent_figures.ORDER_STYLES, recurrent_figures.RANDOM_ORDER)
SHAPES = {"examples": "E 1 H W", "example_masks": "bool E 1 H W", "maps": "E 1 H W"}
"""E: one example per entry of ``example_labels``; gray inputs, masks and maps alike."""


def write_recurrent_report(results: RecurrentResults, out_dir: Path | str,
                         outputs: Outputs | None = None) -> Path:
    """Write ``out_dir/recurrent.html`` and its ``figures/recurrent-*.png``; return the page.

    If any figure or the page fails, an earlier recurrent page in ``out_dir`` and every figure
    it points at are left as they were; other pages' figures are never touched.
    ``outputs``: the page changes together with them (``atomic.together``).
    """
    header = {k: v for k, v in results.header.items() if k != REFERENCE_KEY}
    return write_page(Path(out_dir) / RECURRENT_NAME, TEMPLATE, header,
                      DEFAULT_TITLE, lambda: sections(results), prefix=FIGURE_PREFIX,
                      outputs=outputs)


def check(results: RecurrentResults) -> None:
    """Fail before drawing anything if a field, an order or an example map is not there."""
    speed = {"speed": SPEED_COLUMNS} if len(results.speed) else {}
    checks.check(results, SHAPES, {
        "accuracy": ACCURACY_COLUMNS, "region": REGION_COLUMNS, "steps": STEP_COLUMNS,
        "aopc": RECURRENT_AOPC_COLUMNS, "curves": RECURRENT_CURVE_COLUMNS, **speed},
        {"region": ROW_HEADERS, "steps": [*ROW_HEADERS, "step"], "aopc": [*ROW_HEADERS, "order"],
         "speed": ROW_HEADERS}, nonempty=("architectures", "methods"),
        dims={"E": len(results.example_labels)})
    unknown = sorted((set(results.aopc["order"]) | set(results.curves["order"])) - set(ORDERS))
    if unknown:
        checks.fail(results, f"aopc or curves has unknown perturbation orders {unknown}; use "
                    f"{list(ORDERS)}")
    for key in [(a, m) for a in results.architectures for m in results.methods]:
        if results.example_labels and key not in results.maps:
            checks.fail(results, f"maps[{key[0]!r}, {key[1]!r}]: none; give every architecture "
                        "and method a map of the examples")


def sections(results: RecurrentResults) -> list[Section]:
    """The page's sections; the speed section only where the study timed the methods."""
    check(results)
    architectures, methods = results.architectures, results.methods
    heatmaps = [Job(
        f"heatmaps-{index}-{label}",
        f"example {index + 1} (label {label}): the input with its data region outlined, then "
        "each method's map under each architecture (red positive, blue negative)",
        lambda i=index, t=label: recurrent_figures.heatmap_grid(
            results.examples[i], results.example_masks[i],
            {key: maps[i] for key, maps in results.maps.items()}, architectures, methods,
            f"example {i + 1}: label {t}")) for index, label in enumerate(results.example_labels)]
    region = [Job(
        "region-share", "share of positive relevance in the data region per architecture, "
        "mean ± SEM over the test inputs; dashed: chance",
        lambda: recurrent_figures.region_shares(results.region, architectures, methods,
                                                results.chance))] if len(results.region) else []
    if len(results.steps):
        ideal = _ideal_steps(results)
        region.append(Job(
            "step-profile", f"share of relevance at each step of the inputs whose odd item is "
            f"the last block: a perfect map keeps it all in the shaded steps 1–{ideal}",
            lambda: recurrent_figures.step_profiles(results.steps, architectures, methods,
                                                    ideal)))
    faithfulness = [Job(
        "aopc-curves", "mean probability of the explained class as patches are removed, most "
        "relevant first (solid) and in a random order (dashed grey)",
        lambda: recurrent_figures.aopc_curves(results.curves, architectures, methods))] \
        if len(results.curves) else []
    reference = results.header.get(REFERENCE_KEY)
    sections = [
        Section("accuracy", "Accuracy", context={
            "dataset": results.dataset, "reference": _reference(reference),
            "accuracy_pivot": _accuracy_pivot(results, reference),
            "accuracy": _accuracy(results)}),
        Section("heatmaps", "Heatmaps", jobs=heatmaps),
        Section("region", "Relevance in the data region", "Data region", region, context={
            "chance": _fraction(results.chance),
            "ideal_steps": _ideal_steps(results) if len(results.steps) else None,
            "region": _region_pivot(results), "region_long": build_table(
                "region-all", ordered(results.region, ["architecture", "method"],
                                      _ranks(results)),
                directions={"share": 1, "share_pixels": 1}, group_by=["architecture"],
                row_headers=ROW_HEADERS)}),
        Section("faithfulness", "Faithfulness", jobs=faithfulness, context={
            "aopc": _aopc_pivot(results), "aopc_long": _aopc_long(results)}),
    ]
    if len(results.speed):
        sections.append(Section("speed", "Speed", context={"speed": _speed(results)}))
    return sections


def _ranks(results: RecurrentResults) -> dict[str, list[str]]:
    """The study's order of architectures, methods and perturbation orders (MoRF first)."""
    return {"architecture": results.architectures, "method": results.methods,
            "order": [MORF, *recurrent_figures.ORDER_STYLES]}


def _ideal_steps(results: RecurrentResults) -> int:
    """How many leading steps the data region spans in the profile's inputs: the odd item is
    the last block, so the first ``chance`` of the width (2 of 3 blocks)."""
    return round(results.chance * int(results.steps["step"].max()))


def _fraction(value: float) -> str:
    """2/3 rather than 0.667 where the chance level is a simple fraction."""
    simple = fractions.Fraction(value).limit_denominator(12)
    return f"{simple.numerator}/{simple.denominator}" if abs(float(simple) - value) < 1e-9 \
        and simple.denominator > 1 else f"{value:.3f}"


def _reference(value: Any) -> str | None:
    """A sentence the header gives instead of seed 002's accuracies per architecture."""
    return None if value is None or isinstance(value, dict) else str(value)


def _accuracy_pivot(results: RecurrentResults, reference: Any) -> Table:
    """Seed 002's layout: a row per accuracy (this run's test and validation, the seed's
    reported test accuracy where the header has it), a column per architecture."""
    frame = results.accuracy.set_index("architecture")
    rows = [{"": f"{results.dataset}: test", **frame["accuracy"].to_dict()},
            {"": f"{results.dataset}: validation", **frame["val_accuracy"].to_dict()}]
    if isinstance(reference, dict):
        rows.append({"": "seed 002, reported test", **reference})
    columns = ["", *[a for a in results.architectures if a in frame.index]]
    return build_table("accuracy-pivot", pd.DataFrame(rows).reindex(columns=columns),
                       directions={}, row_headers=("",))


def _accuracy(results: RecurrentResults) -> Table:
    return build_table("accuracy", ordered(results.accuracy, ["architecture"], _ranks(results)),
                       directions={"val_accuracy": 1, "accuracy": 1}, group_by=["dataset"],
                       row_headers=("architecture",))


def _pivot(results: RecurrentResults, frame: pd.DataFrame, values: str,
           index: str = "method") -> pd.DataFrame:
    """``values`` with a row per ``index`` and a column per architecture, in the study's order."""
    if frame.empty:
        return pd.DataFrame(columns=[index])
    pivot = frame.pivot_table(index=index, columns="architecture", values=values,
                              aggfunc="first", sort=False)
    rows = [m for m in dict.fromkeys([*results.methods, *pivot.index]) if m in pivot.index]
    columns = [a for a in dict.fromkeys([*results.architectures, *pivot.columns])
               if a in pivot.columns]
    pivot = pivot.reindex(index=rows, columns=columns)
    pivot.columns = [str(c) for c in pivot.columns]
    return pivot.reset_index()


def _region_pivot(results: RecurrentResults) -> Table:
    pivot = _pivot(results, results.region, "share")
    return build_table("region-share", pivot, directions=dict.fromkeys(pivot.columns[1:], 1),
                       row_headers=("method",))


def _aopc_pivot(results: RecurrentResults) -> Table:
    """MoRF AOPC of each method per architecture; other orders (the random reference) below,
    never marked best."""
    frame = ordered(results.aopc, ["order", "method"], _ranks(results))
    orders = frame["order"].tolist()
    names = [m if o in (MORF, m) else f"{m} ({o})"
             for m, o in zip(frame["method"], orders, strict=True)]
    morf = {name for name, order in zip(names, orders, strict=True) if order == MORF}
    pivot = _pivot(results, frame.assign(method=names), "aopc")
    return build_table("aopc", pivot, directions=dict.fromkeys(pivot.columns[1:], 1),
                       row_headers=("method",), competing=pivot["method"].isin(morf))


def _aopc_long(results: RecurrentResults) -> Table:
    frame = ordered(results.aopc, ["architecture", "order", "method"], _ranks(results))
    return build_table("aopc-all", frame, directions={"aopc": 1, "flips_to_change": -1},
                       group_by=["architecture"], row_headers=ROW_HEADERS,
                       competing=frame["order"] == MORF)


def _speed(results: RecurrentResults) -> Table:
    pivot = _pivot(results, results.speed, "maps_per_second")
    return build_table("speed", pivot, directions=dict.fromkeys(pivot.columns[1:], 1),
                       row_headers=("method",))
