"""Recurrent classifiers that read an image as a sequence of column strips (seed 002).

A [N, 1, 28, 7T] image is T steps of 28x7 pixels, read left to right; the class comes from the
last step only. The four ReLU architectures are seed 002's, sized so that their parameter
counts equal the ones its notebook printed (184,330 / 281,738 / 347,530 / 353,818):

- ``rnn-shallow``:  [x_t, r_{t-1}] → h 256;  r_t = relu(W_r h_t) 256;  h_T → 10
- ``rnn-deep``:     x_t → 256;  [., r_{t-1}] → h 256 → r 256;  h_T → 128 → 10
- ``rnn-deepv2``:   x_t → 256 → 256;  [., r_{t-1}] → h 256 → r 256;  h_T → 128 → 10
- ``rnn-convdeep``: x_t → conv 5x5x24 → avg-pool → conv 3x3x32 → avg-pool → 256;
  [., r_{t-1}] → h 256 → r 256;  h_T → 128 → 10

Every layer computes ``x W - softplus(b)``: its bias can only be negative, which is what lets
LRP's positive rules conserve relevance (seed 002 initialised the raw bias at -inf, so its
biases never left zero; here they start at -softplus(-10) ~ -5e-5, so that a fresh deep
network is not dead, and train). ``lstm`` and ``gru`` are gated cells of about Shallow's size
on the raw 28x7 step. Images are scaled to [-1, 1] inside the model, as seed 002 did.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trustmap.errors import ModelError
from trustmap.models.base import INPUT_SIZE, Classifier, Normalize, sequential

STEP_WIDTH = 7
"""Columns of the image read at each step: a 28x84 image is 12 steps."""

RAW_BIAS_INIT = -10.0


class _NegativeBias(nn.Module):
    """Holds the raw bias b of a layer whose bias is -softplus(b) <= 0."""

    raw_bias: nn.Parameter

    @property
    def bias(self) -> torch.Tensor:
        """The bias actually added: -softplus(raw_bias), never positive."""
        return -F.softplus(self.raw_bias)

    def _init(self, weight: nn.Parameter, fan_in: int) -> None:
        # Seed 002: truncated normal with std 1/sqrt(fan_in).
        std = 1.0 / math.sqrt(fan_in)
        nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
        nn.init.constant_(self.raw_bias, RAW_BIAS_INIT)


class NegativeBiasLinear(_NegativeBias):
    """``x W^T - softplus(b)``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.raw_bias = nn.Parameter(torch.empty(out_features))
        self._init(self.weight, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class NegativeBiasConv2d(_NegativeBias):
    """A 'same'-padded, stride-1 convolution with bias ``-softplus(b)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.raw_bias = nn.Parameter(torch.empty(out_channels))
        self._init(self.weight, in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        out_channels, in_channels, kernel, _ = self.weight.shape
        return f"{in_channels}, {out_channels}, kernel_size={kernel}, padding={self.padding}"


def strips(x: torch.Tensor) -> torch.Tensor:
    """[N, C, 28, 7T] images → [N, T, C, 28, 7] steps, left to right."""
    n, c, height, width = x.shape
    return x.view(n, c, height, width // STEP_WIDTH, STEP_WIDTH).permute(0, 3, 1, 2, 4)


def unstrip(steps: torch.Tensor) -> torch.Tensor:
    """The inverse of ``strips``: [N, T, C, 28, 7] → [N, C, 28, 7T]."""
    n, t, c, height, width = steps.shape
    return steps.permute(0, 2, 3, 1, 4).reshape(n, c, height, t * width)


class ReluCell(nn.Module):
    """h_t = relu([f_t, r_{t-1}] W_h - softplus(b_h)),  r_t = relu(h_t W_r - softplus(b_r)).

    ``hidden.weight`` is [H, F + R]: its first F columns take the step's features and the
    last R the recurrent state, so LRP can split h_t's relevance between them.
    """

    def __init__(self, features: int, hidden: int, recurrent: int, dropout: float) -> None:
        super().__init__()
        self.features, self.recurrent_size = features, recurrent
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.hidden = NegativeBiasLinear(features + recurrent, hidden)
        self.hidden_relu = nn.ReLU()
        self.recurrent = NegativeBiasLinear(hidden, recurrent)
        self.recurrent_relu = nn.ReLU()

    def forward(self, f_t: torch.Tensor, r_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_t = self.hidden_relu(self.hidden(self.drop(torch.cat([f_t, r_prev], 1))))
        return h_t, self.recurrent_relu(self.recurrent(h_t))


class ReluRecurrence(nn.Module):
    """Per-step features (one batched call over all steps), then the cell through time.

    Returns the last step's hidden state h_T [N, H].
    """

    def __init__(self, step: nn.Module, cell: ReluCell) -> None:
        super().__init__()
        self.step = step
        self.cell = cell

    def step_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, 28, 7T] (already normalised) → the features of every step, [N, T, F]."""
        steps = strips(x)
        n, t = steps.shape[:2]
        return self.step(steps.reshape(n * t, *steps.shape[2:])).view(n, t, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.step_features(x)
        r = features.new_zeros(features.shape[0], self.cell.recurrent_size)
        h = r
        for t in range(features.shape[1]):
            h, r = self.cell(features[:, t], r)
        return h


class GatedRecurrence(nn.Module):
    """An ``nn.LSTM`` or ``nn.GRU`` over the flattened 28x7 steps; returns h_T [N, H]."""

    def __init__(self, kind: str, in_features: int, hidden: int) -> None:
        super().__init__()
        cell = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cell(in_features, hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = strips(x)
        output, _ = self.rnn(steps.flatten(2))
        return output[:, -1]


class RecurrentClassifier(Classifier):
    """A Classifier over [N, C, 28, 7T] images (T >= 1 steps of 7 columns)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.ndim != 4 or tuple(x.shape[1:3]) != (self.in_channels, INPUT_SIZE)
                or x.shape[3] == 0 or x.shape[3] % STEP_WIDTH):
            raise ModelError(
                f"model {self.name!r} reads images [N, {self.in_channels}, {INPUT_SIZE}, 7T] "
                f"as T steps of {STEP_WIDTH} columns, got {list(x.shape)}; use a sequence "
                "dataset such as 'mnist-embedded-3-maj' (28x84, 12 steps)")
        return self.head(self.features(self.normalize(x)))

    @property
    def gated(self) -> bool:
        return isinstance(self.features, GatedRecurrence)


def _step_pixels(in_channels: int) -> int:
    return in_channels * INPUT_SIZE * STEP_WIDTH


def _relu_model(name: str, in_channels: int, num_classes: int, step: nn.Module, features: int,
                deep_head: bool, dropout: float, mean: float | list[float],
                std: float | list[float]) -> RecurrentClassifier:
    hidden = recurrent = 256
    cell = ReluCell(features, hidden, recurrent, dropout)
    layers: dict[str, nn.Module] = {}
    if dropout > 0:
        layers["drop"] = nn.Dropout(dropout)
    if deep_head:
        layers.update(fc1=NegativeBiasLinear(hidden, 128), relu1=nn.ReLU(),
                      fc2=NegativeBiasLinear(128, num_classes))
    else:
        layers["fc1"] = NegativeBiasLinear(hidden, num_classes)
    return RecurrentClassifier(name, Normalize(mean, std, in_channels),
                               ReluRecurrence(step, cell), sequential(**layers),
                               num_classes=num_classes, gradcam_layer=None,
                               options={"dropout": dropout})


def rnn_shallow(in_channels: int, num_classes: int, *, dropout: float = 0.2,
                mean: float | list[float] = 0.5, std: float | list[float] = 0.5
                ) -> RecurrentClassifier:
    """Seed 002's Shallow: [x_t, r_{t-1}] → h 256 → r 256 through time; h_T → classes."""
    return _relu_model("rnn-shallow", in_channels, num_classes, sequential(flatten=nn.Flatten()),
                       _step_pixels(in_channels), False, dropout, mean, std)


def rnn_deep(in_channels: int, num_classes: int, *, dropout: float = 0.2,
             mean: float | list[float] = 0.5, std: float | list[float] = 0.5
             ) -> RecurrentClassifier:
    """Seed 002's Deep: x_t → 256, then the cell (h 256, r 256); h_T → 128 → classes."""
    step = sequential(flatten=nn.Flatten(), fc1=NegativeBiasLinear(_step_pixels(in_channels), 256),
                      relu1=nn.ReLU())
    return _relu_model("rnn-deep", in_channels, num_classes, step, 256, True, dropout, mean, std)


def rnn_deepv2(in_channels: int, num_classes: int, *, dropout: float = 0.2,
               mean: float | list[float] = 0.5, std: float | list[float] = 0.5
               ) -> RecurrentClassifier:
    """Seed 002's DeepV2: x_t → 256 → 256, then the cell (h 256, r 256); h_T → 128 → classes."""
    step = sequential(flatten=nn.Flatten(), fc1=NegativeBiasLinear(_step_pixels(in_channels), 256),
                      relu1=nn.ReLU(), fc2=NegativeBiasLinear(256, 256), relu2=nn.ReLU())
    return _relu_model("rnn-deepv2", in_channels, num_classes, step, 256, True, dropout, mean,
                       std)


def rnn_convdeep(in_channels: int, num_classes: int, *, dropout: float = 0.2,
                 mean: float | list[float] = 0.5, std: float | list[float] = 0.5
                 ) -> RecurrentClassifier:
    """Seed 002's ConvDeep: per step conv 5x5x24, avg-pool, conv 3x3x32, avg-pool, 256; cell."""
    step = sequential(
        conv1=NegativeBiasConv2d(in_channels, 24, 5), relu1=nn.ReLU(),
        pool1=nn.AvgPool2d(2, ceil_mode=True),  # 28x7 → 14x4, like TensorFlow's SAME pooling
        conv2=NegativeBiasConv2d(24, 32, 3), relu2=nn.ReLU(),
        pool2=nn.AvgPool2d(2, ceil_mode=True),  # → 7x2
        flatten=nn.Flatten(), fc1=NegativeBiasLinear(32 * 7 * 2, 256), relu3=nn.ReLU(),
    )
    return _relu_model("rnn-convdeep", in_channels, num_classes, step, 256, True, dropout, mean,
                       std)


def _gated_model(kind: str, in_channels: int, num_classes: int, hidden: int, dropout: float,
                 mean: float | list[float], std: float | list[float]) -> RecurrentClassifier:
    layers: dict[str, nn.Module] = {}
    if dropout > 0:
        layers["drop"] = nn.Dropout(dropout)
    layers["fc1"] = nn.Linear(hidden, num_classes)
    return RecurrentClassifier(kind, Normalize(mean, std, in_channels),
                               GatedRecurrence(kind, _step_pixels(in_channels), hidden),
                               sequential(**layers), num_classes=num_classes,
                               gradcam_layer=None, options={"dropout": dropout})


def lstm(in_channels: int, num_classes: int, *, dropout: float = 0.2,
         mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> RecurrentClassifier:
    """An LSTM (hidden 128) over the 28x7 steps; h_T → classes. About Shallow's size."""
    return _gated_model("lstm", in_channels, num_classes, 128, dropout, mean, std)


def gru(in_channels: int, num_classes: int, *, dropout: float = 0.2,
        mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> RecurrentClassifier:
    """A GRU (hidden 160) over the 28x7 steps; h_T → classes. About Shallow's size."""
    return _gated_model("gru", in_channels, num_classes, 160, dropout, mean, std)


ARCHITECTURES = ("rnn-shallow", "rnn-deep", "rnn-deepv2", "rnn-convdeep", "lstm", "gru")
