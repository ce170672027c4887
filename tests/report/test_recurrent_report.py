"""The recurrent study's page: its numbers are the study's, its figures exist, failures keep the
earlier page, and it shares a directory with report.html without touching that page's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from report_pages import Page, assert_a_failing_figure_keeps_the_earlier_page, files

from trustmap.errors import TrustmapError
from trustmap.report import recurrent_figures
from trustmap.report.results import RecurrentResults, RunResults
from trustmap.studies.recurrent_page import write_recurrent_report
from trustmap.studies.run_page import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARCHITECTURES = ["rnn-shallow", "lstm"]
METHODS = ["sensitivity", "lrp", "guided-backprop"]
T = 12  # steps of 7 columns
ACCURACY = {"rnn-shallow": 0.9812, "lstm": 0.9874}
SHARE = {("rnn-shallow", "sensitivity"): 0.712, ("rnn-shallow", "lrp"): 0.894,
         ("rnn-shallow", "guided-backprop"): 0.765, ("lstm", "sensitivity"): 0.801,
         ("lstm", "lrp"): 0.779, ("lstm", "guided-backprop"): 0.812}
BEST_SHARE = {"rnn-shallow": "lrp", "lstm": "guided-backprop"}
# (architecture, method, order) -> (aopc, flips): the random order beats every method on both
# under rnn-shallow, and must still never be marked best.
AOPC = {("rnn-shallow", "sensitivity", "morf"): (0.214, 6.0),
        ("rnn-shallow", "lrp", "morf"): (0.351, 3.5),
        ("rnn-shallow", "guided-backprop", "morf"): (0.187, 5.0),
        ("rnn-shallow", "random", "random"): (0.402, 2.0),
        ("lstm", "sensitivity", "morf"): (0.298, 4.0),
        ("lstm", "lrp", "morf"): (0.276, 4.5),
        ("lstm", "guided-backprop", "morf"): (0.145, 7.5),
        ("lstm", "random", "random"): (0.102, 9.0)}
SPEED = {("rnn-shallow", "sensitivity"): 5120.0, ("rnn-shallow", "lrp"): 2230.5,
         ("rnn-shallow", "guided-backprop"): 4870.25, ("lstm", "sensitivity"): 1450.0,
         ("lstm", "lrp"): 610.75, ("lstm", "guided-backprop"): 1502.0}


def make_recurrent_results() -> RecurrentResults:
    generator = torch.Generator().manual_seed(0)
    examples = torch.rand(2, 1, 28, 84, generator=generator)
    odd_block = torch.tensor([2, 0])  # the other-class item: last block, then first
    blocks = torch.arange(3)[None, :] != odd_block[:, None]
    masks = blocks.repeat_interleave(28, dim=1)[:, None, None, :].expand(-1, 1, 28, -1).clone()
    maps = {(a, m): torch.randn(2, 1, 28, 84, generator=generator)
            for a in ARCHITECTURES for m in METHODS}
    accuracy = pd.DataFrame(
        [(a, "mnist-3-maj", 1000 * (i + 1), 3, acc - 0.004, acc, 12.5 * (i + 1))
         for i, (a, acc) in enumerate(ACCURACY.items())],
        columns=["architecture", "dataset", "parameters", "epochs", "val_accuracy", "accuracy",
                 "train_seconds"])
    region = pd.DataFrame([(a, m, 64, share, 0.004, share - 0.01)
                           for (a, m), share in SHARE.items()],
                          columns=["architecture", "method", "n", "share", "sem", "share_pixels"])
    profile = np.r_[np.full(8, 0.11), np.full(4, 0.03)]
    steps = pd.DataFrame([(a, m, t + 1, profile[t]) for a in ARCHITECTURES for m in METHODS
                          for t in range(T)], columns=["architecture", "method", "step", "share"])
    aopc = pd.DataFrame([(a, m, o, 32, value, 0.01, flips)
                         for (a, m, o), (value, flips) in AOPC.items()],
                        columns=["architecture", "method", "order", "n", "aopc", "aopc_sem",
                                 "flips_to_change"])
    curves = pd.DataFrame([(a, m, o, k, 0.95 * np.exp(-k * value / 2))
                           for (a, m, o), (value, _) in AOPC.items() for k in range(8)],
                          columns=["architecture", "method", "order", "step", "mean"])
    speed = pd.DataFrame([(a, m, value) for (a, m), value in SPEED.items()],
                         columns=["architecture", "method", "maps_per_second"])
    return RecurrentResults(
        header={"title": "recurrent <demo>", "command": "trustmap study recurrent --epochs 3",
                "dataset": "mnist-3-maj", "seconds": 75.0,
                "seed_002_accuracy": {"rnn-shallow": 0.9806, "rnn-deep": 0.9861}},
        dataset="mnist-3-maj", architectures=list(ARCHITECTURES), methods=list(METHODS),
        accuracy=accuracy, region=region, steps=steps, aopc=aopc, curves=curves,
        examples=examples, example_labels=["7", "2"], example_masks=masks, maps=maps,
        speed=speed)


@pytest.fixture
def recurrent_results() -> RecurrentResults:
    return make_recurrent_results()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One page written for all read-only checks, so the figures are drawn once."""
    return write_recurrent_report(make_recurrent_results(), tmp_path_factory.mktemp("recurrent"))


@pytest.fixture(scope="module")
def page(written: Path) -> Page:
    return Page(written.read_text("utf-8"))


def test_every_figure_is_a_png_beside_the_page(written: Path, page: Page) -> None:
    # 2 example heatmaps, the region shares, the step profile and the perturbation curves.
    assert written.name == "recurrent.html"
    assert len(page.images) == 5
    for src in page.images:
        path = written.parent / src
        assert src.startswith("figures/recurrent-") and path.is_file(), src
        assert path.read_bytes()[:8] == PNG_MAGIC, src
    assert sorted(p.name for p in written.parent.iterdir()) == ["figures", "recurrent.html"]
    assert sorted(p.name for p in (written.parent / "figures").iterdir()) == \
        sorted(Path(src).name for src in page.images)
    assert page.sections == ["accuracy", "heatmaps", "region", "faithfulness", "speed"]
    assert [link for link in page.links if link.startswith("#")] == [
        f"#{section}" for section in page.sections]


def test_header_title_and_seed_002_reference(written: Path) -> None:
    text = written.read_text("utf-8")
    assert "<title>recurrent &lt;demo&gt;</title>" in text
    assert "trustmap study recurrent --epochs 3" in text and "75.0 s (0:01:15)" in text
    assert "laid out like seed 002" in text
    assert "chance, 2/3" in text and "steps 1–8 are the data region" in text


def test_accuracy_pivot_has_a_column_per_architecture_and_the_seeds_row(page: Page) -> None:
    assert page.header("accuracy-pivot")[1:] == ARCHITECTURES
    cells, best = page.row("accuracy-pivot", "seed 002, reported test")
    assert cells[1:] == ["0.981", "–"] and not any(best)  # rnn-deep was not in this run
    cells, _ = page.row("accuracy-pivot", "mnist-3-maj: test")
    assert cells[1:] == [f"{ACCURACY[a]:.3f}" for a in ARCHITECTURES]


def test_accuracy_table_marks_the_best(page: Page) -> None:
    assert page.header("accuracy") == ["architecture", "dataset", "parameters", "epochs",
                                       "val accuracy", "accuracy", "train seconds"]
    for architecture, accuracy in ACCURACY.items():
        cells, best = page.row("accuracy", architecture)
        assert cells[5] == f"{accuracy:.3f}"
        assert best[5] == (architecture == "lstm") and best[4] == (architecture == "lstm")
        assert not best[6]  # training time is not a score


def test_region_pivot_holds_the_shares_and_marks_the_best_per_architecture(page: Page) -> None:
    assert page.header("region-share") == ["method", *ARCHITECTURES]
    assert [row[0][0] for row in page.tables["region-share"][1:]] == METHODS
    for (architecture, method), share in SHARE.items():
        cells, best = page.row("region-share", method)
        column = 1 + ARCHITECTURES.index(architecture)
        assert cells[column] == f"{share:.3f}"
        assert best[column] == (BEST_SHARE[architecture] == method)
    cells, best = page.row("region-all", "lstm", "guided-backprop")
    assert cells[2:] == ["64", "0.812", "0.004", "0.802"] and best[3] and best[5]


def test_aopc_best_is_among_morf_only(page: Page) -> None:
    assert page.header("aopc") == ["method", *ARCHITECTURES]
    assert [row[0][0] for row in page.tables["aopc"][1:]] == [*METHODS, "random"]
    cells, best = page.row("aopc", "random")
    assert cells[1:] == ["0.402", "0.102"] and not any(best)  # a reference, never the best
    assert page.row("aopc", "lrp")[1][1] and page.row("aopc", "sensitivity")[1][2]
    assert sum(b for row in page.tables["aopc"][1:] for b in row[1]) == 2
    # The long table: flips to change, lower is better, again among MoRF rows only.
    cells, best = page.row("aopc-all", "rnn-shallow", "lrp")
    assert cells[2:] == ["morf", "32", "0.351", "0.010", "3.500"] and best[4] and best[6]
    assert not any(page.row("aopc-all", "rnn-shallow", "random")[1])
    assert page.row("aopc-all", "lstm", "sensitivity")[1][6]  # 4.0 flips, the fewest


def test_speed_pivot(page: Page) -> None:
    cells, best = page.row("speed", "sensitivity")
    assert cells == ["sensitivity", "5120.000", "1450.000"] and best == [False, True, False]
    assert page.row("speed", "guided-backprop")[1] == [False, False, True]


def test_empty_speed_hides_its_section(recurrent_results: RecurrentResults,
                                       tmp_path: Path) -> None:
    recurrent_results.speed = pd.DataFrame()
    shown = Page(write_recurrent_report(recurrent_results, tmp_path).read_text("utf-8"))
    assert shown.sections == ["accuracy", "heatmaps", "region", "faithfulness"]
    assert "#speed" not in shown.links and "speed" not in shown.tables


def test_a_failing_figure_keeps_the_earlier_page(written: Path,
                                                 recurrent_results: RecurrentResults,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the patched figure is the last drawn
    assert_a_failing_figure_keeps_the_earlier_page(
        written, tmp_path / "run", monkeypatch, recurrent_figures, "aopc_curves",
        lambda out: write_recurrent_report(recurrent_results, out))


def test_shares_a_directory_with_report_html(written: Path, results: RunResults,
                                            recurrent_results: RecurrentResults,
                                            tmp_path: Path) -> None:
    """Each page removes only its own stale figures, never the other page's or a stranger."""
    out = tmp_path / "run"
    results.images, results.explanations = {}, None
    results.measures = {"entropy": results.measures["entropy"]}
    report = write_report(results, out, predictive="single")
    figures = out / "figures"
    (figures / "recurrent-99-gone.png").write_bytes(PNG_MAGIC)  # stale: this page's prefix
    (figures / "notes.png").write_bytes(PNG_MAGIC)  # someone else's
    before = {name: data for name, data in files(out).items() if "recurrent-" not in name}

    page = write_recurrent_report(recurrent_results, out)
    after = files(out)
    assert {name: after[name] for name in before} == before  # report.html and its figures
    assert not (figures / "recurrent-99-gone.png").exists()
    drawn = sorted(f"figures/{Path(src).name}" for src in Page(page.read_text("utf-8")).images)
    assert sorted(name for name in after if "recurrent-" in name) == drawn

    write_report(results, out, predictive="single")  # and the other way round
    assert all((out / name).is_file() for name in drawn)
    assert (out / "recurrent.html").read_bytes() == after["recurrent.html"]
    assert report.is_file() and (figures / "notes.png").is_file()


def test_bad_results_are_refused_before_anything_is_written(
        recurrent_results: RecurrentResults, tmp_path: Path) -> None:
    recurrent_results.region = recurrent_results.region.drop(columns="sem")
    with pytest.raises(TrustmapError, match=r"RecurrentResults.region lacks the columns \['sem'\]"):
        write_recurrent_report(recurrent_results, tmp_path / "a")
    recurrent_results = make_recurrent_results()
    del recurrent_results.maps["lstm", "lrp"]
    with pytest.raises(TrustmapError, match=r"maps\['lstm', 'lrp'\]: none"):
        write_recurrent_report(recurrent_results, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_heatmap_scales_are_symmetric_per_map(recurrent_results: RecurrentResults) -> None:
    maps = {key: value[0] for key, value in recurrent_results.maps.items()}
    maps["lstm", "sensitivity"] = maps["lstm", "sensitivity"] ** 2  # squared: all >= 0
    figure = recurrent_figures.heatmap_grid(recurrent_results.examples[0],
                                            recurrent_results.example_masks[0], maps,
                                            ARCHITECTURES, METHODS, "label 7")
    axes = [axis for axis in figure.axes if axis.images]
    assert len(axes) == len(ARCHITECTURES) * (1 + len(METHODS))
    for row, architecture in enumerate(ARCHITECTURES):
        assert axes[row * 4].get_ylabel() == architecture
        assert axes[row * 4].images[0].get_array().shape == (28, 84)
        for column, method in enumerate(METHODS, start=1):
            largest = float(maps[architecture, method].abs().max())
            low, high = axes[row * 4 + column].images[0].get_clim()
            assert low == pytest.approx(-largest) and high == pytest.approx(largest)
    assert [axes[c].get_title() for c in range(1, 4)] == METHODS
    assert figure.get_suptitle() == "label 7"


def test_region_plot_has_a_line_per_method_and_the_chance_line(
        recurrent_results: RecurrentResults) -> None:
    figure = recurrent_figures.region_shares(recurrent_results.region, ARCHITECTURES, METHODS,
                                             recurrent_results.chance)
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_legend().get_texts()] == METHODS
    lines = {bars.get_label(): bars.lines[0].get_ydata() for bars in axis.containers}
    for method in METHODS:
        assert list(lines[method]) == [SHARE[a, method] for a in ARCHITECTURES]
    chance = [line for line in axis.get_lines() if line.get_linestyle() == "--"]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [2 / 3, 2 / 3]
    assert "chance" in [t.get_text() for t in axis.texts]
