"""The run's page (``report.html``): tables to sort, figures beside them, nothing online.

The page reads only ``RunResults``; every number it shows was computed by the study, except
the ROC points the figures draw. It is written by the page engine (``page.write_page``) from
the sections below, followed by the sections of every other study the run computed, each from
that study's own ``sections`` (the ones its own page shows).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trustmap.atomic import Outputs
from trustmap.errors import TrustmapError
from trustmap.report import checks, explain_figures, figures
from trustmap.report.page import (
    Job,
    Section,
    build_table,
    ordered,
    study_section,
    text,
    write_page,
)
from trustmap.report.results import (
    ADVERSARIAL_COLUMNS,
    AOPC_COLUMNS,
    CALIBRATION_COLUMNS,
    MISCLASSIFICATION_COLUMNS,
    OOD_COLUMNS,
    PER_SAMPLE_COLUMNS,
    PERTURBATION_COLUMNS,
    RELIABILITY_COLUMNS,
    SANITY_COLUMNS,
    RunResults,
)
from trustmap.studies.base import Study

REPORT_NAME = "report.html"
TEMPLATE = "report.html.j2"
DEFAULT_PREDICTIVE = "ensemble"


def write_report(results: RunResults, out_dir: Path | str, predictive: str | None = None,
                 beside: Sequence[tuple[Study, Any]] = (), outputs: Outputs | None = None
                 ) -> Path:
    """Write ``out_dir/report.html`` and its ``figures/``; return the page's path.

    ``predictive`` is the one the per-measure figures use: "ensemble" if the run has it, else
    the first. ``beside`` holds the other studies the run computed, with their results: each
    gets a section of its own sections. If any figure or the page fails, the staging folder is
    removed and an earlier report in ``out_dir`` is left as it was, every figure it points at
    included. ``outputs``: the page changes together with them (``atomic.together``).
    """
    chosen = _choose_predictive(results, predictive)

    def plan() -> list[Section]:
        return sections(results, chosen) + [
            study_section(study.name, study.title, study.name.capitalize(), study.template,
                          study.sections(found)) for study, found in beside]

    return write_page(Path(out_dir) / REPORT_NAME, TEMPLATE, results.header,
                      "trustmap report", plan, outputs=outputs,
                      in_distribution=results.in_distribution)


def _choose_predictive(results: RunResults, predictive: str | None) -> str:
    if predictive is None:
        return DEFAULT_PREDICTIVE if DEFAULT_PREDICTIVE in results.predictives \
            else results.predictives[0]
    if predictive not in results.predictives:
        raise TrustmapError(f"predictive={predictive!r} is not one of this run's predictives "
                            f"{results.predictives}; pass one of them or None")
    return predictive


def check(results: RunResults) -> None:
    """Fail before drawing anything if a table lacks a column the page reads."""
    checks.check(results, columns={
        "per_sample": PER_SAMPLE_COLUMNS, "ood": OOD_COLUMNS,
        "misclassification": MISCLASSIFICATION_COLUMNS, "calibration": CALIBRATION_COLUMNS,
        "reliability": RELIABILITY_COLUMNS,
        "adversarial": ADVERSARIAL_COLUMNS, "explanations.perturbation": PERTURBATION_COLUMNS,
        "explanations.aopc": AOPC_COLUMNS, "explanations.sanity": SANITY_COLUMNS},
        nonempty=("predictives", "measures"))
    unscored = [m for m in results.measures
                if not any(figures.scored(results, p, m) for p in results.predictives)]
    if unscored:
        checks.fail(results, f"per_sample has no column for the measures {unscored} under any "
                    "predictive; score them or leave them out of measures")
    if not (results.per_sample["set"] == results.in_distribution).any():
        checks.fail(results, f"in_distribution={results.in_distribution!r} has no rows in "
                    "per_sample; name the ID test set as per_sample does")


def sections(results: RunResults, predictive: str = DEFAULT_PREDICTIVE) -> list[Section]:
    """The run's own sections, its figures as deferred drawing calls; ``predictive`` is the one
    the per-measure figures use (the first of the run's if it has not this one)."""
    check(results)
    predictive = predictive if predictive in results.predictives else results.predictives[0]
    degenerate = _degenerate(results)
    ranking = figures.ranking_measure(results)
    distributions = []
    for measure in results.measures:
        if not figures.scored(results, predictive, measure):
            continue  # an explanation measure scored under other predictives only
        distributions += [
            Job(f"hist-{measure}", f"{measure} on every dataset, density over shared bins",
                lambda m=measure: figures.measure_histogram(results, m, predictive)),
            Job(f"scatter-{measure}", f"confidence in the predicted class against {measure}",
                lambda m=measure: figures.confidence_scatter(results, m, predictive))]
    roc = [Job(f"roc-{ood_set}",
               f"{ood_set} (positives) against {results.in_distribution} (negatives)",
               lambda s=ood_set: figures.roc_curves(results, s, predictive))
           for ood_set in _ood_sets(results)]
    reliability = [Job("reliability", "accuracy against confidence per bin, before and after "
                       "temperature scaling", lambda: figures.reliability_diagram(results))
                   ] if len(results.reliability) else []
    agreement = [Job(f"votes-{name}", f"vote ratios of {name} per dataset",
                     lambda p=name: figures.vote_ratio_histogram(results, p))
                 for name in results.predictives if (name, "vote_ratio") not in degenerate]
    inputs = [Job(f"inputs-{dataset}",
                  f"{dataset}: the 16 most and 16 least uncertain by {ranking}",
                  lambda d=dataset: figures.extreme_inputs(results, d, predictive, ranking))
              for dataset in figures.dataset_order(results) if dataset in results.images]
    ood_order = ["ood_set", "measure", "predictive"]
    return [
        Section("summary", "Summary", context={
            "summary": _summary(results), "predictive": predictive, "measures": results.measures,
            "degenerate_measures": sorted({f"{m} under {p}" for p, m in degenerate
                                           if m in results.measures})}),
        Section("ood", "Out-of-distribution detection", "OOD detection", roc, context={
            "ood_pivot": build_table("ood-auroc", _ood_pivot(results), degenerate,
                                     directions=dict.fromkeys(_ood_sets(results), 1)),
            "ood_long": build_table("ood-all", ordered(results.ood, ood_order, _ranks(results)),
                                    degenerate, group_by=["ood_set"])}),
        Section("distributions", "Distributions of the measures", "Measures", distributions),
        Section("misclassification", "Misclassification detection", "Misclassification",
                context={"misclassification": build_table("misclassification", ordered(
                    results.misclassification, ["measure", "predictive"], _ranks(results)),
                    degenerate)}),
        Section("calibration", "Calibration", jobs=reliability, context={
            "calibration": build_table("calibration", results.calibration, degenerate)}),
        Section("adversarial", "Adversarial detection", "Adversarial", context={
            "adversarial": build_table("adversarial", results.adversarial, degenerate, group_by=[
                "attack", "epsilon", "attacked", "negatives", "subset"])}),
        _detectors(results, predictive),
        _conformal(results),
        _selective(results, predictive),
        Section("combined", "One trust score from all of them", "Combined", context={
            "combined": build_table("combined", results.combined,
                                    group_by=["predictive", "held_out"])}),
        Section("agreement", "Agreement of the samples", "Agreement", agreement),
        Section("inputs", "Most and least uncertain inputs", "Inputs", inputs),
        _explanations(results),
    ]


def _explanations(results: RunResults) -> Section:
    """The maps (grid, class saliency maps), then their quality (faithfulness, sanity)."""
    section = Section("explanations", "Explanations and their uncertainty", "Explanations",
                      context={"explanations": results.explanations})
    found = results.explanations
    if found is None:
        return section
    section.context.update(
        explanation_vs_probability=build_table(
            "explanation-vs-probability", _explanation_vs_probability(results), directions={}),
        aopc=build_table("aopc", found.aopc, directions={"aopc": 1}, group_by=["order"]))
    section.jobs += [
        Job("explanation-grid", f"mean map and std across the {found.predictive}'s samples, side "
            "by side, for inputs of every set (signed maps: red positive, blue negative); the "
            "number under each std map is the input's rank disagreement",
            lambda: explain_figures.explanation_grid(
                found.examples, found.example_labels, found.methods, found.mean_maps,
                found.std_maps, f"std across {found.predictive}", found.disagreement)),
        Job("class-saliency", f"class saliency maps: mean of |{found.class_method}| (min-max per "
            f"map) over {found.class_n} test inputs of each class, explaining that class",
            lambda: explain_figures.class_saliency_panel(
                found.class_means, found.class_sems, found.class_names,
                f"{found.class_method}, {found.class_n} inputs per class")),
        Job("class-saliency-0", f"the class saliency map of {found.class_names[0]} with its "
            "standard error: column and row sums with ± summed-SEM bands, and the flattened "
            "profile", lambda: explain_figures.class_saliency_map(
                found.class_means[0], found.class_sems[0],
                f"{found.class_names[0]}: mean ± SEM of {found.class_n} maps"))]
    if len(found.perturbation):
        section.jobs.append(Job(
            "region-perturbation", "probability of the explained class as the most (MoRF) or "
            "least (LeRF) relevant patches are removed; a faithful map drops it fast under MoRF",
            lambda: explain_figures.perturbation_curves(found.perturbation), group="quality"))
    if len(found.sanity):
        section.jobs.append(Job(
            "sanity", "Spearman correlation of each method's maps with the original model's as "
            "the layers are randomised from the top: a map that ignores the model stays near 1",
            lambda: explain_figures.sanity_curves(found.sanity), group="quality"))
    return section


def _detectors(results: RunResults, predictive: str) -> Section:
    """Every score's AUROC per OOD set under ``predictive``, near sets then far ones with the
    mean of each group (OpenOOD's layout), and each member's detectors beside their mean."""
    frame = results.ood[results.ood["predictive"] == predictive]
    plain = [s for s in _ood_sets(results) if s in set(results.detectors.get("ood_set", []))]
    near = [s for s in plain if s in results.near_ood]
    far = [s for s in plain if s not in near]
    pivot = frame.pivot_table(index="measure", columns="ood_set", values="auroc",
                              aggfunc="first", sort=False).reindex(
        index=[m for m in results.measures if m in set(frame["measure"])], columns=near + far)
    columns = {}
    for group, names in (("near", near), ("far", far)):
        columns.update({f"{group}: {n}": pivot[n] for n in names})
        if names:
            columns[f"{group} mean"] = pivot[names].mean(axis=1)
    table = pd.DataFrame(columns, index=pivot.index).rename_axis("measure").reset_index()
    return Section("detectors", "Feature-space detectors beside the output-space measures",
                   "Detectors", context={
                       "predictive": predictive, "notes": results.notes,
                       "near_far": build_table("near-far", table, directions=dict.fromkeys(
                           [c for c in table.columns if c != "measure"], 1)),
                       "members": build_table("detector-members", results.detectors,
                                              group_by=["ood_set", "detector"])})


def _conformal(results: RunResults) -> Section:
    """Coverage against its target on the held-out ID images; set sizes everywhere."""
    found = results.conformal
    held = found[found["role"] == "id (held out)"] if len(found) else found
    other = found[found["role"] != "id (held out)"] if len(found) else found
    return Section("conformal", "Conformal prediction sets", "Conformal", context={
        "coverage": build_table("conformal-coverage", held.drop(columns=["role"], errors="ignore"),
                                directions={}),
        "sizes": build_table("conformal-sizes", other.drop(
            columns=["role", "coverage"], errors="ignore"), directions={}),
        "by_class": build_table("conformal-by-class", results.conformal_by_class,
                                directions={})})


def _selective(results: RunResults, predictive: str) -> Section:
    """AURC of every score, the oracle's beside it, and the risk-coverage curves."""
    jobs = [Job("risk-coverage", f"risk against coverage on {results.in_distribution} under "
                f"{predictive}: the six scores of lowest AURC and the oracle",
                lambda: figures.risk_coverage(results, predictive))
            ] if len(results.selective) else []
    table = results.selective.sort_values(["predictive", "aurc"]) if len(results.selective) \
        else results.selective
    return Section("selective", "Selective prediction", "Selective", jobs, context={
        "selective": build_table("selective", table, group_by=["predictive"],
                                 directions={"aurc": -1, "excess_aurc": -1})})


def _ranks(results: RunResults) -> dict[str, list[str]]:
    """The run's order of OOD sets, predictives and measures, not alphabetical."""
    return {"ood_set": _ood_sets(results), "predictive": results.predictives,
            "measure": list(results.measures)}


def _ood_sets(results: RunResults) -> list[str]:
    return list(dict.fromkeys(results.ood["ood_set"]))


def _degenerate(results: RunResults) -> set[tuple[str, str]]:
    """(predictive, column) pairs constant over every input, e.g. mutual information of a
    single network: the run does not flag them, so they are recognised by having no spread."""
    found = set()
    for predictive in results.predictives:
        scores = figures.sample_rows(results, predictive)
        for name in (*results.measures, "vote_ratio"):
            if name not in scores.columns:
                continue
            if scores[name].nunique(dropna=True) <= 1:
                found.add((predictive, name))
    return found


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
                          "predictive": best["predictive"], "auroc": text(best["auroc"]),
                          "fpr95": text(best["fpr95"])})
    return lines


def _ood_pivot(results: RunResults) -> pd.DataFrame:
    """AUROC with rows measure x predictive (display order) and one column per OOD set."""
    pivot = results.ood.pivot_table(index=["measure", "predictive"], columns="ood_set",
                                    values="auroc", aggfunc="first", sort=False)
    order = [(m, p) for m in results.measures for p in results.predictives if (m, p) in pivot.index]
    pivot = pivot.reindex(index=order, columns=_ood_sets(results))
    pivot.columns = [str(c) for c in pivot.columns]
    return pivot.reset_index()
