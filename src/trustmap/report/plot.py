"""The one set of plotting helpers every figure of the report is drawn with.

Figures are drawn with matplotlib's non-interactive backend, take plain tensors, arrays or
DataFrames, and refuse with a ``DataError`` what they cannot draw honestly; these helpers are
where that refusal, the colour scales, the legends and the saving are decided, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from trustmap.atomic import write_atomic  # noqa: E402
from trustmap.errors import DataError  # noqa: E402

SIGNED_CMAP = "RdBu_r"
"""Diverging, for signed maps: red for evidence for (or a rise), blue against, white for none."""
POSITIVE_CMAP = "Reds"
"""Sequential for maps without sign, so they never look like 'evidence against'."""
SPREAD_CMAP = "viridis"
"""Sequential for uncertainty maps, distinct from both attribution colormaps."""
GREY_STAND_INS = ("#f5c400", "#ffe680")
"""Colours in place of a palette's greys, which vanish on gray maps and read as references."""


def save_figure(figure: Figure, path: Path | str, dpi: int = 120) -> Path:
    """Save atomically and close the figure, so a failed save leaves nothing half-written."""
    try:
        return write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=dpi, bbox_inches="tight",
                                                             format=Path(path).suffix[1:]))
    finally:
        plt.close(figure)


def array(value: Any, what: str, ndim: int, layout: str) -> np.ndarray:
    """``value`` as a finite float64 array of exactly ``ndim`` dimensions and at least one
    value, or a DataError naming ``what`` and the ``layout`` expected."""
    found = torch.as_tensor(value).detach().cpu().to(torch.float64).numpy()
    if found.ndim != ndim:
        raise DataError(f"{what} has shape {tuple(found.shape)}; expected {ndim} dimensions "
                        f"{layout}")
    if found.size == 0:
        raise DataError(f"{what} is empty (shape {tuple(found.shape)}); pass at least one "
                        f"{layout}")
    if not np.isfinite(found).all():
        raise DataError(f"{what} holds NaN or infinite values; fix the computation that made it "
                        "before drawing it")
    return found


def same_shape(found: np.ndarray, shape: tuple[int, ...], what: str, reference: str) -> None:
    """Refuse two arrays that should describe the same pixels but do not."""
    if found.shape != shape:
        raise DataError(f"{what} has shape {found.shape} but {reference} has {shape}; "
                        "they must describe the same pixels")


def images(value: Any, what: str, ndim: int, layout: str) -> np.ndarray:
    """Images [..., C, H, W] in [0, 1] as pictures: [..., H, W] gray or [..., H, W, 3] RGB."""
    found = array(value, what, ndim, layout)
    channels = found.shape[-3]
    if channels not in (1, 3):
        raise DataError(f"{what} has shape {tuple(found.shape)}; expected {layout} with 1 (gray) "
                        "or 3 (RGB) channels")
    found = np.clip(np.moveaxis(found, -3, -1), 0.0, 1.0)
    return found[..., 0] if channels == 1 else found


def show_image(axis: Any, picture: np.ndarray, **kwargs: Any) -> Any:
    """A gray [H, W] or RGB [H, W, 3] picture in [0, 1], drawn as it is."""
    gray = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if picture.ndim == 2 else {}
    return axis.imshow(picture, **{"interpolation": "nearest", **gray, **kwargs})


def frame(table: pd.DataFrame, columns: Sequence[str], what: str,
          unique: Sequence[str] = ()) -> pd.DataFrame:
    """Refuse a table that lacks columns or rows, or has more than one row per ``unique``."""
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DataError(f"{what} lacks the columns {missing}; it needs {list(columns)}")
    if table.empty:
        raise DataError(f"{what} has no rows; there is nothing to draw")
    duplicated = table.duplicated(list(unique)) if unique else pd.Series(False)
    if duplicated.any():
        first = table.loc[duplicated, list(unique)].iloc[0].to_dict()
        raise DataError(f"{what} has more than one row for {first}; aggregate it to one row per "
                        f"{tuple(unique)} first")
    return table


def limit(maps: Any) -> float:
    """The largest |value| over all ``maps`` (a tensor or array, or a sequence or mapping of
    them): one scale [-m, m] for every panel is what lets their colours be compared. It is 0
    only where every map is 0."""
    parts = list(maps.values()) if isinstance(maps, Mapping) else \
        list(maps) if isinstance(maps, list | tuple) else [maps]
    arrays = [torch.as_tensor(part).detach().cpu().to(torch.float64) for part in parts]
    if not arrays or all(found.numel() == 0 for found in arrays):
        raise DataError("no map values given; pass at least one non-empty map")
    if not all(bool(torch.isfinite(found).all()) for found in arrays):
        raise DataError("the maps hold NaN or infinite values; a scale would hide them")
    return max(float(found.abs().max()) for found in arrays if found.numel())


def symmetric(largest: float) -> Normalize:
    """[-largest, largest], or [-1, 1] for all-zero maps, so imshow never gets an empty range."""
    largest = largest if largest > 0 else 1.0
    return Normalize(-largest, largest)


def palette(count: int) -> list[Any]:
    """``count`` colours by position (tab10, or tab20 past ten), none of them grey: item k of
    a figure keeps its colour in every other figure of the page."""
    colours = list(plt.get_cmap("tab10" if count <= 10 else "tab20").colors)
    greys = [i for i, colour in enumerate(colours) if np.ptp(colour) < 0.01]
    for index, stand_in in zip(greys, GREY_STAND_INS, strict=False):
        colours[index] = stand_in
    return [colours[i % len(colours)] for i in range(count)]


def colours(names: Sequence[str]) -> dict[str, Any]:
    """One colour per distinct name, by first position (``palette``)."""
    distinct = list(dict.fromkeys(names))
    return dict(zip(distinct, palette(len(distinct)), strict=True))


def legend_outside(axis: Any, **kwargs: Any) -> None:
    """A legend to the right of the axes, so many lines or sets never cover the data."""
    axis.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                borderaxespad=0.0, **kwargs)


def bare(axis: Any) -> None:
    """No ticks and no frame: for images and maps, whose pixels are their own axes."""
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)


def panels(count: int, columns: int, width: float, height: float, margin: float = 1.4,
           **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A constrained grid of ``count`` panels of ``width`` x ``height`` inches in rows of
    ``columns``, the unused ones hidden; ``kwargs`` go to ``plt.subplots`` (sharex, ...)."""
    columns = min(count, columns)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                                figsize=(width * columns + margin, height * rows + 0.8), **kwargs)
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return figure, axes
