"""The report in a real browser, offline: images load, nothing errs, tables sort on click.

Needs Debian's ``chromium`` and the ``playwright`` Python package (its bundled driver only; no
browser is downloaded). Skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    if os.environ.get("CI"):  # CI installs it (.ci/run): a skip there would hide a failure
        raise RuntimeError(f"{CHROMIUM} is absent in CI; .ci/run must apt-get install chromium")
    pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is absent: pip install playwright")


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def opened(browser: sync_api.Browser,
           written_report: Path) -> Iterator[tuple[sync_api.Page, list[str]]]:
    """The report in a fresh page, with every console error, page error and non-file request."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("request", lambda r: problems.append(f"request: {r.url}")
            if not r.url.startswith("file://") else None)
    page.goto(written_report.as_uri(), wait_until="load")
    yield page, problems
    page.close()


def _column(page: sync_api.Page, table: str, column: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr", f"rows => rows.map(r => r.cells[{column}].textContent.trim())")


def test_images_load_and_nothing_errs(opened: tuple[sync_api.Page, list[str]],
                                      tmp_path: Path) -> None:
    page, problems = opened
    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) == 20
    assert [src for src, complete, width in images if not complete or width == 0] == []
    for table in ("ood-auroc", "ood-all", "misclassification", "calibration", "adversarial"):
        assert page.locator(f"#{table} tbody tr").count() > 0, table
    page.screenshot(path=tmp_path / "report.png", full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert problems == []


def test_clicking_a_header_sorts_the_table(opened: tuple[sync_api.Page, list[str]]) -> None:
    page, problems = opened
    header = page.locator("#misclassification thead th").nth(2)  # AUROC
    assert _column(page, "misclassification", 2) == ["0.861", "0.893", "0.842", "0.805"]
    header.locator("button").click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert _column(page, "misclassification", 2) == ["0.805", "0.842", "0.861", "0.893"]
    header.locator("button").click()
    assert header.get_attribute("aria-sort") == "descending"
    assert _column(page, "misclassification", 2) == ["0.893", "0.861", "0.842", "0.805"]
    # Text columns sort alphabetically; whole rows move together.
    page.locator("#ood-auroc thead th button", has_text="predictive").click()
    predictives = _column(page, "ood-auroc", 1)
    assert predictives == sorted(predictives) and predictives[0] == "ensemble"
    assert _column(page, "ood-auroc", 0)[:3] == ["entropy", "mutual_information",
                                                 "variation_ratio"]
    assert problems == []
