"""Plain convolutional classifiers: the seed studies' networks and two classics fitted to 28x28.

Every builder takes already validated arguments (``trustmap.models.build`` checks them) and
leaves out a dropout layer whose rate is 0, so a model has dropout exactly when MC dropout
can sample from it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trustmap.models.base import Classifier, Normalize, sequential


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


def lenet(in_channels: int, num_classes: int, *, dropout: float = 0.0,
          mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> Classifier:
    """Seed 000's LeNet: conv 20-50 (5x5, same), max-pools, dense 500; dropout optional."""
    features = sequential(
        conv1=nn.Conv2d(in_channels, 20, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(20, 50, 5, padding=2), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
    )
    head = dense_head([50 * 7 * 7, 500, num_classes], [dropout, dropout])
    return Classifier("lenet", Normalize(mean, std, in_channels), features, head,
                      num_classes=num_classes, gradcam_layer="features.pool2",
                      options={"dropout": dropout})


def lenet5(in_channels: int, num_classes: int, *, dropout: float = 0.0,
           mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> Classifier:
    """LeCun's LeNet-5 (6-16 conv, dense 120-84) with ReLU and max-pool; dropout optional."""
    features = sequential(
        conv1=nn.Conv2d(in_channels, 6, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(6, 16, 5), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
    )
    head = dense_head([16 * 5 * 5, 120, 84, num_classes], [dropout] * 3)
    return Classifier("lenet5", Normalize(mean, std, in_channels), features, head,
                      num_classes=num_classes, gradcam_layer="features.pool2",
                      options={"dropout": dropout})


def cnn(in_channels: int, num_classes: int, *, dropout: float = 0.5, conv_dropout: float = 0.25,
        mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> Classifier:
    """The Keras MNIST example (seeds 003/004): conv 32-64 (3x3), max-pool, dense 128."""
    features = sequential(
        conv1=nn.Conv2d(in_channels, 32, 3), relu1=nn.ReLU(),
        conv2=nn.Conv2d(32, 64, 3), relu2=nn.ReLU(), pool=nn.MaxPool2d(2),
    )
    # Keras drops after the pool and before Flatten; dropping right after Flatten is the same.
    head = dense_head([64 * 12 * 12, 128, num_classes], [conv_dropout, dropout])
    return Classifier("cnn", Normalize(mean, std, in_channels), features, head,
                      num_classes=num_classes, gradcam_layer="features.pool",
                      options={"dropout": dropout, "conv_dropout": conv_dropout})


def cnn1000(in_channels: int, num_classes: int, *, dropout: float = 0.5,
            mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> Classifier:
    """Seed 001's CNN: conv 32 (3x3), max-pool, conv 64 (5x5), dropout, max-pool, dense 1000."""
    layers: dict[str, nn.Module] = {
        "conv1": nn.Conv2d(in_channels, 32, 3), "relu1": nn.ReLU(), "pool1": nn.MaxPool2d(2),
        "conv2": nn.Conv2d(32, 64, 5), "relu2": nn.ReLU(),
    }
    if dropout > 0:
        layers["drop"] = nn.Dropout(dropout)
    layers["pool2"] = nn.MaxPool2d(2)
    head = dense_head([64 * 4 * 4, 1000, num_classes], [0.0, 0.0])
    return Classifier("cnn1000", Normalize(mean, std, in_channels), sequential(**layers), head,
                      num_classes=num_classes, gradcam_layer="features.pool2",
                      options={"dropout": dropout})


def alexnet(in_channels: int, num_classes: int, *, dropout: float = 0.5,
            mean: float | list[float] = 0.5, std: float | list[float] = 0.5) -> Classifier:
    """AlexNet at half width for 28x28: conv 48-128-192-192-128, 3 max-pools, dense 1024-1024."""
    features = sequential(
        conv1=nn.Conv2d(in_channels, 48, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(48, 128, 5, padding=2), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        conv3=nn.Conv2d(128, 192, 3, padding=1), relu3=nn.ReLU(),
        conv4=nn.Conv2d(192, 192, 3, padding=1), relu4=nn.ReLU(),
        conv5=nn.Conv2d(192, 128, 3, padding=1), relu5=nn.ReLU(), pool3=nn.MaxPool2d(2),
    )
    # As in AlexNet, dropout precedes the two hidden dense layers, not the output layer.
    head = dense_head([128 * 3 * 3, 1024, 1024, num_classes], [dropout, dropout, 0.0])
    # Grad-CAM reads conv5's 7x7 maps: the 3x3 maps after the last pool are too coarse.
    return Classifier("alexnet", Normalize(mean, std, in_channels), features, head,
                      num_classes=num_classes, gradcam_layer="features.relu5",
                      options={"dropout": dropout})
