"""The run's cache: tables kept by a digest of the tensors they were computed from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trustmap.studies.base import TensorCache, digest


def _tables() -> dict[str, pd.DataFrame]:
    return {"scores": pd.DataFrame({"measure": ["entropy", "mi"], "auroc": [1 / 3, np.nan],
                                    "n": [3, 4]}),
            "empty": pd.DataFrame(columns=["measure", "auroc"])}


def test_tables_come_back_bit_for_bit_and_are_computed_once(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict[str, pd.DataFrame]:
        calls.append(1)
        return _tables()

    key = {"tables": "t", "inputs": "abc"}
    first = TensorCache(tmp_path, "scope").frames(key, ("scores", "empty"), compute)
    again = TensorCache(tmp_path, "scope")
    second = again.frames(key, ("scores", "empty"), compute)
    assert len(calls) == 1 and again.hits == 1
    for name, table in _tables().items():
        pd.testing.assert_frame_equal(second[name], table, check_exact=True)
        pd.testing.assert_frame_equal(first[name], table, check_exact=True)
    assert second["scores"]["auroc"][0] == 1 / 3  # every float bit, not a rounded text


def test_a_damaged_or_missing_table_is_computed_again(tmp_path: Path) -> None:
    cache = TensorCache(tmp_path, "scope")
    key = {"tables": "t"}
    cache.frames(key, ("scores", "empty"), _tables)
    files = sorted(tmp_path.glob("*.parquet"))
    assert len(files) == 2
    files[0].write_bytes(b"not parquet")
    files[1].unlink()
    calls = []
    found = TensorCache(tmp_path, "scope").frames(
        key, ("scores", "empty"), lambda: calls.append(1) or _tables())
    assert calls == [1]
    pd.testing.assert_frame_equal(found["scores"], _tables()["scores"])
    assert len(list(tmp_path.glob("*.parquet"))) == 2


def test_the_digest_changes_with_any_name_value_dtype_or_shape() -> None:
    x = torch.arange(6, dtype=torch.float32)
    base = digest([("a", x), ("b", x > 2)])
    assert base == digest([("a", x.clone()), ("b", x > 2)])
    assert base == digest([("a", x.view(2, 3).t().t().reshape(-1)), ("b", x > 2)])
    changed = x.clone()
    changed[3] = torch.nextafter(changed[3], torch.tensor(10.0))
    for other in ([("a", changed), ("b", x > 2)], [("c", x), ("b", x > 2)],
                  [("a", x.double()), ("b", x > 2)], [("a", x.view(2, 3)), ("b", x > 2)],
                  [("b", x > 2), ("a", x)], [("a", x), ("b", x > 3)]):
        assert digest(other) != base
    assert digest([("a", x[::2])]) == digest([("a", x[::2].contiguous())])
