"""Figures drawn with matplotlib's non-interactive backend and saved atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from trustmap.atomic import write_atomic  # noqa: E402
from trustmap.data.dataset import Dataset  # noqa: E402


def save_figure(figure: Figure, path: Path | str, dpi: int = 120) -> Path:
    """Save atomically and close the figure, so a failed save leaves nothing half-written."""
    try:
        return write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=dpi, bbox_inches="tight",
                                                             format=Path(path).suffix[1:]))
    finally:
        plt.close(figure)


def class_grid(dataset: Dataset, per_class: int = 10, max_classes: int = 10) -> Figure:
    """The first ``per_class`` images of each class, one row per class."""
    classes = list(range(min(dataset.num_classes, max_classes)))
    figure, axes = plt.subplots(len(classes), per_class, squeeze=False,
                                figsize=(per_class * 0.9, len(classes) * 0.95 + 0.4))
    for row, label in enumerate(classes):
        index = (dataset.labels == label).nonzero().flatten()[:per_class]
        for col in range(per_class):
            axis = axes[row, col]
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
            if col < len(index):
                image = dataset.images[index[col]]
                shown = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
                axis.imshow(torch.as_tensor(shown).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(dataset.classes[label], rotation=0, ha="right", va="center")
    figure.suptitle(f"{dataset.name} ({dataset.split}, {len(dataset)} images)")
    return figure
