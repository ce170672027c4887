"""Every reader under bad input: a DataError naming the file and the fix, fast, nothing written.

One table of cases: each builds a broken dataset file (or a FIFO, a device, a directory where a
file should be) in tmp_path, reads it the way a user would, and expects a DataError whose message
holds the given fragments. The files are snapshotted before and after: a reader that fails must
not create, change or delete anything.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from untouched import snapshot

from trustmap.data import fetch, formats, load
from trustmap.data.sources import OfficialFile, notmnist_split
from trustmap.errors import DataError

# --------------------------------------------------------------------------------------------
# FIFOs: our readers must never open one (opening a FIFO for reading blocks until a writer
# comes). Should one be opened anyway, the watchdog opens it for writing, which releases the
# reader, so the test fails instead of hanging.

_FIFOS: list[Path] = []


def make_fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    _FIFOS.append(path)


@pytest.fixture(autouse=True)
def fifo_watchdog() -> Iterator[None]:
    released: list[Path] = []
    stop = threading.Event()

    def release() -> None:
        while not stop.wait(0.5):
            for fifo in list(_FIFOS):
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: no reader has it open, as it should be
                    continue
                released.append(fifo)
                os.close(fd)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
    _FIFOS.clear()
    assert not released, f"a reader opened {released} and blocked on it"


# --------------------------------------------------------------------------------------------
# builders of (broken) official files

RNG = np.random.default_rng(7)
PNG_NAME = next(n for n in (f"font{i:02d}.png" for i in range(100)) if notmnist_split(n) == "test")
IMAGES = "t10k-images-idx3-ubyte"
LABELS = "t10k-labels-idx1-ubyte"


def idx(dims: tuple[int, ...], body: bytes, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}i", *dims) + body


def mnist_files(root: Path, images: bytes | None = None, labels: bytes | None = None,
                n: int = 4) -> None:
    """The test split of MNIST as plain IDX files; ``images``/``labels`` replace either file."""
    good_images = idx((n, 28, 28), RNG.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
    good_labels = idx((n,), bytes(range(n)))
    (root / IMAGES).write_bytes(good_images if images is None else images)
    (root / LABELS).write_bytes(good_labels if labels is None else labels)


def mnist_with(name: str, make: Callable[[Path], object]) -> Callable[[Path], None]:
    """Build the MNIST test split, then put what ``make`` makes in place of file ``name``."""

    def build(root: Path) -> None:
        mnist_files(root)
        (root / name).unlink()
        make(root / name)

    return build


def to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def make_dir(path: Path) -> None:
    path.mkdir()


def make_empty(path: Path) -> None:
    path.write_bytes(b"")


def load_mnist(root: Path) -> object:
    return load("mnist", "test", root=root)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_announcing(width: int, height: int) -> bytes:
    """A small PNG whose header announces a huge gray image (its pixel data is cut short)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(bytes(1000))) + png_chunk(b"IEND", b""))


def oversized_png() -> bytes:
    """A valid 28x28 PNG followed by padding, one byte over the cap: decoders ignore the tail."""
    data = png(np.zeros((28, 28), np.uint8))
    return data + bytes(formats.MAX_PNG_BYTES + 1 - len(data))


def in_letter_folder(make: Callable[[Path], object]) -> Callable[[Path], None]:
    """Build notMNIST_small/A/ holding one test-split PNG entry, made by ``make``."""

    def build(root: Path) -> None:
        (root / "notMNIST_small" / "A").mkdir(parents=True)
        make(root / "notMNIST_small" / "A" / PNG_NAME)

    return build


def write(content: bytes) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(content)


def notmnist_archive(root: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(root / "notMNIST_small.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"notMNIST_small/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def load_notmnist(root: Path) -> object:
    return load("notmnist-small", "test", root=root)


def svhn_file(root: Path, x: np.ndarray | None = None, y: np.ndarray | None = None,
              n: int = 4) -> None:
    x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8) if x is None else x
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1) if y is None else y
    scipy.io.savemat(root / "test_32x32.mat", {"X": x, "y": y})


def load_svhn(root: Path) -> object:
    return load("svhn", "test", root=root)


def cifar_batch(root: Path, data: np.ndarray, labels: list[int],
                names: list[str] | None = None) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": labels}, 4))
    if names is not None:
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, 4))


def cifar_batch_made_by(make: Callable[[Path], object]) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        (root / "cifar-10-batches-py").mkdir()
        make(root / "cifar-10-batches-py" / "test_batch")

    return build


def cifar_data(n: int, width: int = 3072) -> np.ndarray:
    return RNG.integers(0, 256, (n, width), dtype=np.uint8)


def load_cifar(root: Path) -> object:
    return load("cifar10", "test", root=root)


def sparse_file(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk space (and no time) to make."""
    with open(path, "wb") as out:
        out.truncate(size)


def served(make_earlier: Callable[[Path], object]) -> Callable[[Path], None]:
    """Build the file a fake mirror serves (a file:// URL: no network) and, made by
    ``make_earlier``, what a fetch before left at its name in the cache."""

    def build(root: Path) -> None:
        (root / "served").mkdir()
        (root / "served" / "a.bin").write_bytes(b"data" * 100)
        (root / "cache" / "mnist").mkdir(parents=True)
        make_earlier(root / "cache" / "mnist" / "a.bin")

    return build


def fetch_a(root: Path, md5: str | None) -> object:
    data = (root / "served" / "a.bin").read_bytes()
    spec = OfficialFile("a.bin", (root / "served" / "a.bin").as_uri(), len(data), md5)
    return fetch("mnist", root / "cache", progress=False, sources=[spec])


# --------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], None]
    read: Callable[[Path], object]
    fragments: tuple[str, ...]


MNIST_FIX = "trustmap data fetch mnist"
NOTMNIST_FIX = "trustmap data fetch notmnist-small"
SVHN_FIX = "trustmap data fetch svhn"
CIFAR_FIX = "trustmap data fetch cifar10"
BAD_PNG = f"A/{PNG_NAME}"
GOOD_PNG = png(np.zeros((28, 28), np.uint8))

CASES = [
    # -- notMNIST PNG folders: a bad entry is skipped (and named); none left is the error
    Case("png-fifo", in_letter_folder(make_fifo), load_notmnist,
         (BAD_PNG, "FIFO", NOTMNIST_FIX)),
    Case("png-symlink-to-dev-zero", in_letter_folder(to_dev_zero), load_notmnist,
         (BAD_PNG, "character device", "/dev/zero", NOTMNIST_FIX)),
    Case("png-directory", in_letter_folder(make_dir), load_notmnist,
         (BAD_PNG, "a directory", NOTMNIST_FIX)),
    Case("png-empty", in_letter_folder(make_empty), load_notmnist,
         (BAD_PNG, "empty", NOTMNIST_FIX)),
    Case("png-oversized", in_letter_folder(write(oversized_png())), load_notmnist,
         (BAD_PNG, f"more than the {formats.MAX_PNG_BYTES:,}", NOTMNIST_FIX)),
    Case("png-announces-9000x9000", in_letter_folder(write(png_announcing(9000, 9000))),
         load_notmnist, (BAD_PNG, "9000x9000, not 28x28", NOTMNIST_FIX)),
    Case("png-tar-member-oversized", lambda p: notmnist_archive(p, {BAD_PNG: oversized_png()}),
         load_notmnist, (BAD_PNG, f"more than the {formats.MAX_PNG_BYTES:,}", NOTMNIST_FIX)),
    Case("png-archive-is-fifo", lambda p: make_fifo(p / "notMNIST_small.tar.gz"), load_notmnist,
         ("notMNIST_small.tar.gz", "FIFO", NOTMNIST_FIX)),
    # -- IDX
    Case("idx-fifo", mnist_with(IMAGES, make_fifo), load_mnist, (IMAGES, "FIFO", MNIST_FIX)),
    Case("idx-header-only-fifo", mnist_with(IMAGES, make_fifo),
         lambda p: formats.read_idx_header(p / IMAGES, formats.IDX_IMAGES_MAGIC, "mnist"),
         (IMAGES, "FIFO", MNIST_FIX)),
    Case("idx-symlink-to-dev-zero", mnist_with(LABELS, to_dev_zero), load_mnist,
         (LABELS, "character device", "/dev/zero", MNIST_FIX)),
    Case("idx-directory", mnist_with(IMAGES, make_dir), load_mnist,
         (IMAGES, "a directory", MNIST_FIX)),
    Case("idx-empty-file", mnist_with(IMAGES, make_empty), load_mnist,
         (IMAGES, "empty", MNIST_FIX)),
    Case("idx-empty-gzip", lambda p: mnist_files(p, images=gzip.compress(b"")), load_mnist,
         (IMAGES, "too short for an IDX header", MNIST_FIX)),
    Case("idx-oversized-file",
         mnist_with(IMAGES, lambda path: sparse_file(path, formats.MAX_IDX_BYTES + 1)),
         load_mnist, (IMAGES, f"more than the {formats.MAX_IDX_BYTES:,}", MNIST_FIX)),
    Case("idx-wrong-magic", lambda p: mnist_files(p, images=idx((4, 28, 28), bytes(3136), 0x0D)),
         load_mnist, (IMAGES, "wrong IDX magic number 0x00000d03", MNIST_FIX)),
    Case("idx-truncated-in-magic", lambda p: mnist_files(p, images=b"\x00\x00\x08"), load_mnist,
         (IMAGES, "too short for an IDX header", MNIST_FIX)),
    Case("idx-truncated-in-dims", lambda p: mnist_files(p, images=idx((4, 28, 28), b"")[:10]),
         load_mnist, (IMAGES, "truncated IDX header (10 of 16 bytes)", MNIST_FIX)),
    Case("idx-truncated-in-data", lambda p: mnist_files(p, images=idx((4, 28, 28), bytes(3000))),
         load_mnist, (IMAGES, "truncated", "3,136", MNIST_FIX)),
    Case("idx-gzip-longer-than-header",
         lambda p: mnist_files(p, images=gzip.compress(idx((4, 28, 28), bytes(8 << 20)), 1)),
         load_mnist, (IMAGES, "longer than its header says", MNIST_FIX)),
    Case("idx-negative-dims", lambda p: mnist_files(p, images=idx((-1, -28, 28), bytes(784))),
         load_mnist, (IMAGES, "(-1, -28, 28)", "must be positive", MNIST_FIX)),
    Case("idx-zero-images",
         lambda p: mnist_files(p, images=idx((0, 28, 28), b""), labels=idx((0,), b"")),
         load_mnist, (IMAGES, "must be positive", MNIST_FIX)),
    Case("idx-dims-overflow-int64", lambda p: mnist_files(p, images=idx((2**30, 2**30, 16), b"")),
         load_mnist, (IMAGES, "header is corrupt", MNIST_FIX)),
    Case("idx-dims-over-cap", lambda p: mnist_files(p, images=idx((2**31 - 1, 28, 28), b"")),
         load_mnist, (IMAGES, "header is corrupt", MNIST_FIX)),
    Case("idx-wrong-image-size", lambda p: mnist_files(p, images=idx((4, 28, 27), bytes(3024))),
         load_mnist, (IMAGES, "28x27, expected 28x28", MNIST_FIX)),
    Case("idx-labels-out-of-range",
         lambda p: mnist_files(p, labels=idx((4,), bytes([0, 3, 12, 9]))),
         load_mnist, (LABELS, "0..9", "found 12", MNIST_FIX)),
    Case("idx-count-mismatch", lambda p: mnist_files(p, labels=idx((3,), bytes(3))), load_mnist,
         (IMAGES, "4 images", "3 labels", MNIST_FIX)),
    # -- SVHN .mat
    Case("svhn-labels-all-zero", lambda p: svhn_file(p, y=np.zeros((4, 1), np.uint8)), load_svhn,
         ("test_32x32.mat", "1..10", "from 0 to 0", SVHN_FIX)),
    Case("svhn-labels-fractional", lambda p: svhn_file(p, y=np.full((4, 1), 1.5)), load_svhn,
         ("test_32x32.mat", "1..10", SVHN_FIX)),
    Case("svhn-y-count-mismatch", lambda p: svhn_file(p, y=np.ones((5, 1), np.uint8)),
         load_svhn, ("test_32x32.mat", "y has shape [5, 1]", "X holds 4 images", SVHN_FIX)),
    Case("svhn-x-wrong-shape", lambda p: svhn_file(p, x=np.zeros((32, 32, 1, 4), np.uint8)),
         load_svhn, ("test_32x32.mat", "shape [32, 32, 1, 4]", SVHN_FIX)),
    Case("svhn-x-not-uint8", lambda p: svhn_file(p, x=np.zeros((32, 32, 3, 4))),
         load_svhn, ("test_32x32.mat", "X is double", SVHN_FIX)),
    Case("svhn-y-text", lambda p: svhn_file(p, y=np.array(["abcd"])), load_svhn,
         ("test_32x32.mat", "type char", SVHN_FIX)),
    Case("svhn-fifo", lambda p: make_fifo(p / "test_32x32.mat"), load_svhn,
         ("test_32x32.mat", "FIFO", SVHN_FIX)),
    Case("svhn-empty-file", lambda p: make_empty(p / "test_32x32.mat"), load_svhn,
         ("test_32x32.mat", "empty", SVHN_FIX)),
    Case("svhn-oversized-file",
         lambda p: sparse_file(p / "test_32x32.mat", formats.MAX_MAT_BYTES + 1), load_svhn,
         ("test_32x32.mat", f"more than the {formats.MAX_MAT_BYTES:,}", SVHN_FIX)),
    # -- CIFAR python batches
    Case("cifar-data-wrong-shape", lambda p: cifar_batch(p, cifar_data(4, 1024), [0, 1, 2, 3]),
         load_cifar, ("test_batch", "uint8 [N, 3072]", CIFAR_FIX)),
    Case("cifar-labels-out-of-range", lambda p: cifar_batch(p, cifar_data(4), [0, 10, 11, 3]),
         load_cifar, ("test_batch", "0..9", CIFAR_FIX)),
    Case("cifar-labels-negative", lambda p: cifar_batch(p, cifar_data(3), [0, -1, 2]),
         load_cifar, ("test_batch", "0..9", CIFAR_FIX)),
    Case("cifar-label-count-mismatch", lambda p: cifar_batch(p, cifar_data(4), [0, 1, 2]),
         load_cifar, ("test_batch", "4 images", CIFAR_FIX)),
    Case("cifar-empty-batch", lambda p: cifar_batch(p, cifar_data(0), []), load_cifar,
         ("test_batch", "N > 0", CIFAR_FIX)),
    Case("cifar-meta-with-3-names",
         lambda p: cifar_batch(p, cifar_data(4), [0, 1, 2, 9], ["a", "b", "c"]), load_cifar,
         ("batches.meta", "10 label_names", CIFAR_FIX)),
    Case("cifar-batch-is-fifo", cifar_batch_made_by(make_fifo), load_cifar,
         ("test_batch", "FIFO", CIFAR_FIX)),
    Case("cifar-archive-is-fifo", lambda p: make_fifo(p / "cifar-10-python.tar.gz"), load_cifar,
         ("cifar-10-python.tar.gz", "FIFO", CIFAR_FIX)),
    Case("cifar-archive-oversized",
         lambda p: sparse_file(p / "cifar-10-python.tar.gz", formats.MAX_ARCHIVE_BYTES + 1),
         load_cifar, ("cifar-10-python.tar.gz", f"more than the {formats.MAX_ARCHIVE_BYTES:,}",
                      CIFAR_FIX)),
    # -- fetch: a download that does not verify, or cannot be put in place, changes nothing
    Case("fetch-wrong-checksum", served(write(b"data" * 100)), lambda p: fetch_a(p, md5="0" * 32),
         ("a.bin", "md5", "nothing was kept", "does not verify either", "delete it")),
    Case("fetch-directory-in-the-way", served(make_dir), lambda p: fetch_a(p, md5=None),
         ("a.bin", "in the way", MNIST_FIX)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_file_is_a_clear_data_error(case: Case, tmp_path: Path) -> None:
    case.build(tmp_path)
    before = snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a skipped PNG also warns; the error is what counts
        with pytest.raises(DataError) as info:
            case.read(tmp_path)
    message = str(info.value)
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert snapshot(tmp_path) == before


def test_png_folder_keeps_good_images_and_names_every_skipped_entry(tmp_path: Path) -> None:
    """In a folder of thousands of PNGs, a bad entry is skipped, counted and named, not fatal."""
    folder = tmp_path / "notMNIST_small" / "A"
    folder.mkdir(parents=True)
    bad = [n for n in (f"bad{i:02d}.png" for i in range(100)) if notmnist_split(n) == "test"][:4]
    (folder / PNG_NAME).write_bytes(GOOD_PNG)
    make_fifo(folder / bad[0])
    (folder / bad[1]).symlink_to("/dev/zero")
    (folder / bad[2]).mkdir()
    (folder / bad[3]).write_bytes(oversized_png())
    before = snapshot(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_notmnist(tmp_path)
    assert len(dataset) == 1
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 4" in message
    assert snapshot(tmp_path) == before
