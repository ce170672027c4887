"""Plain convolutional classifiers: the seed studies' networks and two classics.

Every builder takes already validated arguments (``trustmap.models.build`` checks them) and
leaves out a dropout layer whose rate is 0, so a model has dropout exactly when MC dropout
can sample from it.

Each model is built for one image size, ``input_size`` = [H, W] (28x28 by default, the size
the architectures were designed for): the first dense layer's width follows from it by the
arithmetic the convolutions and pools do. For 28x28 every model is exactly the one it always
was: the same layers, parameter shapes, initialisation order and computation. A size is
refused when the Grad-CAM layer would keep maps smaller than 2x2; the smallest sizes are
lenet 8, lenet5 16, cnn 8, cnn1000 18, alexnet 8 (pixels per side).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trustmap.models.base import (
    DEFAULT_INPUT_SIZE,
    Classifier,
    Normalize,
    check_size,
    sequential,
    size_option,
    size_pair,
    smallest_side,
    spatial_sizes,
)


def dense_head(sizes: Sequence[int], dropouts: Sequence[float]) -> nn.Sequential:
    """Flatten, then Linear layers sizes[0] → … → sizes[-1] with ReLU between them.

    Linear layer i gets a Dropout(dropouts[i]) in front of it when that rate is > 0.
    """
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    last = len(sizes) - 1
    steps = zip(sizes[:-1], sizes[1:], dropouts, strict=True)
    for i, (fan_in, fan_out, rate) in enumerate(steps, start=1):
        if rate > 0:
            layers[f"drop{i}"] = nn.Dropout(rate)
        layers[f"fc{i}"] = nn.Linear(fan_in, fan_out)
        if i < last:
            layers[f"relu{i}"] = nn.ReLU()
    return sequential(**layers)


def min_input_side(features: nn.Sequential, gradcam: str) -> int:
    """The smallest image side for which every layer of ``features`` keeps at least one pixel
    and the Grad-CAM layer ``gradcam`` (a child's name) at least 2x2."""
    def fits(side: int) -> bool:
        sizes = spatial_sizes(features, (side, side))
        return min(min(hw) for hw in sizes.values()) >= 1 and min(sizes[gradcam]) >= 2
    return smallest_side(fits)


def flat_features(name: str, features: nn.Sequential, gradcam: str,
                  input_size: tuple[int, int]) -> int:
    """The number of values ``features`` gives per image of ``input_size``: the first dense
    layer's fan-in. ModelError naming the smallest size where ``input_size`` is too small."""
    side = min_input_side(features, gradcam)
    check_size(name, input_size, (side, side),
               f"its Grad-CAM layer features.{gradcam} must keep maps of at least 2x2")
    h, w = list(spatial_sizes(features, input_size).values())[-1]
    channels = [m.out_channels for m in features.modules() if isinstance(m, nn.Conv2d)][-1]
    return channels * h * w


def _classifier(name: str, features: nn.Sequential, head: nn.Sequential, gradcam: str,
                in_channels: int, num_classes: int, mean: float | list[float],
                std: float | list[float], input_size: tuple[int, int],
                options: dict[str, float]) -> Classifier:
    side = min_input_side(features, gradcam)
    return Classifier(name, Normalize(mean, std, in_channels), features, head,
                      num_classes=num_classes, gradcam_layer=f"features.{gradcam}",
                      options={**options, **size_option(input_size)},
                      input_size=input_size, fixed_size=True, min_size=(side, side))


def lenet(in_channels: int, num_classes: int, *, dropout: float = 0.0,
          mean: float | list[float] = 0.5, std: float | list[float] = 0.5,
          input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> Classifier:
    """Seed 000's LeNet: conv 20-50 (5x5, same), max-pools, dense 500; dropout optional."""
    size = size_pair(input_size)
    features = sequential(
        conv1=nn.Conv2d(in_channels, 20, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(20, 50, 5, padding=2), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
    )
    # 28x28: 50 * 7 * 7.
    head = dense_head([flat_features("lenet", features, "pool2", size), 500, num_classes],
                      [dropout, dropout])
    return _classifier("lenet", features, head, "pool2", in_channels, num_classes, mean, std,
                       size, {"dropout": dropout})


def lenet5(in_channels: int, num_classes: int, *, dropout: float = 0.0,
           mean: float | list[float] = 0.5, std: float | list[float] = 0.5,
           input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> Classifier:
    """LeCun's LeNet-5 (6-16 conv, dense 120-84) with ReLU and max-pool; dropout optional."""
    size = size_pair(input_size)
    features = sequential(
        conv1=nn.Conv2d(in_channels, 6, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(6, 16, 5), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
    )
    # 28x28: 16 * 5 * 5.
    head = dense_head([flat_features("lenet5", features, "pool2", size), 120, 84, num_classes],
                      [dropout] * 3)
    return _classifier("lenet5", features, head, "pool2", in_channels, num_classes, mean, std,
                       size, {"dropout": dropout})


def cnn(in_channels: int, num_classes: int, *, dropout: float = 0.5, conv_dropout: float = 0.25,
        mean: float | list[float] = 0.5, std: float | list[float] = 0.5,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> Classifier:
    """The Keras MNIST example (seeds 003/004): conv 32-64 (3x3), max-pool, dense 128."""
    size = size_pair(input_size)
    features = sequential(
        conv1=nn.Conv2d(in_channels, 32, 3), relu1=nn.ReLU(),
        conv2=nn.Conv2d(32, 64, 3), relu2=nn.ReLU(), pool=nn.MaxPool2d(2),
    )
    # Keras drops after the pool and before Flatten; dropping right after Flatten is the same.
    # 28x28: 64 * 12 * 12.
    head = dense_head([flat_features("cnn", features, "pool", size), 128, num_classes],
                      [conv_dropout, dropout])
    return _classifier("cnn", features, head, "pool", in_channels, num_classes, mean, std,
                       size, {"dropout": dropout, "conv_dropout": conv_dropout})


def cnn1000(in_channels: int, num_classes: int, *, dropout: float = 0.5,
            mean: float | list[float] = 0.5, std: float | list[float] = 0.5,
            input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> Classifier:
    """Seed 001's CNN: conv 32 (3x3), max-pool, conv 64 (5x5), dropout, max-pool, dense 1000."""
    size = size_pair(input_size)
    layers: dict[str, nn.Module] = {
        "conv1": nn.Conv2d(in_channels, 32, 3), "relu1": nn.ReLU(), "pool1": nn.MaxPool2d(2),
        "conv2": nn.Conv2d(32, 64, 5), "relu2": nn.ReLU(),
    }
    if dropout > 0:
        layers["drop"] = nn.Dropout(dropout)
    layers["pool2"] = nn.MaxPool2d(2)
    features = sequential(**layers)
    # 28x28: 64 * 4 * 4 (28 -conv3-> 26 -pool-> 13 -conv5-> 9 -pool-> 4).
    head = dense_head([flat_features("cnn1000", features, "pool2", size), 1000, num_classes],
                      [0.0, 0.0])
    return _classifier("cnn1000", features, head, "pool2", in_channels, num_classes, mean, std,
                       size, {"dropout": dropout})


def alexnet(in_channels: int, num_classes: int, *, dropout: float = 0.5,
            mean: float | list[float] = 0.5, std: float | list[float] = 0.5,
            input_size: Sequence[int] = DEFAULT_INPUT_SIZE) -> Classifier:
    """AlexNet at half width for small images: conv 48-128-192-192-128, 3 max-pools, dense
    1024-1024."""
    size = size_pair(input_size)
    features = sequential(
        conv1=nn.Conv2d(in_channels, 48, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(48, 128, 5, padding=2), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        conv3=nn.Conv2d(128, 192, 3, padding=1), relu3=nn.ReLU(),
        conv4=nn.Conv2d(192, 192, 3, padding=1), relu4=nn.ReLU(),
        conv5=nn.Conv2d(192, 128, 3, padding=1), relu5=nn.ReLU(), pool3=nn.MaxPool2d(2),
    )
    # As in AlexNet, dropout precedes the two hidden dense layers, not the output layer.
    # 28x28: 128 * 3 * 3.
    head = dense_head([flat_features("alexnet", features, "relu5", size), 1024, 1024,
                       num_classes], [dropout, dropout, 0.0])
    # Grad-CAM reads conv5's maps (7x7 for 28x28): the maps after the last pool are too coarse.
    return _classifier("alexnet", features, head, "relu5", in_channels, num_classes, mean, std,
                       size, {"dropout": dropout})
