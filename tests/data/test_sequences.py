"""3-item majority sequences: the right items in the right blocks, a mask that marks them."""

from __future__ import annotations

import pytest
import torch

from trustmap.data import Dataset, list_datasets, load, load_sequences
from trustmap.data.sequences import OTHER_CLASS, majority
from trustmap.errors import DataError


@pytest.fixture(scope="module")
def base() -> Dataset:
    return load("mnist-embedded", "test")


@pytest.fixture(scope="module")
def built(base):
    return majority(base, seed=0)


def blocks(images: torch.Tensor) -> torch.Tensor:
    """[N, C, 28, 84] → [N, 3, C, 28, 28], left to right."""
    return images.unflatten(3, (3, 28)).permute(0, 3, 1, 2, 4)


def test_each_block_holds_the_item_the_record_says(base, built):
    images = built.dataset.images
    assert images.shape == (len(base), 1, 28, 84)
    assert images.min() >= 0 and images.max() <= 1
    n = torch.arange(len(base))[:, None]
    in_blocks = blocks(images)[n, built.slots]  # [N, 3 items, ...] in item order
    assert torch.equal(in_blocks, base.images[built.sources])
    assert torch.equal(built.sources[:, 0], torch.arange(len(base)))


def test_two_items_of_the_label_and_one_of_another_class(base, built):
    labels = built.dataset.labels
    assert torch.equal(labels, base.labels)
    item_labels = base.labels[built.sources]
    assert (item_labels[:, :2] == labels[:, None]).all()
    assert (item_labels[:, 2] != labels).all()
    assert (built.sources[:, 1] != built.sources[:, 0]).all()  # another item, not itself


def test_the_mask_marks_exactly_the_two_class_c_blocks(base, built):
    mask = built.mask
    assert mask.shape == built.dataset.images.shape and mask.dtype == torch.bool
    assert mask.float().mean() == pytest.approx(2 / 3)
    block_labels = base.labels[built.sources].gather(1, built.slots.argsort(1))  # per block
    is_data = block_labels == built.dataset.labels[:, None]
    assert torch.equal(built.block_is_data, is_data)
    assert torch.equal(blocks(mask.float())[:, :, 0].flatten(2).all(2), is_data)
    assert not blocks(mask.float())[~is_data].any()
    # The odd item lands in each of the three blocks about equally often.
    counts = torch.bincount(built.slots[:, OTHER_CLASS], minlength=3)
    assert counts.min() > 0.25 * len(base)


def test_deterministic_given_the_seed_and_different_across_seeds_and_splits(base, built):
    again = majority(base, seed=0)
    assert torch.equal(again.dataset.images, built.dataset.images)
    other = majority(base, seed=1)
    assert not torch.equal(other.sources, built.sources)
    train = majority(load("mnist-embedded", "train"), seed=0)
    assert not torch.equal(train.slots[:100], built.slots[:100])


def test_the_catalog_builds_them_from_any_base():
    sequences = load_sequences("mnist-embedded-3-maj", "test", seed=2)
    assert torch.equal(load("mnist-embedded-3-maj", "test", seed=2).images,
                       sequences.dataset.images)
    assert sequences.dataset.name == "mnist-embedded-3-maj"
    assert "majority" in sequences.dataset.provenance["transforms"][-1]
    letters = load("letters-3-maj", "test", n=50)
    assert letters.images.shape == (50, 1, 28, 84)
    listed = {info.name: info for info in list_datasets()}
    assert {"mnist-3-maj", "fashion-3-maj", "mnist-embedded-3-maj"} <= set(listed)
    assert listed["mnist-embedded-3-maj"].available
    assert listed["mnist-embedded-3-maj"].sizes == listed["mnist-embedded"].sizes


def test_seed_002s_names_are_built_from_the_full_official_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("TRUSTMAP_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="fetch mnist"):
        load("mnist-3-maj", "test", root=tmp_path)


def test_unknown_names_and_options_say_what_exists():
    with pytest.raises(DataError, match="did you mean"):
        load("mnist-embeded-3-maj")
    with pytest.raises(DataError, match="not a sequence dataset"):
        load_sequences("mnist-embedded")
    with pytest.raises(DataError, match="allowed options: seed"):
        load("mnist-embedded-3-maj", crop="center")


def _dataset(labels: list[int], size: int = 28) -> Dataset:
    return Dataset("tiny", "test", torch.rand(len(labels), 1, size, size),
                   torch.tensor(labels), tuple("abc"))


@pytest.mark.parametrize(("labels", "size", "message"), [
    ([0, 0, 0], 28, "at least 2 classes"),
    ([0, 0, 1], 28, "at least 2 items"),
    ([0, 0, 1, 1], 32, "28x28"),
])
def test_impossible_bases_are_data_errors(labels, size, message):
    with pytest.raises(DataError, match=message):
        majority(_dataset(labels, size))
