"""Shared fixtures: small slices of the real embedded MNIST, so tests stay fast and honest."""

from __future__ import annotations

import pytest
import torch

from trustmap.data import Dataset, load

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
