"""The latent-map study's page: where in a VAE's 2-D latent space a classifier is sure.

It reads only ``LatentResults`` and is written by the page engine (``page.write_page``). Its
figures are named ``latent-*.png``, so it shares ``figures/`` with other pages in the same
directory without touching theirs. The run's page shows the same ``sections``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from trustmap.atomic import Outputs
from trustmap.report import checks, latent_figures
from trustmap.report.page import Job, Section, Table, build_table, ordered, write_page
from trustmap.report.results import LATENT_SHARE_COLUMNS, MIDPOINT_COLUMNS, LatentResults

LATENT_NAME = "latent.html"
TEMPLATE = "latent.html.j2"
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
SHAPES = {"codes": "M 2", "code_labels": "int M", "grid_images": "P C H W", "near": "bool P",
          "maps": "P", "predicted": "int P", "confident": "int _", "midpoint_scores": "_",
          "path_images": "pairs steps C H W", "path_scores": "pairs steps"}
"""P: the grid's points (resolution²); pairs: one per entry of ``path_labels``."""


def write_latent_report(results: LatentResults, out_dir: Path | str,
                         outputs: Outputs | None = None) -> Path:
    """Write ``out_dir/latent.html`` and its ``figures/latent-*.png``; return the page.

    If any figure or the page fails, an earlier latent page in ``out_dir`` and every figure it
    points at are left as they were; other pages' figures are never touched.
    ``outputs``: the page changes together with them (``atomic.together``).
    """
    return write_page(Path(out_dir) / LATENT_NAME, TEMPLATE, results.header,
                      DEFAULT_TITLE, lambda: sections(results), prefix=FIGURE_PREFIX,
                      outputs=outputs)


def check(results: LatentResults) -> None:
    """Fail before drawing anything if a field, or a map the figures read, is not there."""
    checks.check(results, SHAPES, {"shares": LATENT_SHARE_COLUMNS, "midpoints": MIDPOINT_COLUMNS},
                 {"shares": ROW_HEADERS, "midpoints": [*ROW_HEADERS, "path"]},
                 nonempty=("classes", "architectures", "predictives", "measures"),
                 dims={"P": results.resolution ** 2, "pairs": len(results.path_labels)})
    for architecture in results.architectures:
        if not scored_predictives(results, architecture):
            checks.fail(results, f"maps has nothing for the architecture {architecture!r}; score "
                        "its grid or leave it out of architectures")
        shown = shown_predictive(results, architecture)
        for predictive in scored_predictives(results, architecture):
            wanted = [("maps", (architecture, predictive, m)) for m in results.measures]
            wanted.append(("predicted", (architecture, predictive)))
            if predictive == shown:
                wanted += [(name, (architecture, predictive, m, path)) for m in results.measures
                           for name, paths in (("path_scores", _paths(results)),
                                               ("midpoint_scores", _midpoint_paths(results)))
                           for path in paths]
            for name, key in wanted:
                if key not in getattr(results, name):
                    checks.fail(results, f"{name}[{key!r}]: none; every predictive scored needs "
                                "every measure, and the figures show it")
    for pair, indices in results.confident.items():
        if len(indices) and not 0 <= int(indices.min()) <= int(indices.max()) < len(results.near):
            checks.fail(results, f"confident[{pair!r}] holds indices outside the grid's "
                        f"{len(results.near)} points")


def scored_predictives(results: LatentResults, architecture: str) -> list[str]:
    """The predictives ``architecture`` was scored under, in the study's order (one without
    dropout has no MC dropout)."""
    return [p for p in results.predictives
            if any((architecture, p, m) in results.maps for m in results.measures)]


def shown_predictive(results: LatentResults, architecture: str) -> str:
    """Whose scores the interpolations show: "ensemble" if scored, else the first."""
    scored = scored_predictives(results, architecture)
    return DEFAULT_PREDICTIVE if DEFAULT_PREDICTIVE in scored else scored[0]


def _paths(results: LatentResults) -> list[str]:
    """Interpolations the study drew examples of, pixel first."""
    return [path for path in PATHS if path in results.path_images]


def _midpoint_paths(results: LatentResults) -> list[str]:
    return [path for path in PATHS if any(key[3] == path for key in results.midpoint_scores)]


def _far_measure(results: LatentResults) -> str:
    return FAR_MEASURE if FAR_MEASURE in results.measures else results.measures[0]


def sections(results: LatentResults) -> list[Section]:
    """The page's sections, on this page or the run's; interpolations only where the study drew
    paths (the run's map draws none)."""
    check(results)
    near = int(results.near.sum())
    points = results.resolution ** 2
    return [
        Section("maps", "Uncertainty maps", jobs=_map_jobs(results), context={
            "dataset": results.dataset, "resolution": results.resolution,
            "bound": f"{results.bound:g}", "codes": len(results.codes)}),
        Section("mosaic", "Decoded grid", jobs=[Job(
            "mosaic", "the decoded latent plane: the VAE's image at grid points, laid out like "
            "the maps (z1 upward)",
            lambda: latent_figures.grid_mosaic(results.grid_images, results.resolution,
                                               results.bound, title="decoded grid"))]),
        Section("confident", "Confident far from the data", jobs=_confident_jobs(results),
                context={"far_measure": _far_measure(results)}),
        Section("shares", "Share of confident grid points", "Shares", context={
            "near": near, "points": points, "far": points - near,
            "shares": _shares_table(results),
            "constant": [f"{m} under {p} ({a})" for a, p, m in results.maps
                         if _constant(results, (a, p, m))]}),
    ] + ([Section("interpolations", "Interpolations", jobs=_interpolation_jobs(results),
                  context={"shown": [{"architecture": a, "predictive": shown_predictive(results, a)}
                                     for a in results.architectures],
                           "midpoints": _midpoints(results)})] if results.path_labels else [])


def _map_jobs(results: LatentResults) -> list[Job]:
    """One figure per architecture: each measure under each predictive over the grid."""
    return [Job(
        f"maps-{architecture}",
        f"{architecture}: each measure (rows) under each predictive (columns) over the decoded "
        "grid, dark = certain (one scale per measure); the encoded test set by class, its "
        "convex hull dashed, red crosses: the most confident grid points far from the data",
        lambda a=architecture: latent_figures.uncertainty_maps(
            {(p, m): results.maps[a, p, m] for p in scored_predictives(results, a)
             for m in results.measures}, scored_predictives(results, a), results.measures,
            results.resolution, results.bound, results.codes, results.code_labels,
            results.classes, {p: results.confident[a, p] for p in scored_predictives(results, a)
                              if (a, p) in results.confident},
            title=f"{a} on {results.dataset}")) for architecture in results.architectures]


def _confident_jobs(results: LatentResults) -> list[Job]:
    measure = _far_measure(results)

    def captions(architecture: str, predictive: str) -> list[str]:
        predicted = results.predicted[architecture, predictive]
        scores = results.maps[architecture, predictive, measure]
        return [f"{results.classes[int(predicted[i])]}\n{float(scores[i]):.3f}"
                for i in results.confident[architecture, predictive].tolist()]

    jobs = []
    for architecture in results.architectures:
        far = [p for p in scored_predictives(results, architecture)
               if (architecture, p) in results.confident]
        if far:
            jobs.append(Job(
                f"confident-{architecture}",
                f"{architecture}: the decoded grid points far from the data it is most sure "
                f"about, most confident first, each with the class it is given and its {measure}",
                lambda a=architecture, ps=far: latent_figures.confident_images(
                    {p: results.grid_images[results.confident[a, p]] for p in ps},
                    {p: captions(a, p) for p in ps}, title=f"{a}: confident far from the data")))
    return jobs


def _interpolation_jobs(results: LatentResults) -> list[Job]:
    """Example paths (group ""), then the midpoint histograms (group "midpoints")."""
    shown = {a: shown_predictive(results, a) for a in results.architectures}
    lines = {a: f"{a} ({p})" for a, p in shown.items()}
    paths, midpoints = _paths(results), _midpoint_paths(results)
    jobs = [Job(
        f"path-{pair}",
        f"pair {pair + 1}, {start} to {end}: the images along each path (position t under "
        "each) and every measure along it, a line per architecture",
        lambda i=pair, s=start, e=end: latent_figures.interpolation(
            {path: results.path_images[path][i] for path in paths},
            {(path, lines[a], m): results.path_scores[a, p, m, path][i]
             for path in paths for a, p in shown.items() for m in results.measures},
            list(lines.values()), results.measures, title=f"pair {i + 1}: {s} → {e}"))
        for pair, (start, end) in enumerate(results.path_labels[:MAX_PAIRS] if paths else [])]
    return jobs + [Job(
        f"midpoints-{architecture}",
        f"{architecture} ({predictive}): each measure at the midpoints of every pair, pixel "
        "against latent paths; dashed: medians",
        lambda a=architecture, p=predictive: latent_figures.midpoint_histograms(
            {(m, path): results.midpoint_scores[a, p, m, path]
             for m in results.measures for path in midpoints},
            results.measures, midpoints, title=f"{a} ({p}): scores at the midpoints"),
        group="midpoints") for architecture, predictive in (shown.items() if midpoints else [])]


def _ranks(results: LatentResults) -> dict[str, list[str]]:
    return {"architecture": results.architectures, "predictive": results.predictives,
            "measure": results.measures, "path": list(PATHS)}


def _constant(results: LatentResults, key: tuple[str, str, str]) -> bool:
    """A map with one value over the whole grid (mutual information of a single network):
    its share says nothing about where the model is sure."""
    values = results.maps.get(key)
    return values is not None and bool(values.max() == values.min())


def _shares_table(results: LatentResults) -> Table:
    """Shares per architecture, predictive and measure; the largest share far from the data of
    each architecture marked (the finding), among maps that vary over the grid."""
    frame = ordered(results.shares, ["architecture", "predictive", "measure"], _ranks(results))
    frame = frame.reindex(columns=list(SHARE_TABLE))
    keys = list(zip(frame["architecture"], frame["predictive"], frame["measure"], strict=True))
    varying = pd.Series([not _constant(results, key) for key in keys])
    greyed = {(p, m) for a, p, m in keys
              if all(_constant(results, (b, p, m)) for b, q, n in keys if (q, n) == (p, m))}
    return build_table("shares", frame, greyed, directions={"share_far": 1},
                       group_by=["architecture"], row_headers=ROW_HEADERS, competing=varying)


def _midpoints(results: LatentResults) -> Table:
    frame = ordered(results.midpoints, [*ROW_HEADERS, "path"], _ranks(results))
    return build_table("midpoints", frame.reindex(columns=list(MIDPOINT_COLUMNS)), directions={},
                       row_headers=ROW_HEADERS)
