"""Each official format, written here byte by byte as its publisher specifies, read back exactly.

Files are written by the tests themselves, so every check runs offline; the pixel comparisons
recompute the expected values from the format's definition, not with the library's helpers.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from trustmap.data import formats, load
from trustmap.data.sources import CIFAR10_CLASSES, notmnist_split
from trustmap.data.transforms import crop_to_28, to_gray
from trustmap.errors import DataError

RNG = np.random.default_rng(20240607)


# ---------------------------------------------------------------------------------------------
# writers of the official formats


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """IDX: 0x0000 08 ndim, big-endian int32 dims, then the uint8 bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_split(folder: Path, split: str, n: int, gz: bool = True,
                      suffix: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    suffix = (".gz" if gz else "") if suffix is None else suffix
    images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return images, labels


def gray28_center(colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected gray [N,28,28] from the definition (integer arithmetic), and where it is a tie.

    gray = round(0.299 R + 0.587 G + 0.114 B); at an exact .5 the float computation may round
    either way, so ties are compared to within 1.
    """
    r, g, b = (colour[:, c].astype(np.int64) for c in range(3))
    thousandths = 299 * r + 587 * g + 114 * b
    gray = (thousandths + 500) // 1000
    tie = thousandths % 1000 == 500
    return gray[:, 2:30, 2:30], tie[:, 2:30, 2:30]


def assert_gray_matches(loaded: np.ndarray, colour: np.ndarray) -> None:
    expected, tie = gray28_center(colour)
    assert loaded.shape == expected.shape
    assert np.array_equal(loaded[~tie], expected[~tie])
    assert np.all(np.abs(loaded[tie] - expected[tie]) <= 1)


def as_uint8(images) -> np.ndarray:
    """Loaded float images back to their bytes (exact: every value was k / 255)."""
    scaled = images.numpy() * 255.0
    assert np.allclose(scaled, np.round(scaled), atol=1e-3)
    return np.round(scaled).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("variant", ["gz", "plain", "gzip-named-plain"])
def test_idx_reads_back_exactly(tmp_path: Path, variant: str) -> None:
    gz, suffix = {"gz": (True, ".gz"), "plain": (False, ""),
                  "gzip-named-plain": (True, "")}[variant]
    images, labels = write_mnist_split(tmp_path, "test", 7, gz=gz, suffix=suffix)
    write_mnist_split(tmp_path, "train", 3, gz=gz, suffix=suffix)
    ds = load("mnist", "test", root=tmp_path)
    assert ds.images.shape == (7, 1, 28, 28)
    assert np.array_equal(as_uint8(ds.images)[:, 0], images)
    assert np.array_equal(ds.labels.numpy(), labels.astype(np.int64))
    assert ds.classes == tuple("0123456789")
    assert ds.provenance["source"]["files"][0].endswith(f"t10k-images-idx3-ubyte{suffix}")


def test_idx_header_is_read_without_the_body(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.zeros((5, 28, 27), np.uint8), gz=True)
    assert formats.read_idx_header(path, formats.IDX_IMAGES_MAGIC) == (5, 28, 27)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    write_mnist_split(tmp_path, "test", 4)
    # A labels file where the images file should be: magic 0x801 instead of 0x803.
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(4, np.uint8), gz=True)
    with pytest.raises(DataError, match="wrong IDX magic") as info:
        load("mnist", "test", root=tmp_path)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "0x00000801" in message
    assert "trustmap data fetch mnist" in message


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    write_mnist_split(tmp_path, "test", 4)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="gzip data is truncated or corrupt") as info:
        load("mnist", "test", root=tmp_path)
    assert str(path) in str(info.value) and "delete it" in str(info.value)


def test_idx_truncated_body(tmp_path: Path) -> None:
    write_mnist_split(tmp_path, "test", 4, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-28 * 28])  # header still says 4 images
    with pytest.raises(DataError, match="truncated") as info:
        load("mnist", "test", root=tmp_path)
    assert "(4, 28, 28)" in str(info.value) and str(path) in str(info.value)


def test_idx_image_label_count_mismatch(tmp_path: Path) -> None:
    write_mnist_split(tmp_path, "test", 5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), gz=True)
    with pytest.raises(DataError, match="5 images") as info:
        load("fashion-mnist", "test", root=tmp_path)
    assert "4 labels" in str(info.value)
    assert "trustmap data fetch fashion-mnist" in str(info.value)


# ---------------------------------------------------------------------------------------------
# SVHN .mat


def write_svhn(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Official layout: X (32, 32, 3, N) uint8 indexed [row, col, channel, n]; y (N, 1), 10 = 0."""
    colour = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    digits = np.arange(n) % 10
    x = np.empty((32, 32, 3, n), np.uint8)
    for i in range(n):
        for c in range(3):
            x[:, :, c, i] = colour[i, c]
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
    scipy.io.savemat(path, {"X": x, "y": y})
    return colour, digits


def test_svhn_reads_channels_in_order(tmp_path: Path) -> None:
    colour, digits = write_svhn(tmp_path / "test_32x32.mat", 12)
    images, labels = formats.read_svhn_mat(tmp_path / "test_32x32.mat")
    assert images.shape == (12, 3, 32, 32)
    assert np.array_equal(images, colour)
    assert np.array_equal(labels, digits)


def test_svhn_loads_as_gray28(tmp_path: Path) -> None:
    colour, digits = write_svhn(tmp_path / "test_32x32.mat", 12)
    ds = load("svhn", "test", root=tmp_path)
    assert ds.images.shape == (12, 1, 28, 28)
    assert_gray_matches(as_uint8(ds.images)[:, 0], colour)
    assert np.array_equal(ds.labels.numpy(), digits)
    assert ds.classes == tuple("0123456789")
    assert any("0.299R" in step for step in ds.provenance["transforms"])
    assert any("crop='center'" in step for step in ds.provenance["transforms"])


@pytest.mark.parametrize("crop", ["seed000", "resize"])
def test_svhn_crop_option_is_applied_and_recorded(tmp_path: Path, crop: str) -> None:
    colour, _ = write_svhn(tmp_path / "test_32x32.mat", 4)
    ds = load("svhn", "test", root=tmp_path, crop=crop)
    assert np.array_equal(as_uint8(ds.images)[:, 0], crop_to_28(to_gray(colour), crop))
    assert any(f"crop={crop!r}" in step for step in ds.provenance["transforms"])


@pytest.mark.parametrize("content, fragment", [
    ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, "no variable(s) y"),
    ({"X": np.zeros((28, 28, 2), np.uint8), "y": np.ones((2, 1))},
     "X is uint8 of shape [28, 28, 2]"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))}, "y has shape [3, 1]"),
])
def test_svhn_bad_content(tmp_path: Path, content: dict, fragment: str) -> None:
    scipy.io.savemat(tmp_path / "test_32x32.mat", content)
    with pytest.raises(DataError, match="test_32x32.mat") as info:
        load("svhn", "test", root=tmp_path)
    assert fragment in str(info.value) and "trustmap data fetch svhn" in str(info.value)


@pytest.mark.parametrize("damage", ["html", "truncated-early", "truncated-late"])
def test_svhn_not_a_mat_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "test_32x32.mat"
    write_svhn(path, 5)
    data = path.read_bytes()
    path.write_bytes({"html": b"<html>mirror error page</html>" * 10,
                      "truncated-early": data[:100],
                      "truncated-late": data[: len(data) // 2]}[damage])
    # Cut late, the file still lists X but not y, which comes last.
    with pytest.raises(DataError, match="not a readable MATLAB .mat file|is truncated") as info:
        load("svhn", "test", root=tmp_path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python batches


def _py2_str(text: str) -> bytes:
    raw = text.encode("latin1")
    return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING: a Python 2 str


def py2_pickle(data: np.ndarray | None, labels: list[int], names: list[str] | None = None) -> bytes:
    """The opcodes Python 2 + numpy 1 wrote for the official batches: numpy.core globals,
    py2 str (decoded as latin1) and the raw pixels as one BINSTRING."""
    if names is not None:
        return (b"\x80\x02}(" + _py2_str("label_names") + b"](" + b"".join(map(_py2_str, names))
                + b"e" + _py2_str("num_vis") + b"M\x00\x0cu.")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str("b")
             + b"\x87R(K\x01J" + struct.pack("<i", len(data)) + b"M\x00\x0c\x86"
             + b"cnumpy\ndtype\n" + _py2_str("u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
             + b"\x89T" + struct.pack("<I", data.nbytes) + data.tobytes() + b"tb")
    return (b"\x80\x02}(" + _py2_str("batch_label") + _py2_str("testing batch")
            + _py2_str("data") + array
            + _py2_str("labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu.")


def cifar_batch(n: int, protocol: int | None) -> tuple[bytes, np.ndarray, np.ndarray]:
    """One batch as the official pickles hold it: data rows are 1024 R, 1024 G, then 1024 B.

    ``protocol`` None writes it as the genuine files are (Python 2); an int uses this Python.
    """
    colour = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = [int(v) for v in RNG.integers(0, 10, size=n)]
    data = np.concatenate([colour[:, c].reshape(n, 1024) for c in range(3)], axis=1)
    if protocol is None:
        return py2_pickle(data, labels), colour, np.array(labels)
    content = {"batch_label": "testing batch", "labels": labels, "data": data}
    return pickle.dumps(content, protocol=protocol), colour, np.array(labels)


def write_cifar(target: Path, archive: bool, names: list[str] | None = None,
                protocol: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All six batches (+ batches.meta) in cifar-10-batches-py/ or in cifar-10-python.tar.gz."""
    files, truth = {}, {}
    for i, batch in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        files[batch], *truth[batch] = cifar_batch(3 + i, protocol)
    if names is not None:
        files["batches.meta"] = py2_pickle(None, [], names) if protocol is None else \
            pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=protocol)
    write_members(target, "cifar-10-batches-py", files, archive, "cifar-10-python.tar.gz")
    return truth


def write_members(target: Path, top: str, files: dict[str, bytes], archive: bool,
                  archive_name: str) -> None:
    """Files under ``top/`` as a folder in ``target`` or as a .tar.gz archive in ``target``."""
    if not archive:
        for name, data in files.items():
            (target / top / name).parent.mkdir(parents=True, exist_ok=True)
            (target / top / name).write_bytes(data)
        return
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target / archive_name, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_cifar_reads_all_batches_in_rgb_order(tmp_path: Path, archive: bool) -> None:
    truth = write_cifar(tmp_path, archive, names=list(CIFAR10_CLASSES))
    source = tmp_path / ("cifar-10-python.tar.gz" if archive else "cifar-10-batches-py")
    train = [f"data_batch_{k}" for k in range(1, 6)]
    images, labels, names = formats.read_cifar_batches(source, train)
    assert np.array_equal(images, np.concatenate([truth[b][0] for b in train]))
    assert np.array_equal(labels, np.concatenate([truth[b][1] for b in train]))
    assert names == CIFAR10_CLASSES

    ds = load("cifar10", "test", root=tmp_path)
    assert ds.images.shape == (8, 1, 28, 28)
    assert_gray_matches(as_uint8(ds.images)[:, 0], truth["test_batch"][0])
    assert np.array_equal(ds.labels.numpy(), truth["test_batch"][1])
    assert len(load("cifar10", "train", root=tmp_path)) == 3 + 4 + 5 + 6 + 7


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_pickles_written_by_this_python(tmp_path: Path, protocol: int) -> None:
    truth = write_cifar(tmp_path, archive=False, names=list(CIFAR10_CLASSES), protocol=protocol)
    images, labels, names = formats.read_cifar_batches(tmp_path, ["test_batch"])
    assert np.array_equal(images, truth["test_batch"][0]) and names == CIFAR10_CLASSES
    assert np.array_equal(labels, truth["test_batch"][1])


def test_cifar_class_names_come_from_meta_else_standard(tmp_path: Path) -> None:
    write_cifar(tmp_path / "with", archive=False, names=[f"c{i}" for i in range(10)])
    write_cifar(tmp_path / "without", archive=True, names=None)
    with_meta = load("cifar10", "test", root=tmp_path / "with")
    assert with_meta.classes == tuple(f"c{i}" for i in range(10))
    assert load("cifar10", "test", root=tmp_path / "without").classes == CIFAR10_CLASSES


class _Payload:
    """A pickle whose loading would call ``function(argument)``."""

    def __init__(self, function, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "nested"])
def test_cifar_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, archive: bool,
                                                          payload: str) -> None:
    marker = tmp_path / "payload-ran"
    evil = {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "nested": {"data": _Payload(os.system, f"touch {marker}"), "labels": [0]},
    }[payload]
    write_cifar(tmp_path, archive)
    files = {"test_batch": pickle.dumps(evil, protocol=2)}
    if archive:
        (tmp_path / "cifar-10-python.tar.gz").unlink()
    write_members(tmp_path, "cifar-10-batches-py", files, archive, "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="refused") as info:
        load("cifar10", "test", root=tmp_path)
    assert "not a genuine CIFAR batch" in str(info.value)
    assert "test_batch" in str(info.value)
    assert not marker.exists()


def test_cifar_missing_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path, archive=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load("cifar10", "train", root=tmp_path)


def test_cifar_truncated_archive(tmp_path: Path) -> None:
    write_cifar(tmp_path, archive=True)
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz") as info:
        load("cifar10", "train", root=tmp_path)
    assert "trustmap data fetch cifar10" in str(info.value)


# ---------------------------------------------------------------------------------------------
# notMNIST_small PNG folders


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_notmnist(target: Path, archive: bool):
    """10 letter folders x 12 fonts, plus a broken and a wrongly sized PNG in the test split."""
    fonts = [f"font{i:02d}.png" for i in range(12)]
    bad_names = [name for name in (f"bad{i:02d}.png" for i in range(100))
                 if notmnist_split(name) == "test"][:2]
    files, truth = {}, {"train": [], "test": []}
    for label, letter in enumerate("ABCDEFGHIJ"):
        for font in fonts:
            image = RNG.integers(0, 256, size=(28, 28), dtype=np.uint8)
            files[f"{letter}/{font}"] = png_bytes(image)
            truth[notmnist_split(font)].append((label, font, image))
    files[f"C/{bad_names[0]}"] = png_bytes(np.zeros((28, 28), np.uint8))[:40]  # truncated
    files[f"E/{bad_names[1]}"] = png_bytes(np.zeros((20, 20), np.uint8))       # wrong size
    write_members(target, "notMNIST_small", files, archive, "notMNIST_small.tar.gz")
    return truth


def load_notmnist(root: Path, split: str) -> tuple:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load("notmnist-small", split, root=root)
    return ds, [str(w.message) for w in caught]


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_notmnist_reads_pngs_and_skips_broken_ones_once(tmp_path: Path, archive: bool) -> None:
    truth = write_notmnist(tmp_path, archive)
    for split in ("train", "test"):
        ds, messages = load_notmnist(tmp_path, split)
        expected = sorted(truth[split], key=lambda item: (item[0], item[1]))
        assert ds.images.shape == (len(expected), 1, 28, 28)
        assert np.array_equal(as_uint8(ds.images)[:, 0], np.stack([img for _, _, img in expected]))
        assert ds.labels.tolist() == [label for label, _, _ in expected]
        assert ds.classes == tuple("ABCDEFGHIJ")
        if split == "test":
            assert len(messages) == 1
            assert "skipped 2" in messages[0] and "notMNIST_small" in messages[0]
        else:
            assert messages == []
    assert len(truth["train"]) + len(truth["test"]) == 120 and truth["test"]


@pytest.mark.parametrize("folder", ["", "notMNIST_small"])
def test_png_folders_with_or_without_top_folder(tmp_path: Path, folder: str) -> None:
    truth = write_notmnist(tmp_path, archive=False)
    images, labels = formats.read_png_folders(tmp_path / folder, tuple("ABCDEFGHIJ"),
                                              keep=lambda name: name.startswith("font"))
    expected = sorted(truth["train"] + truth["test"], key=lambda item: (item[0], item[1]))
    assert np.array_equal(images, np.stack([img for _, _, img in expected]))
    assert labels.tolist() == [label for label, _, _ in expected]


def test_notmnist_truncated_archive(tmp_path: Path) -> None:
    write_notmnist(tmp_path, archive=True)
    path = tmp_path / "notMNIST_small.tar.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load("notmnist-small", "train", root=tmp_path)
    assert str(path) in str(info.value)
    assert "trustmap data fetch notmnist-small" in str(info.value)


def test_notmnist_split_is_pinned() -> None:
    """The split must never change between releases: these are fixed by the md5 rule."""
    assert [notmnist_split(f"font{i:02d}.png") for i in (0, 5, 17, 18)] == \
        ["train", "test", "test", "train"]
    assert notmnist_split("MDEtMDEtMDAudHRm.png") == "train"
