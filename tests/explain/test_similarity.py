"""Rank and cosine similarity of maps, against scipy and explicit loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from trustmap.errors import DataError
from trustmap.explain.similarity import average_ranks, cosine, pairwise_mean, spearman


def test_average_ranks_equal_scipy_with_ties() -> None:
    values = torch.randint(0, 5, (7, 40)).float()
    np.testing.assert_array_equal(average_ranks(values).numpy(),
                                  stats.rankdata(values.numpy(), axis=1))


def test_spearman_equals_scipy_per_map() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(5, 1, 6, 6, generator=generator)
    b = a + 0.3 * torch.rand(5, 1, 6, 6, generator=generator)
    a[:, :, :2] = 0  # ties, as in a ReLU'd Grad-CAM map
    expected = [stats.spearmanr(a[i].flatten(), b[i].flatten())[0] for i in range(5)]
    np.testing.assert_allclose(spearman(a, b).numpy(), expected, rtol=1e-5)


def test_cosine_formula_and_zero_maps() -> None:
    a = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    b = torch.tensor([[[[2.0, -1.0]]], [[[1.0, 1.0]]]])
    torch.testing.assert_close(cosine(a, b), torch.tensor([0.0, 0.0]))
    c = torch.tensor([[[[3.0, 4.0]]]])
    torch.testing.assert_close(cosine(c, c * 2), torch.tensor([1.0]))


@pytest.mark.parametrize("similarity", ["spearman", "cosine"])
def test_pairwise_mean_equals_the_loop_over_pairs(similarity: str) -> None:
    generator = torch.Generator().manual_seed(1)
    samples = torch.randn(4, 3, 1, 5, 5, generator=generator)
    pair = spearman if similarity == "spearman" else cosine
    expected = torch.stack([pair(samples[i], samples[j])
                            for i, j in itertools.permutations(range(4), 2)]).mean(0)
    torch.testing.assert_close(pairwise_mean(samples, similarity), expected, atol=1e-5, rtol=0)


def test_bad_inputs_raise() -> None:
    with pytest.raises(DataError, match="same shape"):
        spearman(torch.rand(2, 1, 3, 3), torch.rand(2, 1, 3, 4))
    with pytest.raises(DataError, match="S >= 2"):
        pairwise_mean(torch.rand(1, 2, 1, 3, 3))
    with pytest.raises(DataError, match="unknown similarity"):
        pairwise_mean(torch.rand(2, 2, 1, 3, 3), "kendall")
