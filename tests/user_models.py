"""Models a user might bring, importable as ``user_models`` (tests/ is on the test path), so
that factory references such as ``"user_models:SmallCNN"`` resolve in tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Two conv-BN blocks with functional ReLU and pooling, global average pool, linear: any
    image size of at least 2x2; its last conv block is ``block2``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1),
                                    nn.BatchNorm2d(width))
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1),
                                    nn.BatchNorm2d(2 * width))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.relu(self.block2(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.drop(x))


class FixedNet(nn.Module):
    """A dense model for 1x28x28 images only."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class NaNNet(nn.Module):
    """Returns NaN logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(1, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((1, 2, 3)).unsqueeze(1)) * float("nan")


def ten_classes(in_channels: int) -> nn.Module:
    """Ignores the data's number of classes: always 10."""
    return SmallCNN(10, in_channels)


received: dict[str, Any] = {}


def without_arguments() -> nn.Module:
    received["without_arguments"] = {}
    return SmallCNN(3, 3)


def with_kwargs(**kwargs: Any) -> nn.Module:
    received["with_kwargs"] = dict(kwargs)
    return SmallCNN(kwargs["num_classes"], kwargs["in_channels"])


def not_a_module(num_classes: int, in_channels: int) -> dict[str, int]:
    return {"num_classes": num_classes}


def failing(num_classes: int) -> nn.Module:
    raise RuntimeError("out of coffee")


def random_in_init(num_classes: int, in_channels: int) -> nn.Module:
    """Draws from torch's global generator while building, as every nn.Module init does."""
    torch.rand(100)
    return SmallCNN(num_classes, in_channels)


NOT_CALLABLE = 42
