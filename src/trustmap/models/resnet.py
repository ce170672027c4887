"""Residual networks with BasicBlocks, for small images (28x28 by default).

The stem is a single 3x3 stride-1 convolution with no max-pool, so for 28x28 the four stages
see 28, 14, 7 and 4 pixels. Every operation that attribution code may hook is a module of its
own, including the residual sum.

The head pools globally (AdaptiveAvgPool2d), so nothing in the architecture depends on the
image size: a ResNet takes any size of at least 9x9, where the last stage (Grad-CAM's layer)
still has 2x2 maps. ``input_size`` is the size it is built for: checked against that minimum,
recorded, and what dry runs feed it; the weights are the same for every size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trustmap.models.base import (
    DEFAULT_INPUT_SIZE,
    Classifier,
    Normalize,
    check_size,
    sequential,
    size_option,
    size_pair,
)


class Add(nn.Module):
    """The residual sum as a module, so LRP rules and hooks can reach it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut, which projects (1x1 conv-BN) when shapes change."""

    def __init__(self, fan_in: int, fan_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(fan_in, fan_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(fan_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(fan_out, fan_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(fan_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or fan_in != fan_out:
            self.shortcut = sequential(
                conv=nn.Conv2d(fan_in, fan_out, 1, stride=stride, bias=False),
                bn=nn.BatchNorm2d(fan_out),
            )
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(residual, self.shortcut(x)))


def min_input_side(stages: int) -> int:
    """The smallest image side at which the last of ``stages`` stages keeps 2x2 maps: each
    stage after the first halves the side, rounding up (3x3 stride 2, padding 1)."""
    return 2 ** (stages - 1) + 1


def _resnet(name: str, blocks: Sequence[int], in_channels: int, num_classes: int, width: int,
            dropout: float, mean: float | list[float], std: float | list[float],
            input_size: Sequence[int]) -> Classifier:
    size = size_pair(input_size)
    side = min_input_side(len(blocks))
    check_size(name, size, (side, side),
               "its last stage, Grad-CAM's layer, must keep maps of at least 2x2")
    stages: dict[str, nn.Module] = {
        "stem": sequential(conv=nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                           bn=nn.BatchNorm2d(width), relu=nn.ReLU()),
    }
    fan_in = width
    for index, count in enumerate(blocks):
        fan_out = width * 2 ** index
        stride = 1 if index == 0 else 2
        stages[f"stage{index + 1}"] = nn.Sequential(
            *(BasicBlock(fan_in if b == 0 else fan_out, fan_out, stride if b == 0 else 1)
              for b in range(count)))
        fan_in = fan_out
    head: dict[str, nn.Module] = {"pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten()}
    if dropout > 0:
        head["drop"] = nn.Dropout(dropout)
    head["fc"] = nn.Linear(fan_in, num_classes)
    return Classifier(name, Normalize(mean, std, in_channels), sequential(**stages),
                      sequential(**head), num_classes=num_classes,
                      gradcam_layer=f"features.stage{len(blocks)}",
                      options={"width": width, "dropout": dropout, **size_option(size)},
                      input_size=size, fixed_size=False, min_size=(side, side))


def resnet18(in_channels: int, num_classes: int, *, width: int = 64, dropout: float = 0.0,
             mean: float | list[float] = 0.5, std: float | list[float] = 0.5,
             input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> Classifier:
    """ResNet-18 for small images: BasicBlocks [2, 2, 2, 2], channels width·(1, 2, 4, 8)."""
    return _resnet("resnet18", (2, 2, 2, 2), in_channels, num_classes, width, dropout, mean, std,
                   input_size)


def resnet34(in_channels: int, num_classes: int, *, width: int = 64, dropout: float = 0.0,
             mean: float | list[float] = 0.5, std: float | list[float] = 0.5,
             input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> Classifier:
    """ResNet-34 for small images: BasicBlocks [3, 4, 6, 3], channels width·(1, 2, 4, 8)."""
    return _resnet("resnet34", (3, 4, 6, 3), in_channels, num_classes, width, dropout, mean, std,
                   input_size)
