"""Relevance in a known region: hand-computed cases of seed 002's score, per pixel and per step."""

from __future__ import annotations

import math

import pytest
import torch

from trustmap.errors import DataError
from trustmap.evaluate.localisation import column_shares, region_share, strip_region_share


def _left_two_thirds(n: int = 1) -> torch.Tensor:
    mask = torch.zeros(n, 1, 2, 6, dtype=torch.bool)
    mask[..., :4] = True
    return mask


def test_region_share_by_hand():
    maps = torch.tensor([[[[1.0, -5.0, 0.0, 2.0, 3.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 4.0]]]])
    # Positive relevance 1 + 2 inside (columns 0-3), 3 + 4 outside: 3 / 10; -5 is ignored.
    assert region_share(maps, _left_two_thirds()).tolist() == pytest.approx([0.3])


def test_a_uniform_map_scores_the_regions_area_and_a_focused_one_scores_one():
    mask = _left_two_thirds(2)
    maps = torch.stack([torch.ones(1, 2, 6), mask[1].float()])
    assert region_share(maps, mask).tolist() == pytest.approx([2 / 3, 1.0])
    assert strip_region_share(maps, mask, width=2).tolist() == pytest.approx([2 / 3, 1.0])


def test_strip_shares_sum_signed_relevance_per_strip_before_clipping():
    maps = torch.tensor([[[[4.0, -3.0, 1.0, 1.0, 2.0, -1.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]]])
    # Strips of 2 columns: sums 1, 2, 1 -> shares 1/4, 1/2, 1/4; the mask covers strips 0-1.
    assert column_shares(maps, 2).tolist() == [pytest.approx([0.25, 0.5, 0.25])]
    assert strip_region_share(maps, _left_two_thirds(), 2).tolist() == pytest.approx([0.75])
    # Per pixel the same map scores (4 + 1 + 1) / (4 + 1 + 1 + 2).
    assert region_share(maps, _left_two_thirds()).tolist() == pytest.approx([0.75])
    maps[0, 0, 0, 0] = 10.0  # per step 7, 2, 1 -> 9/10; per pixel 12/14
    assert strip_region_share(maps, _left_two_thirds(), 2).item() == pytest.approx(9 / 10)
    assert region_share(maps, _left_two_thirds()).item() == pytest.approx(12 / 14)


def test_no_positive_relevance_is_undefined_not_zero():
    maps = -torch.ones(1, 1, 2, 6)
    assert math.isnan(region_share(maps, _left_two_thirds()).item())
    assert math.isnan(strip_region_share(maps, _left_two_thirds(), 2).item())


def test_bad_inputs_are_data_errors():
    with pytest.raises(DataError, match="same shape"):
        region_share(torch.ones(1, 1, 2, 6), torch.ones(1, 1, 2, 5, dtype=torch.bool))
    with pytest.raises(DataError, match="NaN"):
        region_share(torch.full((1, 1, 2, 6), float("nan")), _left_two_thirds())
    with pytest.raises(DataError, match="multiple of 4"):
        column_shares(torch.ones(1, 1, 2, 6), 4)
