"""Reducers compute their formulas per map, on single and stacked batches, in the order named."""

from __future__ import annotations

import pytest
import torch

from trustmap.errors import ConfigError, DataError
from trustmap.explain.reduce import (
    REDUCERS,
    absolute,
    max_channels,
    minmax,
    positive,
    reduce,
    square,
    sum_channels,
)


@pytest.fixture
def maps() -> torch.Tensor:
    """[N=2, C=2, H=2, W=2] by hand; the second map is constant on every channel."""
    first = torch.tensor([[[-1.0, 2.0], [0.5, -3.0]], [[4.0, -2.0], [0.0, 1.0]]])
    second = torch.full((2, 2, 2), 7.0)
    return torch.stack([first, second])


def test_elementwise_reducers(maps):
    assert torch.equal(absolute(maps)[0, 0], torch.tensor([[1.0, 2.0], [0.5, 3.0]]))
    assert torch.equal(square(maps)[0, 0], torch.tensor([[1.0, 4.0], [0.25, 9.0]]))
    assert torch.equal(positive(maps)[0, 0], torch.tensor([[0.0, 2.0], [0.5, 0.0]]))
    for reducer in (absolute, square, positive):
        assert reducer(maps).shape == maps.shape
    assert torch.equal(absolute(maps)[1], maps[1]) and torch.equal(positive(maps)[1], maps[1])


def test_channel_reducers_keep_a_channel_axis_of_one(maps):
    summed = sum_channels(maps)
    assert summed.shape == (2, 1, 2, 2)
    assert torch.equal(summed[0, 0], torch.tensor([[3.0, 0.0], [0.5, -2.0]]))
    biggest = max_channels(maps)
    assert biggest.shape == (2, 1, 2, 2)
    assert torch.equal(biggest[0, 0], torch.tensor([[4.0, 2.0], [0.5, 1.0]]))


def test_minmax_scales_each_map_on_its_own(maps):
    scaled = minmax(maps)
    # First map: min -3, max 4, span 7.
    assert torch.allclose(scaled[0], (maps[0] + 3) / 7)
    assert scaled[0].min() == 0 and scaled[0].max() == 1
    assert torch.equal(scaled[1], torch.zeros(2, 2, 2))  # constant map: 0, not NaN
    stretched = maps.clone()
    stretched[1, 0, 0, 0] = 100.0
    assert torch.allclose(minmax(stretched)[0], scaled[0])  # maps do not leak into each other


def test_stacked_maps_reduce_like_each_batch(maps):
    stack = torch.stack([maps, -2 * maps, maps.flip(-1)])  # [S=3, N=2, C=2, H, W]
    for name, reducer in REDUCERS.items():
        out = reducer(stack)
        for s in range(3):
            assert torch.allclose(out[s], reducer(stack[s])), name
    assert sum_channels(stack).shape == (3, 2, 1, 2, 2)


def test_reduce_applies_names_in_order(maps):
    assert torch.equal(reduce(maps, ["absolute", "sum_channels"]),
                       sum_channels(absolute(maps)))
    assert torch.equal(reduce(maps, ["sum_channels", "absolute"]),
                       absolute(sum_channels(maps)))
    assert not torch.equal(reduce(maps, ["absolute", "sum_channels"]),
                           reduce(maps, ["sum_channels", "absolute"]))
    assert torch.equal(reduce(maps, []), maps)
    assert torch.equal(reduce(maps, ("positive", "max_channels", "minmax")),
                       minmax(max_channels(positive(maps))))


def test_registry_and_errors(maps):
    assert set(REDUCERS) == {"absolute", "square", "sum_channels", "max_channels", "minmax",
                             "positive"}
    with pytest.raises(TypeError):
        REDUCERS["abs"] = absolute  # type: ignore[index]
    with pytest.raises(ConfigError, match="known reducers: absolute"):
        reduce(maps, ["absolute", "normalise"])
    with pytest.raises(ConfigError, match=r"\['minmax'\]"):
        reduce(maps, "minmax")
    for bad in (maps[0], maps[None, None], maps.numpy()):
        with pytest.raises(DataError):
            reduce(bad, ["absolute"])
        with pytest.raises(DataError):
            minmax(bad)
