"""Data references: image folders, .npz files and torch Datasets load to the pixels written.

Every file is written here with Pillow or numpy; expected values are computed from the arrays
written (uint8 / 255) or from the explicit formula, never with the library's helpers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import TensorDataset

from trustmap.data import Dataset, conform, from_torch, from_uint8, load
from trustmap.errors import DataError

RNG = np.random.default_rng(20240611)


def shapes_image(size: int = 32) -> np.ndarray:
    """An RGB uint8 image: a random background with a random rectangle and ellipse."""
    img = Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    for shape in (draw.rectangle, draw.ellipse):
        x0, y0 = RNG.integers(0, size // 2, 2)
        shape((int(x0), int(y0), int(x0) + size // 3, int(y0) + size // 3),
              fill=tuple(int(v) for v in RNG.integers(0, 256, 3)))
    return np.asarray(img)


def write(path: Path, pixels: np.ndarray, mode: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels)
    (img.convert(mode) if mode else img).save(path)
    return pixels


def as_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> the float32 [N, C, H, W] a Dataset must hold."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def labelled_folder(root: Path, counts: dict[str, int], value_from: int = 0) -> None:
    """Gray 4x4 images, each filled with its own value (value_from, value_from + 1, ...)."""
    value = value_from
    for name, count in counts.items():
        for i in range(count):
            write(root / name / f"{i:02d}.png", np.full((4, 4), value, dtype=np.uint8))
            value += 1


def ids(dataset: Dataset) -> list[int]:
    return [round(v * 255) for v in dataset.images[:, 0, 0, 0].tolist()]


# --- folders -------------------------------------------------------------------------------------

def test_image_folder_train_test(tmp_path: Path) -> None:
    expected: dict[str, list[np.ndarray]] = {}
    counts = {"train": 10, "test": 4}
    for split, n in counts.items():
        for name in ("cat", "ant", "bee"):  # written unsorted
            for i in range(n):
                expected.setdefault(split, []).append(
                    (name, i, write(tmp_path / split / name / f"img_{i:02d}.png", shapes_image())))
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "train" / "ant" / ".DS_Store").write_bytes(b"hidden")
    for split, n in counts.items():
        ds = load(str(tmp_path), split)
        assert ds.name == str(tmp_path) and ds.split == split
        assert ds.classes == ("ant", "bee", "cat")
        assert ds.images.shape == (3 * n, 3, 32, 32) and ds.labelled
        assert ds.labels.tolist() == [0] * n + [1] * n + [2] * n
        ordered = sorted(expected[split], key=lambda item: (item[0], item[1]))
        assert torch.equal(ds.images, as_float(np.stack([pixels for _, _, pixels in ordered])))
        source = ds.provenance["source"]
        assert source["files"] == [str(tmp_path)] and source["kind"] == "image-folder"
        assert source["classes"] == {"ant": n, "bee": n, "cat": n}
        assert source["ignored_examples"] == ["README.txt"]


def test_image_folder_class_sets_must_match(tmp_path: Path) -> None:
    labelled_folder(tmp_path / "train", {"a": 1, "b": 1})
    labelled_folder(tmp_path / "test", {"a": 1, "c": 1})
    with pytest.raises(DataError, match="only in train/: b; only in test/: c"):
        load(str(tmp_path))
    labelled_folder(tmp_path / "train", {"c": 1})
    labelled_folder(tmp_path / "test", {"b": 1})
    assert load(str(tmp_path)).classes == ("a", "b", "c")
    with pytest.raises(DataError, match="does not take option.* seed: it has train/ and test/"):
        load(str(tmp_path), seed=1)
    (tmp_path / "test").rename(tmp_path / "val")
    with pytest.raises(DataError, match="has a train/ folder but no test/"):
        load(str(tmp_path))


def test_one_split_folder_is_divided_by_a_seeded_stratified_ratio(tmp_path: Path) -> None:
    labelled_folder(tmp_path, {"x": 10, "y": 5})
    train, test = load(str(tmp_path), "train"), load(str(tmp_path), "test")
    assert sorted(ids(train) + ids(test)) == list(range(15))  # disjoint and covering
    assert sum(v < 10 for v in ids(test)) == 2  # round(10 * 0.2) of class x, 1 of y
    assert len(test) == 3 and test.labels.tolist() == [0, 0, 1]
    assert all((v < 10) == (k == 0) for v, k in zip(ids(train), train.labels.tolist(),
                                                      strict=True))
    record = test.provenance["split"]
    assert record["test_fraction"] == 0.2 and record["seed"] == 0
    assert record["counts"] == {"train": 12, "test": 3} == train.provenance["split"]["counts"]
    assert ids(load(str(tmp_path), "test")) == ids(test)
    seeds = {tuple(ids(load(str(tmp_path), "test", seed=s, test_fraction=0.5))) for s in range(5)}
    assert len(seeds) > 1 and all(len(s) == 8 for s in seeds)  # 5 of 10 and round(2.5) = 3 of 5
    with pytest.raises(DataError, match="leaves the test split empty"):
        load(str(tmp_path), "test", test_fraction=0.01)
    with pytest.raises(DataError, match="test_fraction must be a number strictly between"):
        load(str(tmp_path), "test", test_fraction=1.0)


def test_flat_folder_is_unlabelled_and_mixed_modes_become_rgb(tmp_path: Path) -> None:
    gray = write(tmp_path / "a.png", RNG.integers(0, 256, (6, 6), dtype=np.uint8))
    rgba = RNG.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    write(tmp_path / "b.png", rgba)
    rgb = write(tmp_path / "c.bmp", RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    ds = load(str(tmp_path))
    assert ds.classes == () and ds.labels.tolist() == [-1, -1, -1] and not ds.labelled
    assert ds.num_classes == 0
    expected = np.stack([np.repeat(gray[:, :, None], 3, axis=2), rgba[:, :, :3], rgb])
    assert torch.equal(ds.images, as_float(expected))
    steps = " | ".join(ds.provenance["transforms"])
    assert "1 file(s) of Pillow mode L -> RGB (gray repeated" in steps
    assert "alpha / transparency dropped from 1 file(s)" in steps
    with pytest.raises(DataError, match="unlabelled .* cannot be trained on"):
        load(str(tmp_path), "train")
    with pytest.raises(DataError, match="does not take option.* test_fraction"):
        load(str(tmp_path), "test", test_fraction=0.3)


def test_gray_folder_stays_gray(tmp_path: Path) -> None:
    pixels = write(tmp_path / "a.jpg", np.full((5, 7), 77, dtype=np.uint8))
    ds = load(str(tmp_path))
    assert ds.images.shape == (1, 1, 5, 7)
    assert torch.equal(ds.images[0, 0], torch.from_numpy(pixels).float() / 255)  # flat: exact


def test_resize_and_mixed_sizes(tmp_path: Path) -> None:
    write(tmp_path / "big.png", np.full((16, 12), 200, dtype=np.uint8))
    small = write(tmp_path / "small.png", RNG.integers(0, 256, (8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match=r"big.png is 16x12 but .*small.png is 8x8; pass resize"):
        load(str(tmp_path))
    ds = load(str(tmp_path), resize=[8, 8])
    assert ds.images.shape == (2, 1, 8, 8)
    torch.testing.assert_close(ds.images[0], torch.full((1, 8, 8), 200 / 255), rtol=0,
                               atol=1e-6)  # a flat image stays flat whatever the filter
    assert torch.equal(ds.images[1, 0], torch.from_numpy(small).float() / 255)  # not resized
    assert "1 image(s) resized to 8x8 (bilinear, antialiased)" in ds.provenance["transforms"]
    with pytest.raises(DataError, match="resize must be \\[height, width\\]"):
        load(str(tmp_path), resize=8)


def test_bad_folders(tmp_path: Path) -> None:
    good = np.zeros((16, 16), dtype=np.uint8)
    corrupt = tmp_path / "corrupt"
    write(corrupt / "ok.png", good)
    data = (corrupt / "ok.png").read_bytes()
    write(corrupt / "bad.png", RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    bad = (corrupt / "bad.png").read_bytes()
    (corrupt / "bad.png").write_bytes(bad[:len(bad) // 2])
    with pytest.raises(DataError, match=r"corrupt/bad.png: not a readable image"):
        load(str(corrupt))
    (corrupt / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"corrupt/bad.png: not a readable image"):
        load(str(corrupt))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images .* it is empty"):
        load(str(empty))
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="found only notes.txt"):
        load(str(empty))
    no_images = tmp_path / "classes"
    write(no_images / "a" / "1.png", good)
    (no_images / "b").mkdir()
    with pytest.raises(DataError, match="classes/b: a class folder with no images"):
        load(str(no_images))
    mixed = tmp_path / "mixed"
    (mixed / "a").mkdir(parents=True)
    (mixed / "1.png").write_bytes(data)
    with pytest.raises(DataError, match="holds both images .* and folders"):
        load(str(mixed))
    with pytest.raises(DataError, match="does not take option.* layout"):
        load(str(corrupt), layout="nhwc")
    with pytest.raises(DataError, match="does not take option.* root; allowed options: resize"):
        load(str(corrupt), root=tmp_path)


# --- .npz ----------------------------------------------------------------------------------------

def test_npz_layouts_give_the_same_dataset(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (10, 5, 6), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (10, 5, 6, 3), dtype=np.uint8)
    y = np.arange(10) % 3
    sets = []
    for name, x, expected in (("nhw", gray, gray[:, None]),
                              ("nhw1", gray[..., None], gray[:, None]),
                              ("n1hw", gray[:, None], gray[:, None]),
                              ("nhwc", rgb, rgb.transpose(0, 3, 1, 2)),
                              ("nchw", rgb.transpose(0, 3, 1, 2), rgb.transpose(0, 3, 1, 2))):
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        ds = load(str(tmp_path / f"{name}.npz"), "test")
        assert ds.classes == ("0", "1", "2")
        index = np.flatnonzero(np.isin(np.arange(10), ids_of(ds, expected)))
        assert torch.equal(ds.images, torch.from_numpy(expected[index]).float() / 255)
        assert torch.equal(ds.labels, torch.from_numpy(y[index]))
        sets.append(ds)
    for a, b in ((0, 1), (0, 2), (3, 4)):
        assert torch.equal(sets[a].images, sets[b].images)
        assert torch.equal(sets[a].labels, sets[b].labels)


def ids_of(ds: Dataset, expected: np.ndarray) -> list[int]:
    """Which rows of ``expected`` the dataset holds (every row is distinct random noise)."""
    flat = torch.from_numpy(expected).float().div(255).flatten(1)
    return [int((flat == row).all(1).nonzero()[0]) for row in ds.images.flatten(1)]


def test_npz_ambiguous_layout_float_and_class_names(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, (6, 3, 3, 3), dtype=np.uint8)
    path = tmp_path / "ambiguous.npz"
    np.savez(path, x_train=x, y_train=np.zeros(6, dtype=np.int64), x_test=x[:2],
             y_test=np.array([0, 1]), class_names=np.array(["no", "yes"]))
    with pytest.raises(DataError, match="both axis 1 and axis 3 .* layout='nhwc'"):
        load(str(path), "train")
    nhwc = load(str(path), "train", layout="nhwc")
    assert torch.equal(nhwc.images, torch.from_numpy(x.transpose(0, 3, 1, 2)).float() / 255)
    nchw = load(str(path), "test", layout="nchw")
    assert torch.equal(nchw.images, torch.from_numpy(x[:2]).float() / 255)
    assert nchw.classes == ("no", "yes") and nchw.labels.tolist() == [0, 1]
    floats = tmp_path / "float.npz"
    np.savez(floats, x_train=x / 255, y_train=np.zeros(6, dtype=np.int64), x_test=x[:2] / 255,
             y_test=np.array([0, 1]))
    as_float64 = load(str(floats), "train", layout="nhwc")
    torch.testing.assert_close(as_float64.images, nhwc.images, rtol=0, atol=1e-7)
    assert as_float64.classes == ("0", "1")
    with pytest.raises(DataError, match="does not take option.* test_fraction"):
        load(str(floats), "train", layout="nhwc", test_fraction=0.5)


def test_bad_npz(tmp_path: Path) -> None:
    x = RNG.random((4, 5, 5))
    cases = {
        "no_y": ({"x": x}, "no array y"),
        "nan": ({"x": np.where(x > 0.5, np.nan, x), "y": np.zeros(4, np.int64)}, "NaN"),
        "range": ({"x": x * 255, "y": np.zeros(4, np.int64)}, "must lie in \\[0, 1\\]"),
        "dtype": ({"x": (x * 255).astype(np.int32), "y": np.zeros(4, np.int64)},
                  "int32; images must be uint8"),
        "count": ({"x": x, "y": np.zeros(3, np.int64)}, "need 4 integer labels"),
        "mixed": ({"x": x, "y": np.array([-1, 0, 1, 0])}, "-1 for every image"),
        "neither": ({"x": RNG.random((4, 5, 5, 5)), "y": np.zeros(4, np.int64)},
                    "neither axis 1 nor axis 3"),
        "names": ({"x": x, "y": np.array([0, 1, 2, 0]), "class_names": np.array(["a", "b"])},
                  "class_names must be 3 or more"),
        "half": ({"x_train": x, "y_train": np.zeros(4, np.int64)}, "either x and y"),
        "both": ({"x": x, "y": np.zeros(4, np.int64), "x_train": x, "y_train": np.zeros(4),
                  "x_test": x, "y_test": np.zeros(4)}, "not both"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(DataError, match=message):
            load(str(tmp_path / f"{name}.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk" * 10)
    with pytest.raises(DataError, match="junk.npz: not a readable .npz archive"):
        load(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "objects.npz", x=x, y=np.array([0, "a", None, 1], dtype=object))
    with pytest.raises(DataError, match="holds Python objects"):
        load(str(tmp_path / "objects.npz"))


def test_unlabelled_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "u.npz", x=RNG.random((3, 4, 4)), y=np.full(3, -1))
    ds = load(str(tmp_path / "u.npz"))
    assert ds.classes == () and not ds.labelled and len(ds) == 3
    with pytest.raises(DataError, match="cannot be trained on"):
        load(str(tmp_path / "u.npz"), "train")


# --- references, names and paths ----------------------------------------------------------------

def test_missing_path_suggests_a_registry_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(
            "no dataset named 'fashion_mnist.npz' and no file or folder at fashion_mnist.npz "
            "(did you mean 'fashion-mnist'?)")):
        load("fashion_mnist.npz")
    with pytest.raises(DataError, match=re.escape(f"no file or folder at {tmp_path}/mnist (did "
                                                  "you mean 'mnist'?)")):
        load(str(tmp_path / "mnist"))


def test_registry_name_wins_over_a_folder_of_that_name(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    labelled_folder(tmp_path / "noise-uniform", {"a": 2})
    labelled_folder(tmp_path / "mine", {"a": 5})
    assert load("noise-uniform", n=3).images.shape == (3, 1, 28, 28)
    assert load("mine").name == "mine"  # no separator, but an existing folder
    assert load(tmp_path / "mine").name == str(tmp_path / "mine")  # a PathLike
    with pytest.raises(DataError, match="a registry name or a path, got int 3"):
        load(3)  # type: ignore[arg-type]


# --- torch Datasets ------------------------------------------------------------------------------

def test_from_torch_collates_in_batches() -> None:
    x = torch.rand(10, 3, 5, 7)
    y = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])
    ds = from_torch(TensorDataset(x, y), name="mine", batch_size=4)
    assert torch.equal(ds.images, x) and torch.equal(ds.labels, y)
    assert ds.classes == ("0", "1", "2") and ds.name == "mine" and ds.split == "test"
    named = from_torch(TensorDataset(x.double(), y), name="mine", classes=("a", "b", "c", "d"))
    assert named.classes == ("a", "b", "c", "d") and named.images.dtype == torch.float32
    with pytest.raises(DataError, match="expected float"):
        from_torch(TensorDataset((x * 255).to(torch.uint8), y), name="u8")
    with pytest.raises(DataError, match="values must lie in \\[0, 1\\]"):
        from_torch(TensorDataset(x * 2, y), name="big")
    with pytest.raises(DataError, match="each item must be a pair"):
        from_torch(TensorDataset(x), name="no labels")
    unlabelled = from_torch(TensorDataset(x, torch.full((10,), -1)), name="u")
    assert unlabelled.classes == () and not unlabelled.labelled


# --- conform, Dataset, from_uint8 ----------------------------------------------------------------

def test_conform_channels_size_and_provenance() -> None:
    rgb = torch.rand(4, 3, 6, 6)
    ds = Dataset("d", "test", rgb, torch.arange(4), ("a", "b", "c", "d"), {"transforms": ["x"]})
    gray = conform(ds, channels=1)
    explicit = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    torch.testing.assert_close(gray.images[:, 0], explicit, rtol=0, atol=1e-6)
    assert gray.provenance["transforms"] == [
        "x", "conform: RGB -> gray = 0.299R + 0.587G + 0.114B (ITU-R BT.601 luma)"]
    back = conform(gray, channels=3)
    assert back.images.shape == (4, 3, 6, 6)
    assert all(torch.equal(back.images[:, c], gray.images[:, 0]) for c in range(3))
    assert back.provenance["transforms"][-1] == ("conform: gray -> RGB by repeating the gray "
                                                 "channel (R = G = B)")
    flat = Dataset("f", "test", torch.full((2, 1, 8, 4), 0.25), torch.zeros(2, dtype=torch.long),
                   ("a",))
    resized = conform(flat, size=(3, 5))
    torch.testing.assert_close(resized.images, torch.full((2, 1, 3, 5), 0.25), rtol=0, atol=1e-6)
    assert resized.provenance["transforms"] == [
        "conform: resize 8x4 -> 3x5 (bilinear, antialiased)"]
    ramp = torch.arange(32.0).div(32).view(1, 1, 4, 8)
    cropped = conform(Dataset("r", "test", ramp, torch.zeros(1, dtype=torch.long), ("a",)),
                      size=(4, 4), fit="crop")
    assert torch.equal(cropped.images, ramp[:, :, :, 2:6])
    assert cropped.provenance["transforms"] == [
        "conform: centre crop 4x8 -> 4x4 (the aspect ratio of 4x4)"]
    assert conform(ds) is ds
    two = Dataset("t", "test", torch.rand(1, 2, 3, 3), torch.zeros(1, dtype=torch.long), ("a",))
    with pytest.raises(DataError, match="cannot convert 2 channel"):
        conform(two, channels=3)


def test_dataset_labels_and_unlabelled_sets() -> None:
    images = torch.rand(3, 1, 2, 2)
    assert not Dataset("u", "test", images, torch.full((3,), -1), ()).labelled
    assert not Dataset("p", "test", images, torch.tensor([-1, 0, 1]), ("a", "b")).labelled
    assert Dataset("l", "test", images, torch.tensor([1, 0, 1]), ("a", "b")).labelled
    with pytest.raises(DataError, match="no class names given"):
        Dataset("x", "test", images, torch.tensor([-1, 0, -1]), ())
    with pytest.raises(DataError, match="labels span \\[-2, 0\\]"):
        Dataset("x", "test", images, torch.tensor([-2, 0, 0]), ("a",))


def test_from_uint8_needs_the_layout_of_nhwc_arrays() -> None:
    nhwc = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(DataError, match="32 channels.* pass layout='nhwc'"):
        from_uint8("n", "test", nhwc, np.zeros(2), ("a",), {})
    ds = from_uint8("n", "test", nhwc, np.zeros(2), ("a",), {}, layout="nhwc")
    assert ds.in_channels == 3
    assert torch.equal(ds.images, torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255)
    nchw = from_uint8("n", "test", nhwc.transpose(0, 3, 1, 2).copy(), np.zeros(2), ("a",), {})
    assert torch.equal(nchw.images, ds.images)
