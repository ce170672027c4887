"""The one page engine: every report page is a header and a list of ``Section``s.

A page module (``studies/*_page.py``: the run, recurrent, latent, influence) only says which
sections it has: their figures as deferred drawing jobs, their tables, and the template macro
(named like the section, in the page's template) that lays them out. Everything else is here,
once: drawing the figures into a hidden staging folder, rendering with jinja2 (escaped, strict),
moving the figures beside the page and writing the page atomically, last, so that a failure
anywhere keeps the earlier page and every figure it points at.
"""

from __future__ import annotations

import collections
import json
import math
import multiprocessing
import numbers
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import torch
from matplotlib.figure import Figure

from trustmap.atomic import Outputs, temporary_folder, write_atomic
from trustmap.report.plot import save_figure

FIGURES_DIR = "figures"
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
    """A figure drawn for a page: its path relative to the page, caption, and group."""

    src: str
    caption: str
    group: str = ""


@dataclass
class Job:
    """A figure a section shows, drawn only when the page is written."""

    name: str
    caption: str
    draw: Callable[[], Figure]
    group: str = ""
    """A section that shows figures in more than one place names each place by a group."""


@dataclass
class Section:
    """One part of a page: its anchor, title (and shorter link text), the figures it draws and
    the ``context`` its template macro reads; ``parts`` are sections shown inside it.

    The macro is named ``macro`` (default: the id) in ``template`` (default: the page's), so a
    study's sections keep their own macros on any page that shows them.
    """

    id: str
    title: str
    nav: str = ""
    jobs: list[Job] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    drawn: list[FigureRef] = field(default_factory=list)
    template: str = ""
    macro: str = ""
    parts: list[Section] = field(default_factory=list)

    def figures(self, group: str = "") -> list[FigureRef]:
        """The drawn figures of one group, in drawing order."""
        return [ref for ref in self.drawn if ref.group == group]

    def walk(self) -> Iterator[Section]:
        """This section, then its parts, depth first (the page's reading order)."""
        yield self
        for part in self.parts:
            yield from part.walk()


def study_section(name: str, title: str, nav: str, template: str, parts: list[Section]
                  ) -> Section:
    """A study's sections shown inside another page, under one heading: their ids prefixed
    with the study's name, so they cannot clash with the page's own, each still laid out by
    its macro in the study's ``template``; the heading's own macro is ``study`` there."""
    for part in parts:
        for inner in part.walk():
            inner.macro, inner.id = inner.macro or inner.id, f"{name}-{inner.id}"
            inner.template = inner.template or template
    return Section(name, title, nav, template=template, macro="study", parts=parts)


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


def write_page(page: Path, template: str, header: Mapping[str, Any], default_title: str,
               plan: Callable[[], list[Section]], prefix: str = "",
               outputs: Outputs | None = None, **context: Any) -> Path:
    """Draw the sections ``plan`` returns, render them with ``template``, write both; return
    the page.

    Figures are drawn into a hidden staging folder, named ``<prefix><NN>-<name>.png``; only
    once all of them and the page text exist do they move into ``figures/`` and is the page
    written, atomically. If anything fails, an earlier page and every figure it points at are
    left as they were, and a directory this call created is removed again. Afterwards, figures
    of this ``prefix`` the page no longer draws are removed, and no other file: pages with
    different prefixes share one figures folder. With ``outputs``, the page text replaces the
    earlier page together with the command's other outputs (``atomic.together``).
    ``context`` is what every macro may read.
    """
    out_dir = page.parent
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir = out_dir / FIGURES_DIR
    staging = temporary_folder(out_dir, f"{prefix}figures-")
    try:
        sections = plan()
        _check_unique_ids(sections)
        jobs = [(part, job) for section in sections for part in section.walk()
                for job in part.jobs]
        names = [f"{prefix}{number:02d}-{_slug(job.name)}.png"
                 for number, (_, job) in enumerate(jobs, start=1)]
        draw_all([job for _, job in jobs], [staging / name for name in names])
        for (section, job), filename in zip(jobs, names, strict=True):
            section.drawn.append(FigureRef(f"{FIGURES_DIR}/{filename}", job.caption, job.group))
        title, items = page_header(header, default_title)
        text = render(template, title=title, header=items, sections=sections, **context)
        figures_dir.mkdir(exist_ok=True)
        written = {path.name for path in staging.iterdir()}
        for name in sorted(written):
            os.replace(staging / name, figures_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    page = (outputs.write if outputs else write_atomic)(
        page, lambda tmp: tmp.write_text(text, "utf-8"))
    own = re.compile(re.escape(prefix) + r"\d+-.*\.png")
    for stale in figures_dir.glob("*.png"):
        if own.fullmatch(stale.name) and stale.name not in written:
            stale.unlink()
    return page


DRAWING_PROCESSES = min(2, os.cpu_count() or 1)
"""Figures are independent: this many forked processes draw them (1: in this process)."""
_PENDING: list[tuple[Job, Path]] = []


def draw_all(jobs: Sequence[Job], paths: Sequence[Path]) -> None:
    """Draw and save every job, in ``DRAWING_PROCESSES`` forked processes where there are several.

    A forked child sees the parent's results without copying them; it draws with one torch
    thread (as DataLoader workers do), since a thread pool does not survive a fork. An error in
    any figure is raised here, after which nothing of the page is kept.
    """
    processes = min(DRAWING_PROCESSES, len(jobs))
    if processes < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for job, path in zip(jobs, paths, strict=True):
            save_figure(job.draw(), path)
        return
    _PENDING[:] = list(zip(jobs, paths, strict=True))
    try:
        with ProcessPoolExecutor(processes, multiprocessing.get_context("fork"),
                                 initializer=_one_thread) as pool:
            for _ in pool.map(_draw_pending, range(len(jobs))):
                pass
    finally:
        _PENDING.clear()


def _one_thread() -> None:
    torch.set_num_threads(1)


def _draw_pending(index: int) -> None:
    job, path = _PENDING[index]
    save_figure(job.draw(), path)


def _check_unique_ids(sections: Sequence[Section]) -> None:
    """Anchors and tables share the page's ids: a clash would make a link or a test find the
    wrong element, so it is a programming error, caught before anything is drawn."""
    ids = [part.id for section in sections for part in section.walk()]
    ids += [f"table-{table.id}" for section in sections for part in section.walk()
            for table in part.context.values() if isinstance(table, Table)]
    repeated = sorted(i for i, count in collections.Counter(ids).items() if count > 1)
    if repeated:
        raise ValueError(f"the page has the ids {repeated} more than once; rename a section "
                         "or a table")


def render(template: str, **context: Any) -> str:
    """The page: ``base.html.j2`` with each section laid out by its macro in ``template``.

    Everything is HTML-escaped, and undefined names raise instead of rendering as blanks, so a
    template and its page module never silently drift apart.
    """
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("base.html.j2").render(fragments=template, **context)


def page_header(header: Mapping[str, Any], default_title: str) -> tuple[str, list[HeaderItem]]:
    """The page title (``header["title"]`` or ``default_title``) and every other entry."""
    entries = dict(header)
    title = str(entries.pop("title", default_title))
    return title, [_header_item(key, value) for key, value in entries.items()]


def _slug(name: str) -> str:
    """A file name from a dataset or measure name, which may hold any character."""
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)
    return kept.strip("-").lower()[:60] or "figure"


# --- tables


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
    columns = list(frame.columns)
    headers = [c in row_headers for c in columns]
    # plain lists, not per-cell pandas lookups (a run's long tables have ~20,000 cells);
    # object: each cell keeps its own type
    values, marked = frame.astype(object).to_numpy().tolist(), best.to_numpy().tolist()
    rows = [[Cell(text(value), _sort_key(value), bool(is_best), row_header=header)
             for value, is_best, header in zip(row, row_best, headers, strict=True)]
            for row, row_best in zip(values, marked, strict=True)]
    where = {c: columns.index(c) for c in ("predictive", "measure") if c in columns}
    greyed = [tuple(row[where[c]] if c in where else None for c in ("predictive", "measure"))
              in degenerate for row in values]
    return Table(table_id, [LABELS.get(c, c.replace("_", " ")) for c in frame.columns],
                 [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns], rows, greyed)


def ordered(frame: pd.DataFrame, by: list[str], ranks: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """Rows in the study's order of each ``by`` column (``ranks[column]``), not alphabetical:
    stable, and values a rank list does not name come after the named ones."""
    def rank(column: pd.Series) -> pd.Series:
        known = {value: i for i, value in enumerate(dict.fromkeys(ranks[column.name]))}
        return column.map(lambda value: known.get(value, len(known)))

    return frame.sort_values(by, kind="stable", key=rank)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def text(value: Any) -> str:
    """A cell's text: floats to 3 decimals, missing values as a dash."""
    if _missing(value):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _sort_key(value: Any) -> str:
    """What the page's script sorts by: the full number, or the text; empty for missing."""
    if _missing(value):
        return ""
    return repr(float(value)) if isinstance(value, numbers.Real) else str(value)


# --- the header


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
