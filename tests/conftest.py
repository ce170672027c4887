"""Shared fixtures: small slices of the real embedded MNIST, so tests stay fast and honest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustmap.data import Dataset, load
from trustmap.models import build
from trustmap.training import TrainConfig, fit

# One intra-op thread per test process: the suite runs two processes on two cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist_train() -> Dataset:
    return load("mnist-embedded", "train")


@pytest.fixture(scope="session")
def mnist_test() -> Dataset:
    return load("mnist-embedded", "test")


@pytest.fixture(scope="session")
def mnist_small(mnist_train: Dataset) -> Dataset:
    """600 real digits (60 per class), enough to learn something in one epoch."""
    per_class = [(mnist_train.labels == c).nonzero().flatten()[:60] for c in range(10)]
    return mnist_train.subset(torch.cat(per_class), "first 60 per class")


@pytest.fixture(scope="session")
def trained_lenet(mnist_small: Dataset) -> nn.Module:
    """A LeNet fitted for three quick epochs on 600 digits (about 85% test accuracy), for tests
    that need a model whose maps mean something. Tests must not change it."""
    torch.manual_seed(0)
    model = build("lenet")
    fit(model, mnist_small, config=TrainConfig(epochs=3, batch_size=32, lr=1e-3),
        progress=False)
    model.zero_grad(set_to_none=True)
    return model.eval()
