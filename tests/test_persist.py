"""Results saved and loaded again are the same results: tensors, tables, tuples, nesting."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from trustmap.errors import CheckpointError
from trustmap.persist import load, save
from trustmap.report.results import LatentResults, RunResults


def _latent() -> LatentResults:
    generator = torch.Generator().manual_seed(0)
    maps = {("lenet", "ensemble", "entropy"): torch.rand(9, generator=generator)}
    return LatentResults(
        header={"seconds": [{"section": "training", "seconds": 1.5}], "pair": (1, "a")},
        dataset="mnist", classes=["0", "1"], architectures=["lenet"], predictives=["ensemble"],
        measures=["entropy"], resolution=3, bound=2.0, codes=torch.rand(4, 2, generator=generator),
        code_labels=torch.tensor([0, 1, 0, 1]), grid_images=torch.rand(9, 1, 4, 4),
        near=torch.tensor([True] * 4 + [False] * 5), maps=maps,
        predicted={("lenet", "ensemble"): torch.zeros(9, dtype=torch.long)},
        confident={("lenet", "ensemble"): torch.tensor([8, 7])},
        shares=pd.DataFrame({"architecture": ["lenet"], "share": [0.1 + 0.2],
                             "threshold": [0.5233298540115356], "points_near": [4]}),
        midpoints=pd.DataFrame(), midpoint_scores={}, path_images={}, path_scores={},
        path_labels=[("0", "1")])


def test_a_saved_result_loads_as_the_same_result(tmp_path: Path) -> None:
    original = _latent()
    save(original, tmp_path, "latent")
    loaded = load(LatentResults, tmp_path, "latent")
    assert isinstance(loaded, LatentResults)
    assert loaded.header == original.header and loaded.bound == 2.0
    for key, value in original.maps.items():
        assert torch.equal(loaded.maps[key], value)  # tuple keys stay tuples
    assert torch.equal(loaded.near, original.near) and loaded.near.dtype == torch.bool
    assert loaded.confident.keys() == original.confident.keys()
    pd.testing.assert_frame_equal(loaded.shares, original.shares, check_exact=True)
    assert loaded.shares.loc[0, "share"] == 0.1 + 0.2  # every float bit: a redraw shows
    assert loaded.shares.loc[0, "threshold"] == 0.5233298540115356  # the run's numbers
    assert loaded.path_labels == [("0", "1")] and loaded.midpoints.empty


def test_unreadable_or_other_results_are_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot be read"):
        load(LatentResults, tmp_path, "latent")
    save(_latent(), tmp_path, "latent")
    with pytest.raises(CheckpointError, match="holds 'LatentResults', not saved RunResults"):
        load(RunResults, tmp_path, "latent")
    (tmp_path / "latent.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load(LatentResults, tmp_path, "latent")
