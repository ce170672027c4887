"""A parser of the study pages (recurrent.html, latent.html, influence.html) and a snapshot of
a directory's files, shared by their report tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest


def files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path: to show that a write left them as they
    were."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


def assert_a_failing_figure_keeps_the_earlier_page(
        written: Path, out: Path, monkeypatch: pytest.MonkeyPatch, module: object,
        figure: str, write: Callable[[Path], object]) -> None:
    """Copy the written page's directory to ``out``, make ``module.figure`` raise, and check
    that ``write(out)`` fails leaving every file as it was and no staging folder behind."""
    shutil.copytree(written.parent, out)
    before = files(out)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(module, figure, broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write(out)
    assert files(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["figures", written.name]  # no staging


class Page(HTMLParser):
    """Images and their alt texts, section ids, nav links, and every table by its id (its HTML
    id less the ``table-`` prefix) as rows of cell texts, which cells are marked best, and
    whether the row is greyed."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.alts: list[str | None] = []
        self.sections: list[str] = []
        self.links: list[str] = []
        self.tables: dict[str, list[tuple[list[str], list[bool]]]] = {}
        self.greyed: dict[str, list[bool]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.images.append(str(found["src"]))
            self.alts.append(found.get("alt"))
        elif tag == "section":
            self.sections.append(str(found["id"]))
        elif tag == "a":
            self.links.append(str(found["href"]))
        elif tag == "table" and found.get("id"):
            self._table = str(found["id"]).removeprefix("table-")  # the page's table id
            self.tables[self._table], self.greyed[self._table] = [], []
        elif tag == "tr" and self._table:
            self.tables[self._table].append(([], []))
            self.greyed[self._table].append(found.get("class") == "degenerate")
        elif tag in ("td", "th") and self._table:
            self._cell = []
            self.tables[self._table][-1][1].append("best" in (found.get("class") or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1][0].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def header(self, table: str) -> list[str]:
        return self.tables[table][0][0]

    def rows(self, table: str) -> list[list[str]]:
        return [cells for cells, _ in self.tables[table][1:]]

    def row(self, table: str, *keys: str) -> tuple[list[str], list[bool]]:
        matches = [r for r in self.tables[table][1:] if r[0][:len(keys)] == list(keys)]
        assert len(matches) == 1, f"{keys} in {table}: {len(matches)} rows"
        return matches[0]
