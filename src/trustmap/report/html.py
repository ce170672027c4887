"""One self-contained HTML page per run: tables to sort, figures beside them, nothing online.

The page reads only ``RunResults``; every number it shows was computed by the study, except
the ROC points the figures draw. It is written like every other trustmap output: figures into
a hidden staging folder, then moved beside the page, then the page itself, atomically, last.
That machinery (``write_page``), the table builder (``build_table``), the header
(``page_header``) and the templates (``render_page``) are shared with the other pages of the
package, such as the recurrent study's (``trustmap.report.recurrent``).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from matplotlib.figure import Figure

from trustmap.atomic import write_atomic
from trustmap.errors import TrustmapError
from trustmap.report import explain_figures, figures, influence_figures, latent_figures, plot
from trustmap.report.results import (
    ADVERSARIAL_COLUMNS,
    AOPC_COLUMNS,
    CALIBRATION_COLUMNS,
    MISCLASSIFICATION_COLUMNS,
    OOD_COLUMNS,
    PER_SAMPLE_KEYS,
    PERTURBATION_COLUMNS,
    RELIABILITY_COLUMNS,
    SANITY_COLUMNS,
    RunResults,
)

REPORT_NAME = "report.html"
FIGURES_DIR = "figures"
DEFAULT_PREDICTIVE = "ensemble"
COLLAPSE_CHARS = 400

ROW_HEADERS = ("measure", "predictive")
"""Columns whose cells name a row (``<th>``) unless a table says otherwise."""

HIGHER_IS_BETTER = {"auroc", "aupr_in", "aupr_out", "accuracy"}
LOWER_IS_BETTER = {"fpr95", "nll", "brier", "ece", "mce"}
LABELS = {"auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out", "fpr95": "FPR@95%TPR",
          "nll": "NLL", "ece": "ECE", "mce": "MCE", "ood_set": "OOD set"}


@dataclass
class Cell:
    """One formatted table cell with the value the page's script sorts it by."""

    text: str
    sort: str
    best: bool = False
    row_header: bool = False


@dataclass
class Table:
    """What the templates' ``table`` macro draws: one sortable table."""

    id: str
    columns: list[str]
    numeric: list[bool]
    rows: list[list[Cell]]
    degenerate: list[bool]


@dataclass
class FigureRef:
    """A figure drawn for a page: its path relative to the page, and its caption."""

    src: str
    caption: str


@dataclass
class Section:
    """Figures of one theme: ``jobs`` to draw (name, caption, call), ``drawn`` once saved."""

    key: str
    jobs: list[tuple[str, str, Callable[[], Figure]]] = field(default_factory=list)
    drawn: list[FigureRef] = field(default_factory=list)


@dataclass
class HeaderItem:
    """One entry of a page's header: text, a small table, or preformatted JSON."""

    label: str
    text: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    preformatted: bool = False

    @property
    def collapsed(self) -> bool:
        """Long entries (a config, a font list) fold away so the results stay near the top."""
        size = len(self.text) + sum(len(cell) for row in self.rows for cell in row)
        return size > COLLAPSE_CHARS


def write_report(results: RunResults, out_dir: Path | str, predictive: str | None = None) -> Path:
    """Write ``out_dir/report.html`` and its ``figures/``; return the page's path.

    ``predictive`` is the one the per-measure figures use: "ensemble" if the run has it, else
    the first. If any figure or the page fails, the staging folder is removed and an earlier
    report in ``out_dir`` is left as it was, every figure it points at included.
    """
    _check(results)
    chosen = _choose_predictive(results, predictive)
    return write_page(Path(out_dir) / REPORT_NAME, lambda: _plan_figures(results, chosen),
                      lambda sections: _render(results, chosen, sections))


def write_page(page: Path, plan: Callable[[], list[Section]],
               render: Callable[[list[Section]], str], prefix: str = "") -> Path:
    """Draw the planned figures, render the page, and write both beside each other; return it.

    Figures are drawn into a hidden staging folder first and named
    ``<prefix><NN>-<name>.png``; only once all of them and the page text exist do they move into
    ``figures/`` and is the page written, atomically. If anything fails, an earlier page and
    every figure it points at are left as they were. Afterwards, figures of this page's
    ``prefix`` that it no longer draws are removed, and no other file: pages with different
    prefixes can share one figures folder.
    """
    out_dir = page.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir = out_dir / FIGURES_DIR
    staging = Path(tempfile.mkdtemp(prefix=f".{prefix}figures-", dir=out_dir))
    try:
        sections = plan()
        for number, (section, name, caption, draw) in enumerate(_jobs(sections), start=1):
            filename = f"{prefix}{number:02d}-{_slug(name)}.png"
            plot.save_figure(draw(), staging / filename)
            section.drawn.append(FigureRef(f"{FIGURES_DIR}/{filename}", caption))
        text = render(sections)
        figures_dir.mkdir(exist_ok=True)
        written = {path.name for path in staging.iterdir()}
        for name in sorted(written):
            os.replace(staging / name, figures_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    page = write_atomic(page, lambda tmp: tmp.write_text(text, "utf-8"))
    own = re.compile(re.escape(prefix) + r"\d+-.*\.png")
    for stale in figures_dir.glob("*.png"):
        if own.fullmatch(stale.name) and stale.name not in written:
            stale.unlink()
    return page


def _choose_predictive(results: RunResults, predictive: str | None) -> str:
    if predictive is None:
        return DEFAULT_PREDICTIVE if DEFAULT_PREDICTIVE in results.predictives \
            else results.predictives[0]
    if predictive not in results.predictives:
        raise TrustmapError(f"predictive={predictive!r} is not one of this run's predictives "
                            f"{results.predictives}; pass one of them or None")
    return predictive


def _check(results: RunResults) -> None:
    """Fail before drawing anything if a table lacks a column the page reads."""
    if not results.predictives or not results.measures:
        raise TrustmapError("RunResults: predictives and measures must not be empty; "
                            "the study must fill them before writing a report")
    per_sample = list(PER_SAMPLE_KEYS) + [
        figures.sample_column(p, name) for p in results.predictives
        for name in ("predicted", "confidence", "vote_ratio")]
    unscored = [m for m in results.measures
                if not any(figures.sample_column(p, m) in results.per_sample.columns
                           for p in results.predictives)]
    if unscored:
        raise TrustmapError(f"RunResults.per_sample has no column for the measures {unscored} "
                            "under any predictive; score them or leave them out of measures")
    expected = {"per_sample": per_sample, "ood": OOD_COLUMNS,
                "misclassification": MISCLASSIFICATION_COLUMNS, "calibration": CALIBRATION_COLUMNS,
                "reliability": RELIABILITY_COLUMNS, "adversarial": ADVERSARIAL_COLUMNS}
    for name, columns in expected.items():
        missing = [c for c in columns if c not in getattr(results, name).columns]
        if missing:
            raise TrustmapError(f"RunResults.{name} lacks the columns {missing}; "
                                f"see trustmap.report.results for the columns each table has")
    if results.explanations is not None:
        for name, columns in (("perturbation", PERTURBATION_COLUMNS), ("aopc", AOPC_COLUMNS),
                              ("sanity", SANITY_COLUMNS)):
            missing = [c for c in columns
                       if c not in getattr(results.explanations, name).columns]
            if missing:
                raise TrustmapError(f"RunResults.explanations.{name} lacks the columns "
                                    f"{missing}; see trustmap.report.results")
    if not (results.per_sample["dataset"] == results.in_distribution).any():
        raise TrustmapError(f"RunResults.in_distribution={results.in_distribution!r} has no "
                            "rows in per_sample; name the ID test set as per_sample does")


def _plan_figures(results: RunResults, predictive: str) -> list[Section]:
    """Every figure the page shows, grouped by section, as deferred drawing calls."""
    ranking = figures.ranking_measure(results)
    degenerate = _degenerate(results)
    distributions = Section("distributions")
    for measure in results.measures:
        if figures.sample_column(predictive, measure) not in results.per_sample.columns:
            continue  # an explanation measure scored under other predictives only
        distributions.jobs += [
            (f"hist-{measure}", f"{measure} on every dataset, density over shared bins",
             lambda m=measure: figures.measure_histogram(results, m, predictive)),
            (f"scatter-{measure}", f"confidence in the predicted class against {measure}",
             lambda m=measure: figures.confidence_scatter(results, m, predictive))]
    roc = Section("roc")
    for ood_set in _ood_sets(results):
        roc.jobs.append((f"roc-{ood_set}",
                         f"{ood_set} (positives) against {results.in_distribution} (negatives)",
                         lambda s=ood_set: figures.roc_curves(results, s, predictive)))
    reliability = Section("reliability")
    if len(results.reliability):
        reliability.jobs.append(("reliability", "accuracy against confidence per bin, before "
                                 "and after temperature scaling",
                                 lambda: figures.reliability_diagram(results)))
    agreement = Section("agreement")
    for name in results.predictives:
        if (name, "vote_ratio") not in degenerate:
            agreement.jobs.append((f"votes-{name}", f"vote ratios of {name} per dataset",
                                   lambda p=name: figures.vote_ratio_histogram(results, p)))
    inputs = Section("inputs")
    for dataset in figures.dataset_order(results):
        if dataset in results.images:
            inputs.jobs.append((f"inputs-{dataset}",
                                f"{dataset}: the 16 most and 16 least uncertain by {ranking}",
                                lambda d=dataset: figures.extreme_inputs(results, d, predictive,
                                                                         ranking)))
    return [distributions, roc, reliability, agreement, inputs, *_explanation_figures(results),
            _latent_figures(results), _influence_figures(results)]


def _latent_figures(results: RunResults) -> Section:
    """Seed 003's map: the uncertainty over a VAE's decoded latent plane, the data on top."""
    section = Section("latent")
    found = results.latent
    if found is not None:
        section.jobs.append((
            "latent-map", f"{found.architecture}: each measure over the decoded "
            f"{found.resolution}x{found.resolution} latent grid (dark = certain), the encoded "
            f"{results.in_distribution} test set on top, its convex hull dashed, the most "
            "confident grid points far from the data as red crosses",
            lambda: latent_figures.uncertainty_maps(
                found.maps, found.predictives, found.measures, found.resolution, found.bound,
                found.codes, found.code_labels, found.classes, found.confident,
                title=f"{found.architecture} on {results.in_distribution}")))
    return section


def _influence_figures(results: RunResults) -> Section:
    """Seed 004's maps: where pushing a pixel up moves the ensemble's classes, metrics and
    uncertainty (entropic projection of the ID test set)."""
    section = Section("influence")
    found = results.influence
    if found is None:
        return section
    constant, missed = found.constant, found.not_converged
    masks = (f"grey: the {int(constant.sum())} constant pixels (exactly 0); ×: the "
             f"{int(missed.sum())} pixels whose tilt did not converge")
    section.jobs += [
        ("influence-classes", "change of the ensemble's mean probability of each class when the "
         "pixel goes from its low to its high side (τ = +1 minus τ = −1), one symmetric scale "
         f"for all classes; {masks}",
         lambda: influence_figures.influence_maps(found.influence, found.classes, constant,
                                                  missed, title="influence on each class")),
        ("influence-spread", "std over the members of each member's influence map: where it is "
         "comparable to |influence| the influence itself is uncertain",
         lambda: influence_figures.spread_maps(found.member_std, found.classes, constant,
                                               missed, title="spread of the influence")),
        ("influence-changes", "change of the ensemble's accuracy and log-loss and of the mean "
         "of its uncertainty measures, each on its own symmetric scale",
         lambda: influence_figures.change_maps(
             found.changes, {name: influence_figures.change_label(name)
                             for name in found.changes},
             constant, missed, title="influence on performance and uncertainty")),
    ]
    return section


def _explanation_figures(results: RunResults) -> tuple[Section, Section]:
    """The maps (grid, class saliency maps) and their quality (faithfulness, sanity)."""
    section, quality = Section("explanations"), Section("explanation-quality")
    found = results.explanations
    if found is None:
        return section, quality
    section.jobs.append((
        "explanation-grid", f"mean map and std across the {found.predictive}'s samples, side by "
        "side, for inputs of every set (signed maps: red positive, blue negative); the number "
        "under each std map is the input's rank disagreement",
        lambda: explain_figures.explanation_grid(
            found.examples, found.example_labels, found.methods, found.mean_maps,
            found.std_maps, f"std across {found.predictive}", found.disagreement)))
    section.jobs.append((
        "class-saliency", f"class saliency maps: mean of |{found.class_method}| (min-max per "
        f"map) over {found.class_n} test inputs of each class, explaining that class",
        lambda: explain_figures.class_saliency_panel(
            found.class_means, found.class_sems, found.class_names,
            f"{found.class_method}, {found.class_n} inputs per class")))
    section.jobs.append((
        "class-saliency-0", f"the class saliency map of {found.class_names[0]} with its "
        "standard error: column and row sums with ± summed-SEM bands, and the flattened profile",
        lambda: explain_figures.class_saliency_map(
            found.class_means[0], found.class_sems[0],
            f"{found.class_names[0]}: mean ± SEM of {found.class_n} maps")))
    if len(found.perturbation):
        quality.jobs.append((
            "region-perturbation", "probability of the explained class as the most (MoRF) or "
            "least (LeRF) relevant patches are removed; a faithful map drops it fast under MoRF",
            lambda: explain_figures.perturbation_curves(found.perturbation)))
    if len(found.sanity):
        quality.jobs.append((
            "sanity", "Spearman correlation of each method's maps with the original model's as "
            "the layers are randomised from the top: a map that ignores the model stays near 1",
            lambda: explain_figures.sanity_curves(found.sanity)))
    return section, quality


def _jobs(sections: list[Section]) -> Iterable[tuple[Section, str, str, Callable[[], Figure]]]:
    for section in sections:
        for name, caption, draw in section.jobs:
            yield section, name, caption, draw


def _slug(name: str) -> str:
    """A file name from a dataset or measure name, which may hold any character."""
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)
    return kept.strip("-").lower()[:60] or "figure"


def _ood_sets(results: RunResults) -> list[str]:
    return list(dict.fromkeys(results.ood["ood_set"]))


def _degenerate(results: RunResults) -> set[tuple[str, str]]:
    """(predictive, column) pairs constant over every input, e.g. mutual information of a
    single network: the run does not flag them, so they are recognised by having no spread."""
    found = set()
    for predictive in results.predictives:
        for name in (*results.measures, "vote_ratio"):
            column = figures.sample_column(predictive, name)
            if column not in results.per_sample.columns:
                continue
            values = results.per_sample[column]
            if values.nunique(dropna=True) <= 1:
                found.add((predictive, name))
    return found


def render_page(template: str, **context: Any) -> str:
    """``template`` (a file in ``templates/``) rendered with ``context``, HTML-escaped.

    Undefined names raise instead of rendering as blanks, so a template and its writer never
    silently drift apart.
    """
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.get_template(template).render(**context)


def page_header(header: Mapping[str, Any], default_title: str) -> tuple[str, list[HeaderItem]]:
    """The page title (``header["title"]`` or ``default_title``) and every other entry."""
    entries = dict(header)
    title = str(entries.pop("title", default_title))
    return title, [_header_item(key, value) for key, value in entries.items()]


def _render(results: RunResults, predictive: str, sections: list[Section]) -> str:
    degenerate = _degenerate(results)
    title, header = page_header(results.header, "trustmap report")
    return render_page(
        "report.html.j2",
        title=title,
        header=header,
        in_distribution=results.in_distribution,
        predictive=predictive,
        measures=results.measures,
        degenerate_measures=sorted({f"{m} under {p}" for p, m in degenerate
                                    if m in results.measures}),
        summary=_summary(results),
        ood_pivot=build_table("ood-auroc", _ood_pivot(results), degenerate,
                              directions=dict.fromkeys(_ood_sets(results), 1)),
        ood_long=build_table("ood-all", _display_order(results, results.ood,
                                                       ["ood_set", "measure", "predictive"]),
                             degenerate, group_by=["ood_set"]),
        misclassification=build_table("misclassification", _display_order(
            results, results.misclassification, ["measure", "predictive"]), degenerate),
        calibration=build_table("calibration", results.calibration, degenerate),
        adversarial=build_table("adversarial", results.adversarial, degenerate,
                                group_by=["attack", "epsilon", "attacked", "negatives",
                                          "subset"]),
        figures={section.key: section.drawn for section in sections},
        explanations=results.explanations,
        explanation_vs_probability=build_table(
            "explanation-vs-probability", _explanation_vs_probability(results), set(),
            directions={}),
        latent=results.latent,
        influence=results.influence,
        latent_shares=build_table(
            "latent-shares", results.latent.shares.drop(columns=["architecture"]),
            directions={"share_far": 1}) if results.latent is not None else None,
        aopc=build_table("aopc", results.explanations.aopc, set(),
                         directions={"aopc": 1}, group_by=["order"])
        if results.explanations is not None else None,
    )


def _explanation_vs_probability(results: RunResults) -> pd.DataFrame:
    """Per OOD set and explained predictive: the best explanation-disagreement measure's AUROC
    beside entropy's and mutual information's, which is seed 000's question answered."""
    if results.explanations is None:
        return pd.DataFrame()
    ood = results.ood
    explained = ood[ood["measure"].isin(results.explanations.measures)]
    rows = []
    for (ood_set, predictive), group in explained.groupby(["ood_set", "predictive"], sort=False):
        best = group.loc[group["auroc"].idxmax()] if group["auroc"].notna().any() \
            else group.iloc[0]
        row = {"ood_set": ood_set, "predictive": predictive,
               "best explanation measure": best["measure"], "its auroc": best["auroc"]}
        for measure in ("entropy", "mutual_information"):
            match = ood[(ood["ood_set"] == ood_set) & (ood["predictive"] == predictive)
                        & (ood["measure"] == measure)]
            row[f"{measure} auroc"] = float(match["auroc"].iloc[0]) if len(match) else None
        rows.append(row)
    return pd.DataFrame(rows)


def _summary(results: RunResults) -> list[dict[str, Any]]:
    """Per OOD set, the measure x predictive with the highest AUROC."""
    lines = []
    for ood_set in _ood_sets(results):
        rows = results.ood[(results.ood["ood_set"] == ood_set) & results.ood["auroc"].notna()]
        if len(rows):
            best = rows.loc[rows["auroc"].idxmax()]
            lines.append({"ood_set": ood_set, "measure": best["measure"],
                          "predictive": best["predictive"], "auroc": _text(best["auroc"]),
                          "fpr95": _text(best["fpr95"])})
    return lines


def _ood_pivot(results: RunResults) -> pd.DataFrame:
    """AUROC with rows measure x predictive (display order) and one column per OOD set."""
    pivot = results.ood.pivot_table(index=["measure", "predictive"], columns="ood_set",
                                    values="auroc", aggfunc="first", sort=False)
    order = [(m, p) for m in results.measures for p in results.predictives if (m, p) in pivot.index]
    pivot = pivot.reindex(index=order, columns=_ood_sets(results))
    pivot.columns = [str(c) for c in pivot.columns]
    return pivot.reset_index()


def build_table(table_id: str, frame: pd.DataFrame,
                degenerate: Collection[tuple[str, str]] = frozenset(),
                directions: dict[str, int] | None = None, group_by: list[str] | None = None,
                row_headers: Collection[str] = ROW_HEADERS,
                competing: pd.Series | None = None) -> Table:
    """Cells formatted to 3 decimals, the best value of each scored column marked.

    ``directions`` maps a column to +1 (higher is better) or -1; by default the known metrics.
    With ``group_by`` the best is found per group, where ranking across groups (different OOD
    sets or attacks) would compare unlike things. ``competing`` (bool per row of ``frame``)
    limits the best to some rows, e.g. not a random baseline listed for reference.
    ``degenerate`` holds (predictive, measure) pairs whose rows are greyed; ``row_headers`` the
    columns that name a row.
    """
    eligible = pd.Series(True, index=range(len(frame))) if competing is None \
        else pd.Series(list(competing), index=range(len(frame)), dtype=bool)
    frame = frame.reset_index(drop=True)
    if directions is None:
        directions = {c: 1 if c in HIGHER_IS_BETTER else -1 for c in frame.columns
                      if c in HIGHER_IS_BETTER | LOWER_IS_BETTER}
    codes = frame.groupby(group_by, sort=False, dropna=False).ngroup() if group_by and len(frame) \
        else pd.Series(0, index=frame.index)
    groups = [frame.index[codes == code] for code in codes.unique()]
    best = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for column, direction in directions.items():
        for index in groups:
            values = frame.loc[index, column].astype(float).where(eligible[index])
            if values.notna().any():
                best.loc[index, column] = values == (values.max() if direction > 0
                                                     else values.min())
    records = list(frame.astype(object).iterrows())  # object: each cell keeps its own type
    rows = [[Cell(_text(record[c]), _sort_key(record[c]), bool(best.at[i, c]),
                  row_header=c in row_headers) for c in frame.columns]
            for i, record in records]
    greyed = [(record.get("predictive"), record.get("measure")) in degenerate
              for _, record in records]
    return Table(table_id, [LABELS.get(c, c.replace("_", " ")) for c in frame.columns],
                 [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns], rows, greyed)


def _display_order(results: RunResults, frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rows in the order the run lists OOD sets, predictives and measures, not alphabetical."""
    ranks = {"ood_set": _ood_sets(results), "predictive": results.predictives,
             "measure": list(results.measures)}
    return frame.sort_values(by, kind="stable", key=lambda column: column.map(
        {value: rank for rank, value in enumerate(ranks[column.name])}))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    if _missing(value):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _sort_key(value: Any) -> str:
    """What the page's script sorts by: the full number, or the text; empty for missing."""
    if _missing(value):
        return ""
    return repr(float(value)) if isinstance(value, numbers.Real) else str(value)


def _header_item(key: str, value: Any) -> HeaderItem:
    """A readable form of one header entry: text, a small table, or JSON as a last resort."""
    label = key.replace("_", " ")
    if key == "seconds" and isinstance(value, int | float):
        return HeaderItem(label, text=_duration(value))
    if _simple(value):
        return HeaderItem(label, text=_header_text(value))
    if isinstance(value, dict) and all(_simple(v) for v in value.values()):
        return HeaderItem(label, rows=[[str(k), _header_text(v)] for k, v in value.items()])
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        columns = list(dict.fromkeys(c for record in value.values() for c in record))
        return HeaderItem(label, columns=["", *columns],
                          rows=[[str(name), *(_header_text(record.get(c, "")) for c in columns)]
                                for name, record in value.items()])
    if isinstance(value, list | tuple) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(c for record in value for c in record))
        return HeaderItem(label, columns=columns,
                          rows=[[_header_text(record.get(c, "")) for c in columns]
                                for record in value])
    return HeaderItem(label, text=json.dumps(value, indent=2, default=str), preformatted=True)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _simple(value: Any) -> bool:
    """A value that reads well on one line: a scalar or a flat list of scalars."""
    return _scalar(value) or (isinstance(value, list | tuple) and all(map(_scalar, value)))


def _header_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if _scalar(value):
        return str(value)
    if _simple(value):
        return ", ".join(map(_header_text, value))
    return json.dumps(value, default=str)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{seconds:.1f} s ({hours}:{minutes:02d}:{rest:02d})"
