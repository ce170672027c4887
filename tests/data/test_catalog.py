"""The catalog: names, splits and options are checked, files are found, missing data says why."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from trustmap.data import DatasetInfo, embedded, list_datasets, load, sources
from trustmap.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $TRUSTMAP_DATA and home, so the user's own cache never leaks into a test."""
    data = tmp_path / "data"
    monkeypatch.setenv("TRUSTMAP_DATA", str(data))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return data


def write_idx_split(folder: Path, split: str, n: int) -> np.ndarray:
    """Gzipped IDX images and labels for one split; returns the images."""
    prefix = "train" if split == "train" else "t10k"
    images = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, magic, array in (("images-idx3", 3, images), ("labels-idx1", 1, np.arange(n) % 10)):
        header = bytes([0, 0, 8, magic]) + np.asarray(array.shape, ">i4").tobytes()
        data = header + array.astype(np.uint8).tobytes()
        (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(data))
    return images


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(DataError, match="did you mean 'fashion-mnist'") as info:
        load("fashion_mnist")
    for name in ("mnist", "kmnist", "svhn", "cifar10", "notmnist-small", "mnist-embedded"):
        assert name in str(info.value)


def test_unknown_split_lists_the_splits() -> None:
    with pytest.raises(DataError, match="unknown split 'val'") as info:
        load("mnist", "val")
    assert "train, test" in str(info.value)


@pytest.mark.parametrize("name, option, allowed", [
    ("mnist", "crop", "allowed options: root"),
    ("cifar10", "seed", "allowed options: root, crop"),
    ("letters", "root", "allowed options: n, seed"),
    ("mnist-embedded", "n", "allowed options: none"),
])
def test_unknown_option_lists_the_allowed(name: str, option: str, allowed: str) -> None:
    with pytest.raises(DataError, match=f"does not take option.* {option}") as info:
        load(name, "test", **{option: 1})
    assert allowed in str(info.value)


def test_bad_option_values(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown crop 'middle'.*center, resize, seed000"):
        load("svhn", "test", root=tmp_path, crop="middle")
    with pytest.raises(DataError, match="root must be a path"):
        load("mnist", "test", root=3)


def test_not_found_lists_every_place_and_the_fetch_command(tmp_path: Path,
                                                           isolated_search_path: Path) -> None:
    expected = "could not find the test split of dataset 'kmnist'"
    with pytest.raises(DataError, match=expected) as info:
        load("kmnist")
    message = str(info.value)
    cache = tmp_path / "home" / ".cache" / "trustmap"
    for place in (isolated_search_path / "kmnist", cache / "kmnist", sources.SYSTEM_DIR / "kmnist"):
        assert str(place) in message
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "trustmap data fetch kmnist" in message
    assert "apt-get" not in message


def test_not_found_fashion_mentions_the_debian_package(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError) as info:
        load("fashion-mnist", "train")
    assert "trustmap data fetch fashion-mnist" in str(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert str(tmp_path / "nowhere" / "fashion-mnist") in str(info.value)


def test_explicit_root_not_found_names_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load("mnist", "train", root=tmp_path / "mine")
    assert str(tmp_path / "mine") in str(info.value)
    assert str(tmp_path / "mine" / "mnist") in str(info.value)


def test_search_path_order_and_root_override(tmp_path: Path, isolated_search_path: Path) -> None:
    cache = tmp_path / "home" / ".cache" / "trustmap" / "mnist"
    write_idx_split(cache, "test", 3)
    assert len(load("mnist", "test")) == 3  # found in ~/.cache/trustmap
    write_idx_split(isolated_search_path / "mnist", "test", 5)
    ds = load("mnist", "test")  # $TRUSTMAP_DATA comes first
    assert len(ds) == 5
    assert ds.provenance["source"]["files"][0].startswith(str(isolated_search_path / "mnist"))
    write_idx_split(tmp_path / "mine" / "mnist", "test", 2)
    assert len(load("mnist", "test", root=tmp_path / "mine")) == 2  # root/NAME
    assert len(load("mnist", "test", root=str(tmp_path / "mine" / "mnist"))) == 2  # root itself


def test_list_datasets_reads_idx_headers(isolated_search_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "SYSTEM_DIR", isolated_search_path.parent / "nowhere")
    write_idx_split(isolated_search_path / "kmnist", "train", 6)
    write_idx_split(isolated_search_path / "kmnist", "test", 4)
    write_idx_split(isolated_search_path / "mnist", "test", 4)  # train split missing
    infos = {info.name: info for info in list_datasets()}
    assert set(infos) >= {"mnist", "fashion-mnist", "kmnist", "notmnist-small", "svhn", "cifar10",
                          "mnist-embedded", "letters", "natural-patches", "noise-uniform",
                          "noise-gaussian"}
    assert all(isinstance(info, DatasetInfo) for info in infos.values())
    kmnist = infos["kmnist"]
    assert (kmnist.kind, kmnist.available) == ("official", True)
    assert kmnist.sizes == {"train": 6, "test": 4}
    assert kmnist.location == str(isolated_search_path / "kmnist")
    assert not infos["mnist"].available and infos["mnist"].sizes is None
    assert infos["mnist"].location == "not found"
    assert infos["letters"].kind == "generated" and infos["mnist-embedded"].kind == "embedded"


def test_embedded_datasets_come_through_the_catalog_unchanged() -> None:
    """load(name, ...) returns exactly what trustmap.data.embedded makes, options passed on."""
    pairs = [
        (load("mnist-embedded", "train"), embedded.load_mnist_embedded("train")),
        (load("letters", "test", n=20, seed=2), embedded.load_letters("test", n=20, seed=2)),
        (load("natural-patches", "train", n=8), embedded.load_natural_patches("train", n=8)),
        (load("noise-uniform", "test", seed=1), embedded.load_noise("uniform", "test", seed=1)),
        (load("noise-gaussian", "train", n=4, seed=3),
         embedded.load_noise("gaussian", "train", n=4, seed=3)),
    ]
    for through_catalog, direct in pairs:
        assert through_catalog.name == direct.name
        assert torch.equal(through_catalog.images, direct.images), direct.name
        assert torch.equal(through_catalog.labels, direct.labels), direct.name
    assert len(pairs[1][0]) == 20 and len(pairs[4][0]) == 4
    infos = {info.name: info for info in list_datasets()}
    for name in ("mnist-embedded", "letters", "natural-patches", "noise-uniform"):
        assert infos[name].available
        assert infos[name].sizes == embedded.embedded_sizes(name)
