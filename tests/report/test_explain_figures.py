"""The explanation figures draw exactly the hand-made numbers they are given, or refuse them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from trustmap.errors import DataError
from trustmap.report.explain_figures import (
    MAP_ALPHA,
    class_saliency_map,
    class_saliency_panel,
    explanation_grid,
    perturbation_curves,
    sanity_curves,
)
from trustmap.report.plot import save_figure

E, H, W = 3, 6, 9  # H != W, so swapped rows and columns show up
METHODS = ["saliency", "gradcam"]


def _maps() -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(E, 1, H, W, generator=generator)
    means = {"saliency": torch.randn(E, H, W, generator=generator),  # signed
             "gradcam": torch.rand(E, H, W, generator=generator)}  # non-negative
    spreads = {method: torch.rand(E, H, W, generator=generator) for method in METHODS}
    return images, means, spreads


LABELS = ["mnist-embedded · 7", "letters · C", "adv:pgd:0.2 · 3"]


def _grid(**changes: object) -> Figure:
    images, means, spreads = _maps()
    arguments = {"images": images, "row_labels": LABELS, "methods": METHODS,
                 "mean_maps": means, "uncertainty_maps": spreads} | changes
    return explanation_grid(**arguments)


def _image_axes(figure: Figure) -> list:
    return [axis for axis in figure.get_axes() if axis.images and axis.get_visible()]


def _curves() -> pd.DataFrame:
    rows = [{"method": method, "order": order, "step": step,
             "mean": 0.9 * np.exp(-step / rate), "sem": 0.02}
            for method in ("saliency", "integrated_gradients")
            for order, rate in (("morf", 2.0), ("lerf", 20.0), ("random", 6.0))
            for step in range(5)]
    return pd.DataFrame(rows)


LAYERS = ["head.fc2", "head.fc1", "features.conv1"]


def _sanity() -> pd.DataFrame:
    rows = [{"method": method, "step": step, "layer": "" if step == 0 else LAYERS[step - 1],
             "similarity": 1.0 if step == 0 else decay ** step, "sem": 0.05}
            for method, decay in (("saliency", 0.3), ("gradcam", 0.9)) for step in range(4)]
    return pd.DataFrame(rows)


def _labelled_lines(axis: plt.Axes) -> dict[str, object]:
    return {line.get_label(): line for line in axis.get_lines()
            if not line.get_label().startswith("_")}


# --- every figure renders and is saved


FIGURES: dict[str, Callable[[], Figure]] = {
    "grid": lambda: _grid(scores={m: [0.1, 0.2, 0.3] for m in METHODS}),
    "class_map": lambda: class_saliency_map(torch.randn(H, W), torch.rand(H, W), "class 7"),
    "class_panel": lambda: class_saliency_panel(torch.randn(4, H, W), torch.rand(4, H, W),
                                                ["0", "1", "2", "3"], "all classes"),
    "perturbation": lambda: perturbation_curves(_curves()),
    "sanity": lambda: sanity_curves(_sanity()),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_is_saved_as_a_png(name: str, tmp_path: Path) -> None:
    path = save_figure(FIGURES[name](), tmp_path / f"{name}.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(path).stat().st_size > 1000


# --- the explanation grid


def test_grid_has_one_image_per_cell_and_titled_columns() -> None:
    figure = _grid(uncertainty_label="std across members")
    axes = _image_axes(figure)
    assert len(axes) == E * (1 + 2 * len(METHODS))
    titles = [axis.get_title() for axis in axes if axis.get_title()]
    assert titles == ["input", "saliency\nmean", "saliency\nstd across members",
                      "gradcam\nmean", "gradcam\nstd across members"]
    row_labels = [axis.get_ylabel() for axis in axes if axis.get_ylabel()]
    assert row_labels == LABELS


def test_grid_scales_each_map_by_itself_and_keeps_the_sign() -> None:
    images, means, spreads = _maps()
    figure = _grid()
    axes = np.array(_image_axes(figure)).reshape(E, 1 + 2 * len(METHODS))
    for row in range(E):
        # each mean map lies over its input in gray: the input first, then the map
        under, signed = axes[row, 1].images
        np.testing.assert_allclose(np.asarray(under.get_array()), images[row, 0])
        assert under.get_cmap().name == "gray" and signed.get_alpha() == MAP_ALPHA
        largest = float(means["saliency"][row].abs().max())
        assert signed.get_clim() == pytest.approx((-largest, largest))
        assert signed.get_cmap().name == "RdBu_r"
        assert axes[row, 1].get_xlabel() == f"±{largest:.2g}"
        positive = axes[row, 3].images[1]
        assert positive.get_clim() == pytest.approx((0.0, float(means["gradcam"][row].max())))
        assert positive.get_cmap().name == "Reds"
        spread = axes[row, 4].images[0]
        assert spread.get_clim() == pytest.approx((0.0, float(spreads["gradcam"][row].max())))
        np.testing.assert_allclose(np.asarray(spread.get_array()), spreads["gradcam"][row])
        np.testing.assert_allclose(np.asarray(axes[row, 0].images[0].get_array()),
                                   images[row, 0])


def test_grid_prints_the_scores_under_the_uncertainty_maps() -> None:
    figure = _grid(scores={"saliency": [0.125, 0.5, 0.75], "gradcam": [1.0, 2.0, 3.0]})
    axes = np.array(_image_axes(figure)).reshape(E, 1 + 2 * len(METHODS))
    assert axes[1, 2].get_xlabel().endswith("score 0.5")
    assert axes[2, 4].get_xlabel().endswith("score 3")
    assert "score" not in axes[0, 1].get_xlabel()


def test_grid_refuses_mismatched_inputs() -> None:
    images, means, spreads = _maps()
    with pytest.raises(DataError, match="uncertainty_maps has no maps for method 'gradcam'"):
        _grid(uncertainty_maps={"saliency": spreads["saliency"]})
    with pytest.raises(DataError, match=r"mean_maps\['saliency'\] has shape \(3, 9, 6\)"):
        _grid(mean_maps=means | {"saliency": means["saliency"].transpose(1, 2)})
    with pytest.raises(DataError, match="expected 3 dimensions"):
        _grid(mean_maps=means | {"saliency": means["saliency"][0]})
    with pytest.raises(DataError, match="2 row labels for 3 images"):
        _grid(row_labels=LABELS[:2])
    with pytest.raises(DataError, match=r"scores\['gradcam'\] has 2 values for 3 rows"):
        _grid(scores={"saliency": [1, 2, 3], "gradcam": [1, 2]})
    with pytest.raises(DataError, match="NaN"):
        _grid(mean_maps=means | {"gradcam": torch.full((E, H, W), float("nan"))})
    with pytest.raises(DataError, match="no methods"):
        _grid(methods=[])


# --- class saliency


def _class_axes(figure: Figure) -> dict[str, plt.Axes]:
    by_label = {axis.get_xlabel() or axis.get_ylabel(): axis for axis in figure.get_axes()}
    profile = next(axis for axis in figure.get_axes() if axis.get_xlabel().startswith("pixel"))
    return {"main": by_label["column"], "above": by_label["column\nsum"],
            "beside": by_label["row sum"], "profile": profile}


def test_class_map_margins_line_up_with_the_map() -> None:
    mean = torch.arange(H * W, dtype=torch.float32).reshape(H, W) - 20
    sem = torch.full((H, W), 0.5)
    figure = class_saliency_map(mean, sem, "class 7")
    axes = _class_axes(figure)
    figure.canvas.draw()
    main, above, beside = axes["main"], axes["above"], axes["beside"]
    assert above.get_xlim() == pytest.approx(main.get_xlim())
    assert main.get_xlim() == pytest.approx((-0.5, W - 0.5))
    assert beside.get_ylim() == pytest.approx(main.get_ylim())
    assert main.get_ylim() == pytest.approx((H - 0.5, -0.5))  # row 0 on top, as in the image
    box, top, side = main.get_position(), above.get_position(), beside.get_position()
    assert (top.x0, top.x1) == pytest.approx((box.x0, box.x1))
    assert (side.y0, side.y1) == pytest.approx((box.y0, box.y1))


def test_class_map_margins_are_sums_with_summed_sem_bands() -> None:
    generator = torch.Generator().manual_seed(1)
    mean, sem = torch.randn(H, W, generator=generator), torch.rand(H, W, generator=generator)
    axes = _class_axes(class_saliency_map(mean, sem, "class 7"))
    column = axes["above"].get_lines()[0]
    np.testing.assert_allclose(column.get_xdata(), np.arange(W))
    np.testing.assert_allclose(column.get_ydata(), mean.sum(0), rtol=1e-6)
    band = axes["above"].collections[0].get_paths()[0].vertices
    expected = np.concatenate([mean.sum(0) - sem.sum(0), mean.sum(0) + sem.sum(0)])
    assert band[:, 1].min() == pytest.approx(expected.min(), rel=1e-6)
    assert band[:, 1].max() == pytest.approx(expected.max(), rel=1e-6)
    row = axes["beside"].get_lines()[0]
    np.testing.assert_allclose(row.get_xdata(), mean.sum(1), rtol=1e-6)
    np.testing.assert_allclose(row.get_ydata(), np.arange(H))
    band = axes["beside"].collections[0].get_paths()[0].vertices
    expected = np.concatenate([mean.sum(1) - sem.sum(1), mean.sum(1) + sem.sum(1)])
    assert band[:, 0].min() == pytest.approx(expected.min(), rel=1e-6)
    assert band[:, 0].max() == pytest.approx(expected.max(), rel=1e-6)
    profile = _labelled_lines(axes["profile"])["mean"]
    np.testing.assert_allclose(profile.get_xdata(), np.arange(H * W))
    np.testing.assert_allclose(profile.get_ydata(), mean.flatten(), rtol=1e-6)
    image = axes["main"].images[0]
    largest = float(mean.abs().max())
    assert image.get_clim() == pytest.approx((-largest, largest))


def test_class_map_refuses_bad_inputs() -> None:
    with pytest.raises(DataError, match=r"sem has shape \(9, 6\) but mean has \(6, 9\)"):
        class_saliency_map(torch.zeros(H, W), torch.zeros(W, H), "x")
    with pytest.raises(DataError, match="negative"):
        class_saliency_map(torch.zeros(H, W), -torch.ones(H, W), "x")


def test_class_panel_shares_one_scale_and_prints_mean_sem() -> None:
    means = torch.randn(7, H, W, generator=torch.Generator().manual_seed(2))
    sems = torch.arange(7, dtype=torch.float32)[:, None, None].expand(7, H, W) / 10
    names = [f"class {k}" for k in range(7)]
    figure = class_saliency_panel(means, sems, names, "all classes")
    axes = _image_axes(figure)
    assert [axis.get_title() for axis in axes] == names
    assert [axis.get_xlabel() for axis in axes] == [f"mean SEM {k / 10:.2g}" for k in range(7)]
    largest = float(means.abs().max())
    assert all(axis.images[0].get_clim() == pytest.approx((-largest, largest)) for axis in axes)
    with pytest.raises(DataError, match="6 class names for 7 maps"):
        class_saliency_panel(means, sems, names[:6], "all classes")
    with pytest.raises(DataError, match="sems has shape"):
        class_saliency_panel(means, sems[:6], names, "all classes")


# --- curves


def test_perturbation_curves_have_one_line_per_method_and_order() -> None:
    curves = _curves()
    figure = perturbation_curves(curves.sample(frac=1.0, random_state=0))  # any row order
    axis = figure.get_axes()[0]
    lines = _labelled_lines(axis)
    assert set(lines) == {f"{method}, {order}" for method in ("saliency", "integrated_gradients")
                          for order in ("MoRF", "LeRF", "random")}
    assert {lines[f"saliency, {o}"].get_linestyle() for o in ("MoRF", "LeRF", "random")} == {
        "-", "--", ":"}
    assert lines["saliency, MoRF"].get_color() != lines["integrated_gradients, MoRF"].get_color()
    assert lines["saliency, MoRF"].get_color() == lines["saliency, LeRF"].get_color()
    expected = curves[(curves["method"] == "saliency") & (curves["order"] == "morf")]
    np.testing.assert_allclose(lines["saliency, MoRF"].get_xdata(), expected["step"])
    np.testing.assert_allclose(lines["saliency, MoRF"].get_ydata(), expected["mean"])
    assert "AOPC" in axis.get_title()
    assert axis.get_legend() is not None


def test_perturbation_curves_refuse_bad_frames() -> None:
    curves = _curves()
    with pytest.raises(DataError, match="no rows"):
        perturbation_curves(curves.iloc[:0])
    with pytest.raises(DataError, match=r"lacks the columns \['sem'\]"):
        perturbation_curves(curves.drop(columns="sem"))
    with pytest.raises(DataError, match=r"unknown orders \['insertion'\]"):
        perturbation_curves(curves.replace({"order": {"lerf": "insertion"}}))
    with pytest.raises(DataError, match="more than one row"):
        perturbation_curves(pd.concat([curves, curves.iloc[:1]]))


def test_sanity_curves_have_one_line_per_method_and_layer_ticks() -> None:
    frame = _sanity()
    figure = sanity_curves(frame)
    axis = figure.get_axes()[0]
    lines = _labelled_lines(axis)
    assert set(lines) == {"saliency", "gradcam"}
    np.testing.assert_allclose(lines["saliency"].get_ydata(), [1.0, 0.3, 0.09, 0.027])
    assert [tick.get_text() for tick in axis.get_xticklabels()] == ["original"] + LAYERS
    low, high = axis.get_ylim()
    assert low == pytest.approx(-0.2) and high == pytest.approx(1.05)
    assert any(np.allclose(line.get_ydata(), 0) for line in axis.get_lines()
               if line.get_label().startswith("_"))
    far = frame.assign(similarity=frame["similarity"] - 0.6)
    assert sanity_curves(far).get_axes()[0].get_ylim()[0] < -0.6


def test_sanity_curves_refuse_bad_frames() -> None:
    frame = _sanity()
    with pytest.raises(DataError, match="no rows"):
        sanity_curves(frame.iloc[:0])
    with pytest.raises(DataError, match="different layers at step 2"):
        sanity_curves(frame.assign(layer=np.where((frame["method"] == "gradcam")
                                                  & (frame["step"] == 2), "conv9",
                                                  frame["layer"])))
    with pytest.raises(DataError, match=r"lacks the columns \['layer'\]"):
        sanity_curves(frame.drop(columns="layer"))
