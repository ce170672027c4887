"""The report in a real browser, offline: its structure, not its numbers.

Every section is there with a heading and a nav link to it, every image loads and has alt text,
every table sorts on every column, and nothing errs or leaves the report's folder. Nothing here
counts figures or reads values, so adding or removing a figure or a result changes no test.

Needs Debian's ``chromium`` and the ``playwright`` Python package (its bundled driver only; no
browser is downloaded). Skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import trustmap.report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TEMPLATE = Path(trustmap.report.__file__).parent / "templates" / "report.html.j2"
"""The run page's template: one macro per section the page can have."""

if not CHROMIUM.exists():
    if os.environ.get("CI"):  # CI installs it (.ci/run): a skip there would hide a failure
        raise RuntimeError(f"{CHROMIUM} is absent in CI; .ci/run must apt-get install chromium")
    pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is absent: pip install playwright")

SHOWN = """table => [
    Array.from(table.tHead.rows[0].cells, th => th.getAttribute("aria-sort")),
    Array.from(table.tBodies[0].rows, row => Array.from(row.cells, cell => [
        cell.textContent.trim(), cell.getAttribute("data-sort"), cell.classList.contains("best")]))
]"""
"""A table's headers' sort states, and its body rows' cells as (text, sort key, highlighted)
in the order shown."""

CLICK_EVERY_HEADER = f"""table => {{
    const shown = {SHOWN};
    return Array.from(table.tHead.rows[0].cells).flatMap(
        th => [0, 1].map(() => {{ th.querySelector("button").click(); return shown(table); }}));
}}"""
"""Clicks each header twice (ascending, then descending), returning what each click shows: one
round trip per table, where a real click per header would take seconds."""

IN_ORDER = """([keys, numeric, direction]) => {
    const filled = keys.filter(key => key !== "");
    const rank = (a, b) => numeric ? parseFloat(a) - parseFloat(b) : a.localeCompare(b);
    return keys.slice(filled.length).every(key => key === "")
        && filled.every((key, i) => i === 0 || direction * rank(key, filled[i - 1]) >= 0);
}"""
"""Whether sort keys are in order: numbers by value, text as the browser collates it, blanks
last in either direction (the page's promise to its reader)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def opened(browser: sync_api.Browser,
           written_report: Path) -> Iterator[tuple[sync_api.Page, list[str]]]:
    """The report in a fresh page, with every console error or warning, page error and request
    for anything outside the report's folder (the page must work offline, from a copy)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    folder = written_report.parent.as_uri() + "/"
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("request", lambda r: problems.append(f"request: {r.url}")
            if not r.url.startswith(folder) else None)
    page.goto(written_report.as_uri(), wait_until="load")
    yield page, problems
    page.close()


def test_every_section_has_a_heading_content_and_a_nav_link(
        opened: tuple[sync_api.Page, list[str]]) -> None:
    page, problems = opened
    assert page.locator("h1").inner_text().strip()
    sections = page.eval_on_selector_all("main > section", """sections => sections.map(s => [
        s.id, s.firstElementChild?.tagName === "H2" ? s.firstElementChild.textContent.trim() : "",
        s.children.length])""")
    ids = [section_id for section_id, _, _ in sections]
    expected = re.findall(r"{% macro (\w+)\(", TEMPLATE.read_text(encoding="utf-8"))
    assert sorted(ids) == sorted(expected)
    assert [section_id for section_id, heading, _ in sections if not heading] == []
    assert [section_id for section_id, _, children in sections if children < 2] == []  # empty
    links = page.eval_on_selector_all("nav a", "links => links.map(a => a.getAttribute('href'))")
    assert links == [f"#{section_id}" for section_id in ids]
    for section_id in ids:  # a link's target is its section, and following it shows the section
        target = f"document.getElementById('{section_id}')"
        assert page.evaluate(f"{target}.tagName") == "SECTION", section_id
        page.locator(f'nav a[href="#{section_id}"]').click()
        assert page.evaluate("location.hash") == f"#{section_id}"
        assert -1 < page.evaluate(f"{target}.getBoundingClientRect().top") < 900, section_id
    assert problems == []


def test_every_image_loads_and_has_alt_text(opened: tuple[sync_api.Page, list[str]]) -> None:
    page, problems = opened
    images = page.eval_on_selector_all("img", """images => images.map(
        i => [i.getAttribute("src"), i.complete && i.naturalWidth > 0, i.alt.trim()])""")
    assert images, "the test run draws figures: a page without images lost them"
    assert [src for src, loaded, _ in images if not loaded] == []
    assert [src for src, _, alt in images if not alt] == []
    assert problems == []


def test_every_table_sorts_on_every_column(opened: tuple[sync_api.Page, list[str]]) -> None:
    """Each header sorts ascending, then descending; rows move whole, highlights with them."""
    page, problems = opened
    page.eval_on_selector_all("details", "all => all.forEach(d => { d.open = true; })")
    tables = page.eval_on_selector_all("table.sortable", "tables => tables.map(t => t.id)")
    assert tables
    reordered = False
    for table in (f"table#{table_id}" for table_id in tables):
        _, shown = page.eval_on_selector(table, SHOWN)
        assert shown, f"{table} has no rows"
        numeric = page.eval_on_selector_all(f"{table} thead th",
                                            "ths => ths.map(th => th.classList.contains('num'))")
        clicks = page.eval_on_selector(table, CLICK_EVERY_HEADER)
        page.locator(f"{table} thead th button").first.click()  # a mouse reaches the buttons too
        clicks.append(page.eval_on_selector(table, SHOWN))
        expected = [(c, d) for c in range(len(numeric)) for d in (1, -1)] + [(0, 1)]
        for (column, direction), (states, rows) in zip(expected, clicks, strict=True):
            state = "ascending" if direction == 1 else "descending"
            assert states == [state if i == column else "none" for i in range(len(states))]
            assert sorted(rows) == sorted(shown), (table, column, state)
            keys = [row[column][1] for row in rows]
            assert page.evaluate(IN_ORDER, [keys, numeric[column], direction]), (table, column,
                                                                                 state)
            reordered |= rows != shown
            shown = rows
    assert reordered, "no click changed the order of any table"
    assert problems == []
