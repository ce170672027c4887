"""The latent-map study's page: its numbers are the study's, its figures draw the grid the right
way up, failures keep the earlier page, and it shares a directory with other pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from report_pages import Page, assert_a_failing_figure_keeps_the_earlier_page, files

from trustmap.errors import DataError, TrustmapError
from trustmap.report import latent_figures
from trustmap.report import page as engine
from trustmap.report.results import LatentResults, RunResults
from trustmap.studies.latent_maps import LatentStudy
from trustmap.studies.latent_page import write_latent_report
from trustmap.studies.run_page import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = [str(k) for k in range(10)]
SCORED = {"lenet5": ["single", "ensemble"], "alexnet": ["single", "ensemble", "mc-dropout"]}
PREDICTIVES = ["single", "ensemble", "mc-dropout"]
MEASURES = ["entropy", "mutual_information"]
R, BOUND, STEPS, PAIRS = 6, 10.0, 5, 20
# (architecture, predictive, measure) -> (share, share_near, share_far); the largest share far
# from the data is (lenet5, ensemble, entropy) and (alexnet, mc-dropout, mutual_information).
SHARES = {("lenet5", "single", "entropy"): (0.312, 0.75, 0.281),
          ("lenet5", "single", "mutual_information"): (0.0, 0.0, 0.0),
          ("lenet5", "ensemble", "entropy"): (0.604, 0.5, 0.612),
          ("lenet5", "ensemble", "mutual_information"): (0.417, 0.25, 0.429),
          ("alexnet", "single", "entropy"): (0.521, 0.5, 0.523),
          ("alexnet", "single", "mutual_information"): (0.0, 0.0, 0.0),
          ("alexnet", "ensemble", "entropy"): (0.233, 0.75, 0.194),
          ("alexnet", "ensemble", "mutual_information"): (0.188, 0.5, 0.164),
          ("alexnet", "mc-dropout", "entropy"): (0.667, 0.25, 0.698),
          ("alexnet", "mc-dropout", "mutual_information"): (0.722, 0.5, 0.744)}
LARGEST_FAR = {"lenet5": ("ensemble", "entropy"), "alexnet": ("mc-dropout", "mutual_information")}
CONFIDENT = {("lenet5", "ensemble"): [0, 35, 5], ("alexnet", "mc-dropout"): [30],
             ("alexnet", "single"): []}


def _midpoint(key: tuple[str, str, str], path: str) -> tuple[float, float]:
    """Mean and median at the midpoints: distinct per row, so a swapped row shows."""
    base = 0.1 * (list(SHARES).index(key) + 1)
    return (round(base + (0.25 if path == "pixel" else 0.0), 3),
            round(base + (0.2 if path == "pixel" else 0.01), 3))


def make_latent_results() -> LatentResults:
    generator = torch.Generator().manual_seed(0)
    axis = torch.linspace(-BOUND, BOUND, R)
    z1, z0 = torch.meshgrid(axis, axis, indexing="ij")
    codes = 6 * torch.rand(30, 2, generator=generator) - 3
    keys = [(a, p, m) for a, ps in SCORED.items() for p in ps for m in MEASURES]
    maps = {key: torch.zeros(R * R) if key[1:] == ("single", "mutual_information")
            else torch.rand(R * R, generator=generator) for key in keys}
    shares = pd.DataFrame([(*key, 0.05 * (i + 1), *values, 4, R * R - 4)
                           for i, (key, values) in enumerate(SHARES.items())],
                          columns=["architecture", "predictive", "measure", "threshold", "share",
                                   "share_near", "share_far", "points_near", "points_far"])
    paths = ("pixel", "latent")
    midpoints = pd.DataFrame([(*key, path, PAIRS, *_midpoint(key, path))
                              for key in keys for path in paths],
                             columns=["architecture", "predictive", "measure", "path", "pairs",
                                      "mean", "median"])
    return LatentResults(
        header={"title": "latent <demo>", "command": "trustmap study latent --resolution 6",
                "seconds": 42.0},
        dataset="mnist", classes=list(CLASSES), architectures=list(SCORED),
        predictives=list(PREDICTIVES), measures=list(MEASURES), resolution=R, bound=BOUND,
        codes=codes, code_labels=torch.randint(0, 10, (30,), generator=generator),
        grid_images=torch.rand(R * R, 1, 28, 28, generator=generator),
        near=(z0.abs() <= 3).flatten() & (z1.abs() <= 3).flatten(),
        maps=maps,
        predicted={(a, p): torch.randint(0, 10, (R * R,), generator=generator)
                   for a, ps in SCORED.items() for p in ps},
        confident={key: torch.tensor(value, dtype=torch.long)
                   for key, value in CONFIDENT.items()},
        shares=shares, midpoints=midpoints,
        midpoint_scores={(*key, path): torch.rand(PAIRS, generator=generator)
                         for key in keys for path in paths},
        path_images={path: torch.rand(2, STEPS, 1, 28, 28, generator=generator)
                     for path in paths},
        path_scores={(*key, path): torch.rand(2, STEPS, generator=generator)
                     for key in keys for path in paths},
        path_labels=[("3", "8"), ("1", "7")])


@pytest.fixture
def latent_results() -> LatentResults:
    return make_latent_results()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One page written for all read-only checks, so the figures are drawn once."""
    return write_latent_report(make_latent_results(), tmp_path_factory.mktemp("latent"))


@pytest.fixture(scope="module")
def page(written: Path) -> Page:
    return Page(written.read_text("utf-8"))


def test_every_figure_is_a_png_beside_the_page(written: Path, page: Page) -> None:
    # Maps and confident far points per architecture, the mosaic, two example pairs and the
    # midpoint histograms per architecture, in the page's order.
    assert written.name == "latent.html"
    names = [Path(src).name.split("-", 2)[2] for src in page.images]
    assert names == ["maps-lenet5.png", "maps-alexnet.png", "mosaic.png",
                     "confident-lenet5.png", "confident-alexnet.png", "path-0.png", "path-1.png",
                     "midpoints-lenet5.png", "midpoints-alexnet.png"]
    for src in page.images:
        path = written.parent / src
        assert src.startswith("figures/latent-") and path.is_file(), src
        assert path.read_bytes()[:8] == PNG_MAGIC, src
    assert sorted(p.name for p in written.parent.iterdir()) == ["figures", "latent.html"]
    assert sorted(p.name for p in (written.parent / "figures").iterdir()) == \
        sorted(Path(src).name for src in page.images)
    assert page.sections == ["maps", "mosaic", "confident", "shares", "interpolations"]
    assert [link for link in page.links if link.startswith("#")] == [
        f"#{section}" for section in page.sections]


def test_header_and_lead_text(written: Path) -> None:
    text = written.read_text("utf-8")
    assert "<title>latent &lt;demo&gt;</title>" in text
    assert "trustmap study latent --resolution 6" in text and "42.0 s (0:00:42)" in text
    assert "6×6 grid" in text and "[−10, 10]²" in text
    assert "4 of 36 points" in text and "outside, 32 points" in text
    assert "<strong>lenet5</strong> under <strong>ensemble</strong>" in text
    assert "<strong>alexnet</strong> under <strong>ensemble</strong>" in text


def test_shares_table_holds_the_numbers_and_marks_the_largest_share_far(page: Page) -> None:
    assert page.header("shares") == ["architecture", "predictive", "measure", "share",
                                     "share near", "share far", "threshold"]
    assert [cells[:3] for cells in page.rows("shares")] == [list(key) for key in SHARES]
    for index, (key, values) in enumerate(SHARES.items()):
        cells, best = page.row("shares", *key)
        assert cells[3:] == [f"{v:.3f}" for v in values] + [f"{0.05 * (index + 1):.3f}"]
        assert best == [False] * 5 + [key[1:] == LARGEST_FAR[key[0]], False]
    greyed = [cells[1:3] == ["single", "mutual_information"] for cells in page.rows("shares")]
    assert page.greyed["shares"][1:] == greyed and sum(greyed) == 2


def test_midpoint_table_values(page: Page) -> None:
    assert page.header("midpoints") == ["architecture", "predictive", "measure", "path",
                                        "pairs", "mean", "median"]
    rows = page.rows("midpoints")
    assert [cells[:4] for cells in rows] == [[*key, path] for key in SHARES
                                             for path in ("pixel", "latent")]
    for key in SHARES:
        for path in ("pixel", "latent"):
            cells, best = page.row("midpoints", *key, path)
            assert cells[4:] == ["20", *(f"{v:.3f}" for v in _midpoint(key, path))]
            assert not any(best)


def test_map_panels_are_the_scores_with_z1_upward(latent_results: LatentResults) -> None:
    predictives = SCORED["alexnet"]
    maps = {(p, m): latent_results.maps["alexnet", p, m] for p in predictives for m in MEASURES}
    far = latent_results.confident["alexnet", "mc-dropout"]
    figure = latent_figures.uncertainty_maps(
        maps, predictives, MEASURES, R, BOUND, latent_results.codes,
        latent_results.code_labels, CLASSES, {"mc-dropout": far})
    panels = [axis for axis in figure.axes if axis.images]
    assert len(panels) == len(MEASURES) * len(predictives)
    for number, axis in enumerate(panels):
        measure, predictive = MEASURES[number // 3], predictives[number % 3]
        image = axis.images[0]
        expected = latent_results.maps["alexnet", predictive, measure].reshape(R, R)
        np.testing.assert_allclose(image.get_array(), expected.numpy(), rtol=1e-6)
        assert image.origin == "lower" and image.get_cmap().name == "gray"
        assert axis.get_xlim() == (-BOUND, BOUND) and axis.get_ylim() == (-BOUND, BOUND)
        row = [latent_results.maps["alexnet", p, measure] for p in predictives]
        assert image.norm.vmin == pytest.approx(min(float(v.min()) for v in row))
        # Each grid point's cell is centred on it: the cells reach half a spacing beyond.
        left, right, bottom, top = image.get_extent()
        spacing = 2 * BOUND / (R - 1)
        assert (left, right) == pytest.approx((-BOUND - spacing / 2, BOUND + spacing / 2))
        assert (bottom, top) == (left, right)
    # Grid index 30 is row 5 (z1 = bound), column 0 (z0 = -bound): marked on mc-dropout only.
    crosses = [[c for c in axis.collections if c.get_facecolor().tolist() == [[1, 0, 0, 1]]]
               for axis in panels]
    assert [len(found) for found in crosses] == [0, 0, 1, 0, 0, 1]
    assert crosses[2][0].get_offsets().tolist() == [[-BOUND, BOUND]]
    hull = [line for line in panels[0].get_lines() if line.get_linestyle() == "--"][0]
    assert hull.get_xydata()[0].tolist() == hull.get_xydata()[-1].tolist()  # closed


def test_each_figure_gets_its_own_architectures_data(latent_results: LatentResults,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The page hands every figure the arrays of the architecture it is titled with."""
    calls: dict[str, list] = {"maps": [], "confident": [], "interpolation": [], "midpoints": []}
    drawn = {"maps": latent_figures.uncertainty_maps,
             "confident": latent_figures.confident_images,
             "interpolation": latent_figures.interpolation,
             "midpoints": latent_figures.midpoint_histograms}

    def recording(name: str):
        def draw(*args, **kwargs):
            calls[name].append((args, kwargs))
            return drawn[name](*args, **kwargs)
        return draw

    for name, function in drawn.items():
        monkeypatch.setattr(latent_figures, function.__name__, recording(name))
    monkeypatch.setattr(engine, "DRAWING_PROCESSES", 1)  # the calls are recorded in this process
    write_latent_report(latent_results, tmp_path)
    for (args, kwargs), architecture in zip(calls["maps"], SCORED, strict=True):
        maps, predictives = args[0], args[1]
        assert predictives == SCORED[architecture]
        assert kwargs["title"].startswith(architecture)
        for (predictive, measure), values in maps.items():
            assert values is latent_results.maps[architecture, predictive, measure]
        assert list(args[8]) == [p for p in predictives if (architecture, p) in CONFIDENT]
    (images, captions), kwargs = calls["confident"][0]
    assert list(images) == ["ensemble"] and kwargs["title"].startswith("lenet5")
    predicted = latent_results.predicted["lenet5", "ensemble"]
    entropy = latent_results.maps["lenet5", "ensemble", "entropy"]
    assert captions["ensemble"] == [f"{CLASSES[int(predicted[i])]}\n{float(entropy[i]):.3f}"
                                    for i in CONFIDENT["lenet5", "ensemble"]]
    assert torch.equal(images["ensemble"], latent_results.grid_images[[0, 35, 5]])
    (strips, scores, lines, measures), kwargs = calls["interpolation"][1]
    assert lines == ["lenet5 (ensemble)", "alexnet (ensemble)"] and measures == MEASURES
    assert torch.equal(strips["latent"], latent_results.path_images["latent"][1])
    assert torch.equal(scores["pixel", "alexnet (ensemble)", "entropy"],
                       latent_results.path_scores["alexnet", "ensemble", "entropy", "pixel"][1])
    assert kwargs["title"] == "pair 2: 1 → 7"
    (scores, measures, paths), kwargs = calls["midpoints"][1]
    assert paths == ["pixel", "latent"] and kwargs["title"].startswith("alexnet (ensemble)")
    assert scores["mutual_information", "latent"] is latent_results.midpoint_scores[
        "alexnet", "ensemble", "mutual_information", "latent"]


def test_mosaic_puts_z1_upward_and_subsamples(latent_results: LatentResults) -> None:
    figure = latent_figures.grid_mosaic(latent_results.grid_images, R, BOUND, max_tiles=3)
    image = figure.axes[0].images[0]
    mosaic = np.asarray(image.get_array())
    assert mosaic.shape == (3 * 28, 3 * 28)  # every 2nd of 6 rows and columns
    # Top left: the highest z1 kept (row 4), the lowest z0 (column 0).
    top_left = latent_results.grid_images[4 * R + 0, 0].numpy()
    np.testing.assert_allclose(mosaic[:28, :28], top_left, rtol=1e-6)
    bottom_right = latent_results.grid_images[0 * R + 4, 0].numpy()
    np.testing.assert_allclose(mosaic[-28:, -28:], bottom_right, rtol=1e-6)
    assert image.origin == "upper"
    left, right, bottom, top = image.get_extent()
    assert (left, right, bottom, top) == pytest.approx((-14.0, 10.0, -14.0, 10.0))


def test_confident_images_are_captioned_with_the_predicted_class(
        latent_results: LatentResults) -> None:
    indices = latent_results.confident["lenet5", "ensemble"]
    predicted = latent_results.predicted["lenet5", "ensemble"]
    figure = latent_figures.confident_images(
        {"ensemble": latent_results.grid_images[indices], "single": torch.zeros(0, 1, 28, 28)},
        {"ensemble": [CLASSES[int(predicted[i])] for i in indices], "single": []})
    axes = [axis for axis in figure.axes if axis.images]
    assert [axis.get_xlabel() for axis in axes] == [CLASSES[int(predicted[i])] for i in indices]
    np.testing.assert_allclose(axes[1].images[0].get_array(),
                               latent_results.grid_images[35, 0].numpy(), rtol=1e-6)
    assert any("far enough" in text.get_text() for axis in figure.axes for text in axis.texts)


def test_interpolation_strip_keeps_ends_and_midpoint() -> None:
    assert latent_figures.strip_steps(21).tolist() == [0, 2, 5, 8, 10, 12, 15, 18, 20]
    assert latent_figures.strip_steps(5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match=r"scores\[\('pixel', 'a', 'entropy'\)\] has 4 values"):
        latent_figures.interpolation({"pixel": torch.rand(5, 1, 28, 28)},
                                     {("pixel", "a", "entropy"): torch.rand(4)}, ["a"],
                                     ["entropy"])


def test_a_failing_figure_keeps_the_earlier_page(written: Path, latent_results: LatentResults,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the patched figures are the last drawn
    assert_a_failing_figure_keeps_the_earlier_page(
        written, tmp_path / "run", monkeypatch, latent_figures, "midpoint_histograms",
        lambda out: write_latent_report(latent_results, out))


def test_shares_a_directory_with_other_pages(results: RunResults,
                                             latent_results: LatentResults,
                                             tmp_path: Path) -> None:
    """Only this page's stale figures go; report.html's and the recurrent page's stay."""
    out = tmp_path / "run"
    results.images, results.explanations = {}, None
    results.measures = {"entropy": results.measures["entropy"]}
    write_report(results, out, predictive="single")
    figures = out / "figures"
    (figures / "recurrent-01-heatmaps-0-7.png").write_bytes(PNG_MAGIC)
    (out / "recurrent.html").write_text("<img src='figures/recurrent-01-heatmaps-0-7.png'>")
    (figures / "latent-99-gone.png").write_bytes(PNG_MAGIC)  # stale: this page's prefix
    before = {name: data for name, data in files(out).items() if "latent-" not in name}

    page = write_latent_report(latent_results, out)
    after = files(out)
    assert {name: after[name] for name in before} == before
    assert not (figures / "latent-99-gone.png").exists()
    drawn = sorted(f"figures/{Path(src).name}" for src in Page(page.read_text("utf-8")).images)
    assert sorted(name for name in after if "latent-" in name) == drawn


def test_the_run_page_shows_the_same_sections(results: RunResults, latent_results: LatentResults,
                                              written: Path, page: Page,
                                              tmp_path: Path) -> None:
    """Inside the run's page the study's sections are its own page's, under one heading: the
    same figures, the same table, ids prefixed with the study's name."""
    results.images, results.explanations = {}, None
    report = write_report(results, tmp_path, predictive="single",
                          beside=[(LatentStudy(), latent_results)])
    shown = Page(report.read_text("utf-8"))
    inside = [s for s in shown.sections if s.startswith("latent")]
    assert inside == ["latent", *(f"latent-{section}" for section in page.sections)]
    assert "#latent" in shown.links and "#latent-maps" not in shown.links  # one nav entry
    own = [Path(src).name.split("-", 2)[2] for src in page.images]
    in_run = [Path(src).name.split("-", 1)[1] for src in shown.images]
    assert in_run[-len(own):] == own
    assert shown.tables["shares"] == page.tables["shares"]
    assert "trustmap study latent</code> draws this at full size" in report.read_text("utf-8")


def test_a_page_refuses_two_elements_with_one_id(tmp_path: Path) -> None:
    sections = [engine.Section("shares", "Shares", context={
        "t": engine.build_table("shares", pd.DataFrame({"a": [1.0]}))})]
    sections.append(engine.Section("shares", "Again"))
    with pytest.raises(ValueError, match=r"the ids \['shares'\] more than once"):
        engine.write_page(tmp_path / "out" / "p.html", "latent.html.j2", {}, "t",
                          lambda: sections)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda r: setattr(r, "shares", r.shares.drop(columns="share_far")),
     r"LatentResults.shares lacks the columns \['share_far'\]"),
    (lambda r: r.maps.__setitem__(("lenet5", "ensemble", "entropy"), torch.rand(R * R + 1)),
     r"maps\[\('lenet5', 'ensemble', 'entropy'\)\] has shape \[37\]"),
    (lambda r: r.maps.pop(("alexnet", "mc-dropout", "entropy")),
     r"maps\[\('alexnet', 'mc-dropout', 'entropy'\)\]: none"),
    (lambda r: r.path_scores.pop(("alexnet", "ensemble", "entropy", "latent")),
     r"path_scores\[\('alexnet', 'ensemble', 'entropy', 'latent'\)\]: none"),
    (lambda r: r.confident.__setitem__(("lenet5", "single"), torch.tensor([36])),
     r"confident\[\('lenet5', 'single'\)\] holds indices outside the grid's 36 points"),
    (lambda r: setattr(r, "grid_images", r.grid_images[:-1]),
     r"grid_images has shape \[35, 1, 28, 28\]"),
    (lambda r: setattr(r, "path_labels", r.path_labels[:1]),
     r"path_images\['pixel'\] has shape \[2, 5, 1, 28, 28\]"),
])
def test_bad_results_are_refused_before_anything_is_written(latent_results: LatentResults,
                                                            tmp_path: Path, spoil,
                                                            message: str) -> None:
    spoil(latent_results)
    with pytest.raises(TrustmapError, match=message):
        write_latent_report(latent_results, tmp_path / "out")
    assert not (tmp_path / "out").exists()
