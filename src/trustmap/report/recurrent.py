"""The recurrent study's page: which explanation method works for which recurrent network.

It reads only ``RecurrentResults`` and is written like ``report.html`` (``html.write_page``):
figures staged, then the page atomically. Its figures are named ``recurrent-*.png``, so it can
share ``figures/`` with a ``report.html`` in the same directory without touching that page's.
"""

from __future__ import annotations

import fractions
from pathlib import Path
from typing import Any

import pandas as pd

from trustmap.errors import TrustmapError
from trustmap.report import recurrent_figures
from trustmap.report.html import (
    Section,
    Table,
    build_table,
    page_header,
    render_page,
    write_page,
)
from trustmap.report.results import (
    ACCURACY_COLUMNS,
    RECURRENT_AOPC_COLUMNS,
    RECURRENT_CURVE_COLUMNS,
    REGION_COLUMNS,
    STEP_COLUMNS,
    RecurrentResults,
)

RECURRENT_NAME = "recurrent.html"
FIGURE_PREFIX = "recurrent-"
DEFAULT_TITLE = "trustmap recurrent relevance study"
REFERENCE_KEY = "seed_002_accuracy"
"""Header entry with seed 002's reported accuracies: quoted under the accuracy table as given."""
SPEED_COLUMNS = ("architecture", "method", "maps_per_second")
ROW_HEADERS = ("architecture", "method")
MORF = "morf"


def write_recurrent_report(results: RecurrentResults, out_dir: Path | str) -> Path:
    """Write ``out_dir/recurrent.html`` and its ``figures/recurrent-*.png``; return the page.

    If any figure or the page fails, an earlier recurrent page in ``out_dir`` and every figure
    it points at are left as they were; other pages' figures are never touched.
    """
    _check(results)
    return write_page(Path(out_dir) / RECURRENT_NAME, lambda: _plan_figures(results),
                      lambda sections: _render(results, sections), prefix=FIGURE_PREFIX)


def _check(results: RecurrentResults) -> None:
    """Fail before drawing anything if a table or the example maps are not what the page reads."""
    if not results.architectures or not results.methods:
        raise TrustmapError("RecurrentResults: architectures and methods must not be empty; "
                            "the study must fill them before writing a report")
    tables = {"accuracy": ACCURACY_COLUMNS, "region": REGION_COLUMNS, "steps": STEP_COLUMNS,
              "aopc": RECURRENT_AOPC_COLUMNS, "curves": RECURRENT_CURVE_COLUMNS}
    if len(results.speed):
        tables["speed"] = SPEED_COLUMNS
    for name, columns in tables.items():
        frame = getattr(results, name)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise TrustmapError(f"RecurrentResults.{name} lacks the columns {missing}; see "
                                "trustmap.report.results for the columns each table has")
    for name, keys in (("region", ["architecture", "method"]),
                       ("steps", ["architecture", "method", "step"]),
                       ("aopc", ["architecture", "method", "order"]),
                       ("speed", ["architecture", "method"])):
        frame = getattr(results, name)
        if len(frame) and frame.duplicated(keys).any():
            raise TrustmapError(f"RecurrentResults.{name} has more than one row per {keys}; "
                                "aggregate it first")
    orders = set(results.aopc["order"]) | set(results.curves["order"])
    unknown = sorted(orders - {*recurrent_figures.ORDER_STYLES, recurrent_figures.RANDOM_ORDER})
    if unknown:
        raise TrustmapError(f"RecurrentResults has unknown perturbation orders {unknown}; use "
                            f"{[*recurrent_figures.ORDER_STYLES, recurrent_figures.RANDOM_ORDER]}")
    _check_examples(results)


def _check_examples(results: RecurrentResults) -> None:
    shape = tuple(results.examples.shape)
    if len(shape) != 4 or shape[1] != 1:
        raise TrustmapError(f"RecurrentResults.examples has shape {shape}; expected "
                            "[E, 1, H, W] gray inputs")
    if len(results.example_labels) != shape[0]:
        raise TrustmapError(f"RecurrentResults has {len(results.example_labels)} example labels "
                            f"for {shape[0]} examples; give one per example")
    if tuple(results.example_masks.shape) != shape:
        raise TrustmapError(f"RecurrentResults.example_masks has shape "
                            f"{tuple(results.example_masks.shape)}, the examples {shape}")
    if not shape[0]:
        return
    for architecture in results.architectures:
        for method in results.methods:
            found = results.maps.get((architecture, method))
            if found is None or tuple(found.shape) != shape:
                got = "none" if found is None else f"shape {tuple(found.shape)}"
                raise TrustmapError(f"RecurrentResults.maps[{architecture!r}, {method!r}]: "
                                    f"{got}; expected the examples' shape {shape}")


def _plan_figures(results: RecurrentResults) -> list[Section]:
    """Every figure the page shows, grouped by section, as deferred drawing calls."""
    architectures, methods = results.architectures, results.methods
    heatmaps = Section("heatmaps")
    for index, label in enumerate(results.example_labels):
        heatmaps.jobs.append((
            f"heatmaps-{index}-{label}",
            f"example {index + 1} (label {label}): the input with its data region outlined, "
            "then each method's map under each architecture (red positive, blue negative)",
            lambda i=index, t=label: recurrent_figures.heatmap_grid(
                results.examples[i], results.example_masks[i],
                {key: maps[i] for key, maps in results.maps.items()}, architectures, methods,
                f"example {i + 1}: label {t}")))
    region = Section("region")
    if len(results.region):
        region.jobs.append((
            "region-share", "share of positive relevance in the data region per architecture, "
            "mean ± SEM over the test inputs; dashed: chance",
            lambda: recurrent_figures.region_shares(results.region, architectures, methods,
                                                    results.chance)))
    if len(results.steps):
        ideal = _ideal_steps(results)
        region.jobs.append((
            "step-profile", f"share of relevance at each step of the inputs whose odd item is "
            f"the last block: a perfect map keeps it all in the shaded steps 1–{ideal}",
            lambda: recurrent_figures.step_profiles(results.steps, architectures, methods,
                                                    ideal)))
    faithfulness = Section("faithfulness")
    if len(results.curves):
        faithfulness.jobs.append((
            "aopc-curves", "mean probability of the explained class as patches are removed, "
            "most relevant first (solid) and in a random order (dashed grey)",
            lambda: recurrent_figures.aopc_curves(results.curves, architectures, methods)))
    return [heatmaps, region, faithfulness]


def _ideal_steps(results: RecurrentResults) -> int:
    """How many leading steps the data region spans in the profile's inputs: the odd item is
    the last block, so the first ``chance`` of the width (2 of 3 blocks)."""
    return round(results.chance * int(results.steps["step"].max()))


def _render(results: RecurrentResults, sections: list[Section]) -> str:
    header = dict(results.header)
    reference = header.pop(REFERENCE_KEY, None)
    title, items = page_header(header, DEFAULT_TITLE)
    return render_page(
        "recurrent.html.j2",
        title=title,
        header=items,
        dataset=results.dataset,
        chance=_fraction(results.chance),
        ideal_steps=_ideal_steps(results) if len(results.steps) else None,
        reference=_reference(reference),
        accuracy_pivot=_accuracy_pivot(results, reference),
        accuracy=_accuracy(results),
        region=_region_pivot(results),
        region_long=build_table(
            "region-all", _ordered(results, results.region, ["architecture", "method"]),
            directions={"share": 1, "share_pixels": 1}, group_by=["architecture"],
            row_headers=ROW_HEADERS),
        aopc=_aopc_pivot(results),
        aopc_long=_aopc_long(results),
        speed=_speed(results) if len(results.speed) else None,
        figures={section.key: section.drawn for section in sections},
    )


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


def _ordered(results: RecurrentResults, frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows in the study's order of architectures, perturbation orders and methods."""
    ranks = {"architecture": results.architectures, "method": results.methods,
             "order": [MORF, *recurrent_figures.ORDER_STYLES]}

    def rank(column: pd.Series) -> pd.Series:
        known = {value: i for i, value in enumerate(dict.fromkeys(ranks[column.name]))}
        return column.map(lambda value: known.get(value, len(known)))

    return frame.sort_values(by, kind="stable", key=rank)


def _accuracy(results: RecurrentResults) -> Table:
    return build_table("accuracy", _ordered(results, results.accuracy, ["architecture"]),
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
    frame = _ordered(results, results.aopc, ["order", "method"])
    orders = frame["order"].tolist()
    names = [m if o in (MORF, m) else f"{m} ({o})"
             for m, o in zip(frame["method"], orders, strict=True)]
    morf = {name for name, order in zip(names, orders, strict=True) if order == MORF}
    pivot = _pivot(results, frame.assign(method=names), "aopc")
    return build_table("aopc", pivot, directions=dict.fromkeys(pivot.columns[1:], 1),
                       row_headers=("method",), competing=pivot["method"].isin(morf))


def _aopc_long(results: RecurrentResults) -> Table:
    frame = _ordered(results, results.aopc, ["architecture", "order", "method"])
    return build_table("aopc-all", frame, directions={"aopc": 1, "flips_to_change": -1},
                       group_by=["architecture"], row_headers=ROW_HEADERS,
                       competing=frame["order"] == MORF)


def _speed(results: RecurrentResults) -> Table:
    pivot = _pivot(results, results.speed, "maps_per_second")
    return build_table("speed", pivot, directions=dict.fromkeys(pivot.columns[1:], 1),
                       row_headers=("method",))
