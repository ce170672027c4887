"""The influence study's page: every section and figure is there, the maps share the scale they
claim, the certainty summary is the stated ratio, bad results are refused before anything is
written, and the page shares a directory with other pages without touching them."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from report_pages import Page, assert_a_failing_figure_keeps_the_earlier_page, files

from trustmap.errors import DataError
from trustmap.report import influence_figures
from trustmap.report.plot import limit as shared_limit
from trustmap.report.results import InfluenceResults
from trustmap.studies.influence_page import certainty, write_influence_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["zero", "one", "two"]
K, H, W, T = len(CLASSES), 28, 28, 5
CONSTANT = [(0, 0), (0, 1), (27, 27)]
MISSED = [(10, 12), (20, 3)]
CURVE_PIXELS = [(14, 14), (5, 20)]
LARGEST = (1, 7, 9, -0.073)  # (class, row, column, value): the largest |influence| of all
SECTIONS = ["overview", "influence", "spread", "performance", "uncertainty", "curves"]
FIGURES = ["influence", "spread", "performance", "uncertainty", "curves"]
PROJECTION = {"pixels": H * W, "constant_pixels": len(CONSTANT), "pairs": 2 * H * W,
              "pairs_at_bound": 700, "pairs_not_converged": 3,
              "pixels_not_converged": len(MISSED), "max_iterations": 12}


def _mask(pixels: list[tuple[int, int]]) -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.bool)
    for row, column in pixels:
        mask[row, column] = True
    return mask


def make_influence_results() -> InfluenceResults:
    generator = torch.Generator().manual_seed(4)
    constant = _mask(CONSTANT)
    influence = 0.05 * (2 * torch.rand(K, H, W, generator=generator) - 1)
    klass, row, column, value = LARGEST
    influence[klass, row, column] = value
    influence[:, constant] = 0.0
    member_std = 0.01 * torch.rand(K, H, W, generator=generator)
    member_std[:, constant] = 0.0
    maps = {name: scale * torch.randn(H, W, generator=generator).masked_fill(constant, 0.0)
            for name, scale in (("accuracy", 0.02), ("log-loss", 0.3), ("entropy", 0.1),
                                ("mutual_information", 0.01))}
    targets = torch.linspace(0.0, 1.0, T)[:, None].repeat(1, len(CURVE_PIXELS))
    converged = torch.ones(T, len(CURVE_PIXELS), dtype=torch.bool)
    converged[1, 0] = converged[4, 1] = False
    return InfluenceResults(
        header={"title": "influence <demo>", "command": "trustmap study influence --seed 4",
                "data": "mnist test, 200 images", "members": 2, "alpha": 0.05,
                "taus": [-1.0, 1.0], "tolerance": 1e-6,
                "versions": {"trustmap": "0.1.0", "torch": "2.13.0"}},
        classes=list(CLASSES),
        mean_image=torch.rand(H, W, generator=generator),
        influence=influence,
        member_std=member_std,
        performance={name: maps[name] for name in ("accuracy", "log-loss")},
        uncertainty={name: maps[name] for name in ("entropy", "mutual_information")},
        constant=constant,
        not_converged=_mask(MISSED),
        projection=dict(PROJECTION),
        accuracy=pd.DataFrame({"model": ["member 0", "member 1", "ensemble"],
                               "accuracy": [0.912, 0.905, 0.931]}),
        curve_pixels=list(CURVE_PIXELS),
        curve_targets=targets,
        curve_values=torch.softmax(torch.randn(T, len(CURVE_PIXELS), K, generator=generator),
                                   -1),
        curve_converged=converged,
        timings=pd.DataFrame({"step": ["training", "projection", "influence maps"],
                              "seconds": [42.25, 3.5, 0.75]}))


@pytest.fixture
def influence_results() -> InfluenceResults:
    return make_influence_results()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One page written for all read-only checks, so the figures are drawn once."""
    return write_influence_report(make_influence_results(), tmp_path_factory.mktemp("influence"))


@pytest.fixture(scope="module")
def page(written: Path) -> Page:
    return Page(written.read_text("utf-8"))


def _panels(figure: plt.Figure) -> list[plt.Axes]:
    return [axis for axis in figure.axes if axis.images]


# --- the page


def test_every_section_and_figure_is_written_and_referenced(written: Path,
                                                            page: Page) -> None:
    assert written.name == "influence.html"
    assert page.sections == SECTIONS
    assert [link for link in page.links if link.startswith("#")] == [f"#{s}" for s in SECTIONS]
    assert page.images == [f"figures/influence-{n:02d}-{name}.png"
                           for n, name in enumerate(FIGURES, start=1)]
    for src in page.images:
        assert (written.parent / src).read_bytes()[:8] == PNG_MAGIC, src
    assert sorted(p.name for p in written.parent.iterdir()) == ["figures", "influence.html"]
    assert sorted(f"figures/{p.name}" for p in (written.parent / "figures").iterdir()) == \
        sorted(page.images)
    assert len(page.alts) == len(FIGURES) and all(alt and len(alt) > 40 for alt in page.alts)


def test_header_lead_and_tables(written: Path, page: Page) -> None:
    text = written.read_text("utf-8")
    assert "<title>influence &lt;demo&gt;</title>" in text
    assert "trustmap study influence --seed 4" in text and "2.13.0" in text
    assert "0.05 quantile (τ = −1) to its 0.95 quantile (τ = +1)" in text
    assert "28×28 pixels: 3 pixels are constant" in text
    assert "700 of 1568 (τ, pixel) pairs" in text and "3 pairs, on 2 pixels" in text
    assert "grey: the 3 constant pixels (exactly 0); ×: the 2 pixels" in text
    assert "one scale, ±0.073, shared by all 3 classes" in text
    assert "For <strong>accuracy</strong>, positive means better" in text
    assert "for <strong>log-loss</strong>, positive means worse" in text
    assert page.header("accuracy") == ["model", "accuracy"]
    assert page.rows("accuracy") == [["member 0", "0.912"], ["member 1", "0.905"],
                                     ["ensemble", "0.931"]]
    assert page.row("accuracy", "ensemble")[1] == [False, True]
    counts = [row[1] for row in page.rows("projection")]
    assert counts == [str(PROJECTION[key]) for key in PROJECTION]
    assert page.rows("timings") == [["training", "42.250"], ["projection", "3.500"],
                                    ["influence maps", "0.750"]]


def test_certainty_table_is_the_summary_of_the_maps(page: Page,
                                                    influence_results: InfluenceResults) -> None:
    expected = certainty(influence_results.influence, influence_results.member_std, CLASSES)
    assert page.header("certainty") == ["class", "max abs influence", "pixels", "relative std"]
    assert page.rows("certainty") == [
        [name, f"{largest:.3f}", str(count), f"{ratio:.3f}"]
        for name, largest, count, ratio in expected.itertuples(index=False)]
    assert expected["max_abs_influence"][LARGEST[0]] == pytest.approx(abs(LARGEST[3]))


def test_empty_sections_say_so(influence_results: InfluenceResults, tmp_path: Path) -> None:
    influence_results.performance, influence_results.uncertainty = {}, {}
    influence_results.curve_pixels = []
    influence_results.curve_targets = torch.zeros(T, 0)
    influence_results.curve_values = torch.zeros(T, 0, K)
    influence_results.curve_converged = torch.zeros(T, 0, dtype=torch.bool)
    text = write_influence_report(influence_results, tmp_path).read_text("utf-8")
    assert Page(text).images == ["figures/influence-01-influence.png",
                                 "figures/influence-02-spread.png"]
    for what in ("performance maps", "uncertainty maps", "curves"):
        assert f"The run stored no {what}." in text


# --- the scales and the certainty summary


def test_shared_limit_is_the_largest_absolute_value_of_all_maps() -> None:
    first = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    second = torch.tensor([[-0.5, 2.5]])
    assert shared_limit([first, second]) == 3.0
    assert shared_limit({"a": second, "b": 0.5 * first}) == 2.5
    assert shared_limit(torch.stack([first, -2 * first])) == 6.0
    assert shared_limit(torch.zeros(2, 3, 3)) == 0.0
    with pytest.raises(DataError, match="no map values"):
        shared_limit([])
    with pytest.raises(DataError, match="NaN"):
        shared_limit(torch.tensor([1.0, math.nan]))


def test_certainty_by_hand() -> None:
    # Class a: largest |influence| 0.5, so pixels above 0.05 count: 0.5 (std 0.1) and -0.2
    # (std 0.1), not 0.04, not -0.05 (at the threshold, not above) and not the 0 of a constant
    # pixel; the mean of 0.1/0.5 and 0.1/0.2 is 0.35.
    # Class b: -0.8 and 0.4 count (0.06 does not, below 0.08): (0.4/0.8 + 0.2/0.4) / 2 = 0.5.
    # Class c: all 0, no pixel to average over.
    influence = torch.tensor([[[0.5, -0.2, 0.04, 0.0, -0.05]], [[-0.8, 0.4, 0.06, 0.0, 0.0]],
                              [[0.0, 0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    std = torch.tensor([[[0.1, 0.1, 1.0, 0.0, 9.0]], [[0.4, 0.2, 5.0, 0.0, 0.0]],
                        [[0.3, 0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    table = certainty(influence, std, ["a", "b", "c"])
    assert list(table.columns) == ["class", "max_abs_influence", "pixels", "relative_std"]
    assert table["class"].tolist() == ["a", "b", "c"]
    assert table["max_abs_influence"].tolist() == pytest.approx([0.5, 0.8, 0.0])
    assert table["pixels"].tolist() == [2, 2, 0]
    assert table["relative_std"][:2].tolist() == pytest.approx([0.35, 0.5])
    assert math.isnan(table["relative_std"][2])
    # A larger share leaves only the largest pixel of a: 0.1 / 0.5.
    assert certainty(influence, std, ["a", "b", "c"], share=0.5)["relative_std"][0] == \
        pytest.approx(0.2)
    with pytest.raises(DataError, match=r"must both be \[K, H, W\]"):
        certainty(influence, std[:, :, :3], ["a", "b", "c"])


# --- the figures


def test_influence_maps_share_one_symmetric_scale(influence_results: InfluenceResults) -> None:
    figure = influence_figures.influence_maps(
        influence_results.influence, CLASSES, influence_results.constant,
        influence_results.not_converged)
    panels = _panels(figure)
    assert [axis.get_title() for axis in panels] == CLASSES
    limit = abs(LARGEST[3])
    for axis, values in zip(panels, influence_results.influence, strict=True):
        image = axis.images[0]
        assert (image.norm.vmin, image.norm.vmax) == pytest.approx((-limit, limit))
        assert image.get_cmap().name.startswith("RdBu_r")
        shown = image.get_array()
        np.testing.assert_allclose(shown.data, values.numpy(), rtol=1e-6)
        assert np.array_equal(np.ma.getmaskarray(shown), influence_results.constant.numpy())
        marks = axis.collections[0].get_offsets().tolist()
        assert sorted(marks) == sorted([float(c), float(r)] for r, c in MISSED)  # (x, y)
    bars = [axis for axis in figure.axes if axis not in panels and axis.get_visible()]
    assert len(bars) == 1  # one colorbar for every class


def test_spread_maps_start_at_zero_on_one_scale(influence_results: InfluenceResults) -> None:
    figure = influence_figures.spread_maps(
        influence_results.member_std, CLASSES, influence_results.constant,
        influence_results.not_converged)
    largest = float(influence_results.member_std.max())
    panels = _panels(figure)
    assert len(panels) == K
    for axis in panels:
        norm = axis.images[0].norm
        assert (norm.vmin, norm.vmax) == pytest.approx((0.0, largest))


def test_performance_maps_each_have_their_own_symmetric_scale(
        influence_results: InfluenceResults) -> None:
    maps = influence_results.performance
    figure = influence_figures.change_maps(
        maps, {"log-loss": "change of log-loss (+ = worse)"}, influence_results.constant,
        influence_results.not_converged)
    panels = _panels(figure)
    assert [axis.get_title() for axis in panels] == ["accuracy", "log-loss"]
    for axis, values in zip(panels, maps.values(), strict=True):
        limit = float(values.abs().max())
        assert (axis.images[0].norm.vmin, axis.images[0].norm.vmax) == \
            pytest.approx((-limit, limit))
    labels = [axis.get_ylabel() for axis in figure.axes if axis not in panels]
    assert labels == ["change of accuracy", "change of log-loss (+ = worse)"]


def test_curves_draw_every_class_against_the_target(influence_results: InfluenceResults
                                                    ) -> None:
    figure = influence_figures.influence_curves(
        influence_results.curve_targets, influence_results.curve_values,
        influence_results.curve_converged, CURVE_PIXELS, CLASSES, influence_results.mean_image)
    picture, *curves = [axis for axis in figure.axes if axis.get_visible()]
    assert picture.images and len(curves) == len(CURVE_PIXELS)
    assert [text.get_text() for text in picture.texts] == ["1", "2"]
    assert picture.collections[0].get_offsets().tolist() == [[14.0, 14.0], [20.0, 5.0]]
    targets, values = influence_results.curve_targets, influence_results.curve_values
    for q, axis in enumerate(curves):
        lines = [line for line in axis.get_lines() if line.get_linestyle() == "-"]
        assert len(lines) == K
        for k, line in enumerate(lines):
            np.testing.assert_allclose(line.get_xdata(), targets[:, q].numpy(), rtol=1e-6)
            np.testing.assert_allclose(line.get_ydata(), values[:, q, k].numpy(), rtol=1e-6)
        row, column = CURVE_PIXELS[q]
        mean = [line for line in axis.get_lines() if line.get_linestyle() == ":"]
        assert mean[0].get_xdata()[0] == pytest.approx(
            float(influence_results.mean_image[row, column]))
        missed = (~influence_results.curve_converged[:, q]).nonzero().flatten().tolist()
        marks = [c.get_offsets().tolist() for c in axis.collections]
        assert len(marks) == K and len(missed) == 1  # one x on each class's line
        for k, offsets in enumerate(marks):
            t = missed[0]
            np.testing.assert_allclose(offsets, [[targets[t, q], values[t, q, k]]], rtol=1e-6)
        assert "1 of 5 points not converged" in axis.get_title()


# --- writing


def test_a_failing_figure_keeps_the_earlier_page(written: Path,
                                                 influence_results: InfluenceResults,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the patched figure is the last drawn
    assert_a_failing_figure_keeps_the_earlier_page(
        written, tmp_path / "run", monkeypatch, influence_figures, "influence_curves",
        lambda out: write_influence_report(influence_results, out))


def test_shares_a_directory_with_other_pages(influence_results: InfluenceResults,
                                             tmp_path: Path) -> None:
    """report.html, the other pages and their figures stay byte for byte; only this page's
    stale figures go."""
    out = tmp_path / "run"
    figures = out / "figures"
    figures.mkdir(parents=True)
    (out / "report.html").write_text("<img src='figures/01-hist-entropy.png'>", "utf-8")
    (figures / "01-hist-entropy.png").write_bytes(PNG_MAGIC + b"report")
    (out / "latent.html").write_text("<img src='figures/latent-01-maps-lenet5.png'>", "utf-8")
    (figures / "latent-01-maps-lenet5.png").write_bytes(PNG_MAGIC + b"latent")
    (figures / "influence-99-gone.png").write_bytes(PNG_MAGIC)  # stale: this page's prefix
    before = {name: data for name, data in files(out).items() if "influence-" not in name}
    stamp = (out / "report.html").stat().st_mtime_ns

    page = write_influence_report(influence_results, out)
    after = files(out)
    assert {name: after[name] for name in before} == before
    assert (out / "report.html").stat().st_mtime_ns == stamp
    assert not (figures / "influence-99-gone.png").exists()
    drawn = sorted(Page(page.read_text("utf-8")).images)
    assert sorted(name for name in after if "influence-" in name) == drawn


def _set(name: str, value: object):
    return lambda r: setattr(r, name, value(r) if callable(value) else value)


@pytest.mark.parametrize(("spoil", "message"), [
    (_set("classes", []), r"InfluenceResults.classes is empty"),
    (_set("influence", lambda r: r.influence[:, :, 0]),
     r"InfluenceResults.influence has shape \[3, 28\]; expected \[K=3, H=28, W=28\]"),
    (_set("influence", lambda r: r.influence[:2]),
     r"influence has shape \[2, 28, 28\]; expected \[K=3, H=28, W=28\]"),
    (_set("member_std", lambda r: r.member_std[:, :, :27]),
     r"member_std has shape \[3, 28, 27\]; expected \[K=3, H=28, W=28\]"),
    (_set("member_std", lambda r: -r.member_std), r"member_std holds negative values"),
    (_set("curve_values", lambda r: torch.rand(T, 2, K + 1)),
     r"curve_values has shape \[5, 2, 4\]; expected \[T=5, Q=2, K=3\]"),
    (_set("curve_converged", lambda r: r.curve_converged.float()),
     r"curve_converged is torch.float32; expected a bool tensor"),
    (_set("curve_pixels", [(14, 14), (5, 28)]), r"curve_pixels holds \(5, 28\), outside"),
    (_set("constant", lambda r: r.constant[:27]), r"constant has shape \[27, 28\]"),
    (lambda r: r.performance.__setitem__("accuracy", torch.rand(28, 27)),
     r"performance\['accuracy'\] has shape \[28, 27\]; expected \[H=28, W=28\]"),
    (lambda r: r.uncertainty.__setitem__("entropy", torch.full((28, 28), math.nan)),
     r"uncertainty\['entropy'\] holds NaN"),
    (lambda r: r.projection.pop("pairs_at_bound"),
     r"projection lacks the keys \['pairs_at_bound'\]"),
    (lambda r: r.projection.__setitem__("constant_pixels", 4),
     r"projection\['constant_pixels'\] is 4 but the maps and masks give 3"),
    (_set("accuracy", lambda r: r.accuracy.rename(columns={"accuracy": "acc"})),
     r"accuracy lacks the columns \['accuracy'\]"),
    (lambda r: r.header.__setitem__("alpha", 0.7), r"header\['alpha'\] is 0.7"),
])
def test_bad_results_are_refused_before_anything_is_written(
        influence_results: InfluenceResults, tmp_path: Path, spoil, message: str) -> None:
    spoil(influence_results)
    with pytest.raises(DataError, match=message) as caught:
        write_influence_report(influence_results, tmp_path / "out")
    assert isinstance(caught.value, ValueError)
    assert not (tmp_path / "out").exists()
