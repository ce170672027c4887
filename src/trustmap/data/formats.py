"""Readers of the official dataset file formats (IDX, SVHN .mat, CIFAR python batches, PNG
folders) and of a user's own files (single images, .npz archives).

Each reader returns uint8 images and int64 labels (or the raw arrays) and turns every way a file
can be broken into a DataError that names the file and says what to do. Nothing here downloads
or writes.

Every file is checked before it is read: it must be a regular file (a FIFO would block the
reader forever, a device such as /dev/zero never ends) no larger than the cap of its kind
below, and is then read only up to that cap, so a wrong file fails fast whatever it is.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import gzip
import importlib
import io
import math
import os
import pickle
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import scipy.io
from PIL import Image, UnidentifiedImageError
from scipy.io.matlab import MatReadError

from trustmap.errors import DataError

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)

# Caps on what one file may hold, with generous headroom over the largest official file of
# its kind (sizes in sources.py), so that a wrong file is refused before it is read.
MAX_IDX_BYTES = 1 << 29
"""512 MiB: an IDX file on disk and the data its header may announce (the largest official
IDX file, 60,000 train images, holds 47,040,000 bytes un-gzipped)."""
MAX_MAT_BYTES = 1 << 30
"""1 GiB: an SVHN .mat file (official: train_32x32.mat, 182,040,794 bytes)."""
MAX_SVHN_IMAGES = 200_000
"""Images one SVHN .mat may announce (official: 73,257 at most), checked before X (3,072 bytes
per image) is loaded, as the .mat is compressed and its header could announce any size."""
MAX_ARCHIVE_BYTES = 1 << 30
"""1 GiB: a .tar.gz read in place (official: cifar-10-python.tar.gz 170,498,071 bytes,
notMNIST_small.tar.gz 8,458,043)."""
MAX_UNPACKED_BYTES = 1 << 31
"""2 GiB: all members of such an archive together (official: about 186 MB for CIFAR-10)."""
MAX_CIFAR_BATCH_BYTES = 1 << 28
"""256 MiB: one CIFAR python batch file or archive member (official: about 31 MB each)."""
MAX_PNG_BYTES = 1 << 20
"""1 MiB: one PNG in a class folder (notMNIST_small's 28x28 PNGs are a few hundred bytes)."""
MAX_IMAGE_BYTES = 1 << 26
"""64 MiB: one image file in a user's folder (a 24-megapixel photo as PNG is about 40 MB)."""
MAX_IMAGE_PIXELS = 1 << 26
"""About 67 megapixels: what one user image may announce in its header, checked before any
pixel is decoded, as a small compressed file can announce a huge image."""
MAX_NPZ_BYTES = 1 << 34
"""16 GiB: a user's .npz file, and each array in it once decompressed (CIFAR-10's 60,000
images are 184 MB as uint8)."""

_CHUNK = 1 << 16
_FILE_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"))
# Opening a FIFO for reading blocks until a writer comes; O_NONBLOCK returns at once, so the
# re-check on the open descriptor below cannot hang either. It changes nothing for a regular file.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)


def _redo(fetch_name: str | None) -> str:
    """The standard advice for a damaged file."""
    if fetch_name:
        return f"delete it and run `trustmap data fetch {fetch_name}`"
    return "replace it with an intact copy of the official file"


def _unusable(path: Path, status: os.stat_result, max_bytes: int) -> str | None:
    """Why ``path`` (with this stat) cannot be read as a data file, or None if it can."""
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for is_kind, name in _FILE_KINDS if is_kind(status.st_mode)),
                    "a special file")
        if os.path.islink(path):
            kind += f" (via a symlink to {os.path.realpath(path)})"
        return f"is {kind}, not a regular file"
    if status.st_size == 0:
        return "is empty (0 bytes)"
    if status.st_size > max_bytes:
        return (f"is {status.st_size:,} bytes, more than the {max_bytes:,} allowed for a file "
                "of its kind")
    return None


def _open_regular(path: Path, max_bytes: int) -> BinaryIO | str:
    """``path`` open for reading if it is a regular file of 1 to ``max_bytes`` bytes, else why not.

    Checked with stat (following symlinks) before opening, as opening a FIFO blocks and opening
    a device can act on it, and again on the open descriptor in case the file was swapped.
    """
    problem = _unusable(path, os.stat(path), max_bytes)
    if problem:
        return problem
    stream = os.fdopen(os.open(path, _OPEN_FLAGS), "rb")
    problem = _unusable(path, os.fstat(stream.fileno()), max_bytes)
    if problem:
        stream.close()
        return problem
    return stream


def _open_checked(path: Path, max_bytes: int, advice: str) -> BinaryIO:
    """``path`` open for reading; a DataError saying what it is instead and what to do."""
    try:
        opened = _open_regular(path, max_bytes)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); {advice}") from exc
    if isinstance(opened, str):
        raise DataError(f"{path} {opened}; {advice}")
    return opened


def _read_up_to(stream: BinaryIO, limit: int, origin: Path | str, advice: str) -> bytearray:
    """At most ``limit`` bytes of ``stream``, in chunks: memory follows what is really there,
    never what a header promises."""
    data = bytearray()
    try:
        while len(data) < limit and (chunk := stream.read(min(_CHUNK, limit - len(data)))):
            data += chunk
    except _GZIP_ERRORS as exc:
        raise DataError(f"{origin}: the gzip data is truncated or corrupt ({exc}); "
                        f"{advice}") from exc
    except OSError as exc:
        raise DataError(f"{origin}: cannot be read ({exc}); {advice}") from exc
    return data


# --- IDX ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _idx_stream(path: Path, advice: str) -> Iterator[BinaryIO]:
    """``path`` open for reading, gunzipped if it starts with the gzip magic (whatever its name)."""
    with _open_checked(path, MAX_IDX_BYTES, advice) as raw:
        is_gzip = _read_up_to(raw, 2, path, advice) == _GZIP_MAGIC
        raw.seek(0)
        if not is_gzip:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw) as unzipped:
            yield unzipped  # type: ignore[misc]


def _idx_header(path: Path, stream: BinaryIO, magic: int, advice: str) -> tuple[int, ...]:
    """The dimensions an IDX header announces, each checked positive and their product capped."""
    kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    ndim = magic & 0xFF
    size = 4 + 4 * ndim
    header = _read_up_to(stream, size, path, advice)
    if len(header) < 4:
        raise DataError(f"{path}: only {len(header)} bytes, too short for an IDX header; "
                        f"{advice}")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
                        f"for uint8 {kind} with {ndim} dimension(s); is this the right file? "
                        f"Otherwise {advice}")
    if len(header) < size:
        raise DataError(f"{path}: truncated IDX header ({len(header)} of {size} bytes); {advice}")
    dims = struct.unpack(f">{ndim}i", header[4:])  # signed big-endian int32, as IDX defines
    if min(dims) <= 0:
        raise DataError(f"{path}: the IDX header announces dimensions {dims}, but every "
                        f"dimension must be positive: the header is corrupt; {advice}")
    # Python ints: the product cannot overflow, unlike np.prod in int64.
    nbytes = math.prod(dims)  # one byte per item: type 0x08 (uint8) is checked by the magic
    if nbytes > MAX_IDX_BYTES:
        raise DataError(f"{path}: the IDX header announces {dims} = {nbytes:,} bytes of {kind}, "
                        f"more than the {MAX_IDX_BYTES:,} any official IDX file comes near: the "
                        f"header is corrupt; {advice}")
    return dims


def _idx_body(path: Path, stream: BinaryIO, dims: tuple[int, ...], advice: str) -> np.ndarray:
    """The uint8 array after the header, which must hold exactly what the header announces."""
    expected = math.prod(dims)
    data = _read_up_to(stream, expected + 1, path, advice)
    if len(data) != expected:
        state = (f"truncated: the header announces {dims} = {expected:,} bytes of data but "
                 f"only {len(data):,} follow" if len(data) < expected else
                 f"longer than its header says: it announces {dims} = {expected:,} bytes of "
                 "data but more follow")
        raise DataError(f"{path}: IDX file is {state}; {advice}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_idx_header(path: Path, magic: int, fetch_name: str | None = None) -> tuple[int, ...]:
    """The dimensions of an IDX file, reading only its header (cheap even for 60,000 images)."""
    advice = _redo(fetch_name)
    with _idx_stream(path, advice) as stream:
        return _idx_header(path, stream, magic, advice)


def read_idx(path: Path, magic: int, fetch_name: str | None = None) -> np.ndarray:
    """A uint8 IDX array (images [N, rows, cols] or labels [N]), gzipped or not."""
    advice = _redo(fetch_name)
    with _idx_stream(path, advice) as stream:
        return _idx_body(path, stream, _idx_header(path, stream, magic, advice), advice)


def read_idx_pair(images_path: Path, labels_path: Path, fetch_name: str | None = None,
                  size: tuple[int, int] | None = None, num_classes: int | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """IDX images [N, rows, cols] uint8 and their labels [N] int64.

    Both headers are checked against each other (same N; images of ``size`` if given) before
    either body is read; labels must lie in 0..num_classes-1 if ``num_classes`` is given.
    """
    advice = _redo(fetch_name)
    with _idx_stream(images_path, advice) as images_in, \
            _idx_stream(labels_path, advice) as labels_in:
        image_dims = _idx_header(images_path, images_in, IDX_IMAGES_MAGIC, advice)
        label_dims = _idx_header(labels_path, labels_in, IDX_LABELS_MAGIC, advice)
        if image_dims[0] != label_dims[0]:
            raise DataError(f"{images_path} holds {image_dims[0]} images but {labels_path} holds "
                            f"{label_dims[0]} labels; the two files come from different releases "
                            f"or one is damaged: {advice}")
        if size is not None and image_dims[1:] != size:
            raise DataError(f"{images_path}: images are {image_dims[1]}x{image_dims[2]}, "
                            f"expected {size[0]}x{size[1]}; is this the right file? Otherwise "
                            f"{advice}")
        images = _idx_body(images_path, images_in, image_dims, advice)
        labels = _idx_body(labels_path, labels_in, label_dims, advice)
    if num_classes is not None and labels.max() >= num_classes:
        raise DataError(f"{labels_path}: labels must lie in 0..{num_classes - 1} "
                        f"({num_classes} classes), found {labels.max()}; {advice}")
    return images, labels.astype(np.int64)


# --- SVHN .mat -----------------------------------------------------------------------------------

_MAT_ERRORS = (MatReadError, ValueError, IndexError, OSError, EOFError, NotImplementedError,
               OverflowError, TypeError, zlib.error)
_MAT_NUMERIC = frozenset({"double", "single", "int8", "uint8", "int16", "uint16", "int32",
                          "uint32", "int64", "uint64"})


def _mat_call(path: Path, advice: str, read: Callable[[], Any]) -> Any:
    """``read()``, with every way scipy fails on a damaged .mat file turned into a DataError."""
    try:
        return read()
    except _MAT_ERRORS as exc:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({exc}); {advice}") from exc


def _check_svhn_variables(path: Path, variables: list[tuple[str, tuple[int, ...], str]],
                          advice: str) -> int:
    """The number of images, from the .mat's variable headers only (nothing is loaded yet)."""
    found = {name: (tuple(shape), kind) for name, shape, kind in variables}
    missing = [key for key in ("X", "y") if key not in found]
    if missing:
        raise DataError(f"{path}: no variable(s) {', '.join(missing)} in this .mat file, so it "
                        "is truncated (y comes last) or not an SVHN cropped-digits file, which "
                        f"holds X and y; {advice}")
    (x_shape, x_kind), (y_shape, y_kind) = found["X"], found["y"]
    n = x_shape[3] if len(x_shape) == 4 else 0
    if x_kind != "uint8" or x_shape[:3] != (32, 32, 3) or not 0 < n <= MAX_SVHN_IMAGES:
        raise DataError(f"{path}: X is {x_kind} of shape {list(x_shape)}, expected uint8 "
                        f"(32, 32, 3, N) with 0 < N <= {MAX_SVHN_IMAGES:,}; {advice}")
    if y_kind not in _MAT_NUMERIC or sorted(y_shape) != [1, n]:
        raise DataError(f"{path}: y has shape {list(y_shape)} and type {y_kind} but X holds {n} "
                        f"images; expected numbers of shape ({n}, 1); {advice}")
    return n


def read_svhn_mat(path: Path, fetch_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits: X (32,32,3,N) -> uint8 [N,3,32,32]; y (N,1), 10 meaning 0 -> int64."""
    advice = _redo(fetch_name)
    with _open_checked(path, MAX_MAT_BYTES, advice) as stream:
        n = _check_svhn_variables(path, _mat_call(path, advice, lambda: scipy.io.whosmat(stream)),
                                  advice)
        mat = _mat_call(path, advice,
                        lambda: scipy.io.loadmat(stream, variable_names=("X", "y")))
    x, y = mat["X"], mat["y"].reshape(n)
    if not np.isin(y, np.arange(1, 11)).all():
        raise DataError(f"{path}: y must hold the integers 1..10 (10 meaning digit 0), found "
                        f"values from {y.min()} to {y.max()}; {advice}")
    labels = y.astype(np.int64)
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


# --- CIFAR python batches -------------------------------------------------------------------------

def _numpy_attr(module: str, attr: str) -> Any:
    """``numpy._core.<module>.<attr>`` (numpy 2), falling back to ``numpy.core`` (numpy 1)."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), attr)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), attr)


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Everything a pickled dict of numpy arrays, lists and strings may reference."""
    reconstruct = _numpy_attr("multiarray", "_reconstruct")
    scalar = _numpy_attr("multiarray", "scalar")
    frombuffer = _numpy_attr("numeric", "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of bytes at protocol <= 2 go through _codecs.encode.
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers and numpy arrays and refuses every other global."""

    def __init__(self, file: BinaryIO, origin: str) -> None:
        super().__init__(file, encoding="latin1")
        self._origin = origin
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(f"{self._origin}: refused to unpickle: it references {module}.{name}, "
                            "which a genuine CIFAR batch never does, so this is not a genuine "
                            "CIFAR batch and nothing in it was run. Delete it and run "
                            "`trustmap data fetch cifar10`") from None


def _unpickle(stream: BinaryIO, origin: str) -> Any:
    """Unpickle data that came from outside, allowing only numpy arrays and built-in containers."""
    try:
        return _ArrayUnpickler(stream, origin).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError) as exc:
        raise DataError(f"{origin}: not a readable CIFAR batch pickle ({type(exc).__name__}: "
                        f"{exc}); delete it and run `trustmap data fetch cifar10`") from exc


def _tar_members(source: Path, advice: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Every member of the archive ``source``, read front to back in place (never extracted),
    with a DataError once the members announce more than MAX_UNPACKED_BYTES in all."""
    with _open_checked(source, MAX_ARCHIVE_BYTES, advice) as raw, \
            tarfile.open(fileobj=raw, mode="r|*") as tar:
        total = 0
        for member in tar:
            total += member.size
            if total > MAX_UNPACKED_BYTES:
                raise DataError(f"{source}: the archive's members hold more than "
                                f"{MAX_UNPACKED_BYTES:,} bytes, far more than the official "
                                f"archive; {advice}")
            yield tar, member


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The content of a regular member, whose size the caller has checked against its cap."""
    stream = tar.extractfile(member)
    assert stream is not None  # only regular members are read
    return stream.read()


_CIFAR_FIX = "delete it and run `trustmap data fetch cifar10`"


def _cifar_files(source: Path, wanted: set[str]) -> Iterator[tuple[str, str, bytes]]:
    """(base name, origin, content) of each wanted CIFAR batch file in a folder or .tar.gz.

    A wanted name that is there but is not a regular file of at most MAX_CIFAR_BATCH_BYTES is
    an error (there is exactly one such file, so skipping it would only hide the damage).
    """
    if source.is_dir():
        nested = source / "cifar-10-batches-py"
        folder = nested if nested.is_dir() else source
        for name in sorted(wanted):
            path = folder / name
            if os.path.lexists(path):
                with _open_checked(path, MAX_CIFAR_BATCH_BYTES, _CIFAR_FIX) as stream:
                    content = _read_up_to(stream, MAX_CIFAR_BATCH_BYTES, path, _CIFAR_FIX)
                yield name, str(path), bytes(content)
        return
    for tar, member in _tar_members(source, _CIFAR_FIX):
        base = PurePosixPath(member.name).name
        if base not in wanted:
            continue
        origin = f"{source}:{member.name}"
        if not member.isfile():
            raise DataError(f"{origin}: not a regular file in the archive; {_CIFAR_FIX}")
        if member.size > MAX_CIFAR_BATCH_BYTES:
            raise DataError(f"{origin}: {member.size:,} bytes, more than the "
                            f"{MAX_CIFAR_BATCH_BYTES:,} any official batch needs; {_CIFAR_FIX}")
        yield base, origin, _member_bytes(tar, member)


def read_cifar_batches(source: Path, batches: Sequence[str], meta: str = "batches.meta",
                       num_classes: int = 10,
                       ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """CIFAR python batches -> uint8 [N,3,32,32] (R, G, B planes), int64 labels, label names.

    ``source`` is a ``cifar-10-batches-py`` folder (or its parent) or the official .tar.gz read
    in place. The label names come from ``meta`` and are None when that file is absent; labels
    must lie in 0..num_classes-1, and ``meta`` must name exactly ``num_classes`` classes.
    """
    found: dict[str, tuple[str, Any]] = {}
    try:
        for base, origin, content in _cifar_files(source, set(batches) | {meta}):
            found[base] = (origin, _unpickle(io.BytesIO(content), origin))
    except (tarfile.TarError, OSError, *_GZIP_ERRORS) as exc:
        raise DataError(f"{source}: the CIFAR archive is truncated or corrupt ({exc}); "
                        f"{_CIFAR_FIX}") from exc
    missing = [b for b in batches if b not in found]
    if missing:
        raise DataError(f"{source}: no CIFAR batch file(s) {', '.join(missing)}; expected the "
                        f"official cifar-10-batches-py contents. {_CIFAR_FIX}")
    images, labels = zip(*(_check_cifar_batch(*found[b], num_classes) for b in batches),
                         strict=True)
    names = None
    if meta in found:
        origin, content = found[meta]
        raw = content.get("label_names") if isinstance(content, dict) else None
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw) \
                or len(raw) != num_classes:
            raise DataError(f"{origin}: batches.meta has no list of {num_classes} label_names; "
                            f"{_CIFAR_FIX}")
        names = tuple(raw)
    return np.concatenate(images), np.concatenate(labels), names


def _check_cifar_batch(origin: str, batch: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The images [N,3,32,32] and labels [N] of one unpickled batch, after checking its contents."""
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{origin}: a CIFAR batch is a dict with 'data' and 'labels'; "
                        f"{_CIFAR_FIX}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or len(data) == 0:
        shape = list(data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{origin}: 'data' must be uint8 [N, 3072] with N > 0, got {shape}; "
                        f"{_CIFAR_FIX}")
    labels = np.asarray(batch["labels"])
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{origin}: {len(data)} images but 'labels' of shape {list(labels.shape)} "
                        f"and type {labels.dtype}; {_CIFAR_FIX}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{origin}: labels must lie in 0..{num_classes - 1} ({num_classes} "
                        f"classes), found {labels.min()} to {labels.max()}; {_CIFAR_FIX}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


# --- PNG folders ---------------------------------------------------------------------------------

_PNG_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError,
               Image.DecompressionBombError)


def _decode_png(data: bytes, size: tuple[int, int]) -> np.ndarray | str:
    """A gray uint8 image of ``size``, or why the bytes are not one ("is ...").

    The size is checked from the header before any pixel is decoded, so a small file that
    announces a huge image never allocates it.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size != size:
                return f"is {img.size[0]}x{img.size[1]}, not {size[0]}x{size[1]}"
            img.load()
            return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    except _PNG_ERRORS as exc:
        return f"is not a readable PNG ({exc})"


def _png_file(path: Path) -> bytes | str:
    """The bytes of one PNG in a class folder, or why it is skipped ("is ...")."""
    try:
        opened = _open_regular(path, MAX_PNG_BYTES)
        if isinstance(opened, str):
            return opened
        with opened:  # the size just checked (<= the cap) plus one: to tell if it grew
            data = opened.read(os.fstat(opened.fileno()).st_size + 1)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return data if len(data) <= MAX_PNG_BYTES else f"is more than {MAX_PNG_BYTES:,} bytes"


def _png_members(source: Path, classes: Sequence[str], keep: Callable[[str], bool],
                 advice: str) -> Iterator[tuple[str, str, bytes | str]]:
    """(class folder, file name, bytes or why it is skipped) of every kept PNG in class folders
    of a directory or a .tar.gz.

    Entries that are not regular files or exceed MAX_PNG_BYTES are skipped, not fatal: the
    official notMNIST_small already holds a few unreadable PNGs among its ~18,700, and one bad
    entry should not cost the rest. They are never opened (a FIFO would block) and are counted
    in the reader's warning.
    """
    if source.is_dir():
        top = source if (source / classes[0]).is_dir() else source / "notMNIST_small"
        for label in classes:
            folder = top / label
            if folder.is_dir():
                for path in sorted(folder.glob("*.png")):
                    if keep(path.name):
                        yield label, path.name, _png_file(path)
        return
    for tar, member in _tar_members(source, advice):
        parts = PurePosixPath(member.name).parts
        if len(parts) < 2 or parts[-2] not in classes or not parts[-1].endswith(".png") \
                or not keep(parts[-1]):
            continue
        if not member.isfile():
            yield parts[-2], parts[-1], "is not a regular file in the archive"
        elif member.size > MAX_PNG_BYTES:
            yield parts[-2], parts[-1], (f"is {member.size:,} bytes, more than the "
                                         f"{MAX_PNG_BYTES:,} of any official PNG")
        else:
            yield parts[-2], parts[-1], _member_bytes(tar, member)


def read_png_folders(source: Path, classes: Sequence[str], keep: Callable[[str], bool],
                     size: tuple[int, int] = (28, 28), fetch_name: str | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Gray PNGs in one folder per class (a directory or a .tar.gz read in place).

    Only files whose name passes ``keep`` are read. Unreadable PNGs, PNGs of another size or
    over MAX_PNG_BYTES, and entries that are not regular files are skipped with a single
    warning that counts them. Images are sorted by (class, file name), so the result never
    depends on the order of the archive or the file system.
    """
    advice = _redo(fetch_name)
    index = {label: i for i, label in enumerate(classes)}
    decoded: list[tuple[str, str, np.ndarray]] = []
    skipped: list[str] = []
    try:
        for label, name, content in _png_members(source, classes, keep, advice):
            image = _decode_png(content, size) if isinstance(content, bytes) else content
            if isinstance(image, str):
                skipped.append(f"{label}/{name} {image}")
            else:
                decoded.append((label, name, image))
    except (tarfile.TarError, OSError, *_GZIP_ERRORS) as exc:
        raise DataError(f"{source}: the archive is truncated or corrupt ({exc}); "
                        f"{advice}") from exc
    examples = "; ".join(sorted(skipped)[:3])
    if not decoded:
        found = f" (skipped {len(skipped)}: {examples})" if skipped else ""
        raise DataError(f"{source}: no readable {size[0]}x{size[1]} PNG images in folders "
                        f"{', '.join(classes)}{found}; {advice}")
    if skipped:
        warnings.warn(f"{source}: skipped {len(skipped)} PNG file(s) that are unreadable, "
                      f"wrongly sized, too large or not regular files (e.g. {examples})",
                      stacklevel=2)
    decoded.sort(key=lambda item: (index[item[0]], item[1]))
    images = np.stack([image for _, _, image in decoded])
    labels = np.array([index[label] for label, _, _ in decoded], dtype=np.int64)
    return images, labels


# --- single images in a user's folders -----------------------------------------------------------

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""File name endings (any case) read as images; Pillow is only offered the matching decoders."""
_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
GRAY_MODES = frozenset({"1", "L", "LA"})
"""Pillow modes read as gray; every other accepted mode (palette included) counts as colour."""
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr"})
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
_IMAGE_FIX = "replace it with an intact image or remove it from the folder"


@dataclass(frozen=True)
class ImageHeader:
    """What an image file announces before a pixel is decoded."""

    mode: str
    height: int
    width: int
    alpha: bool
    """An alpha channel or a transparent colour, which decoding drops."""
    animated: bool
    """More than one frame: only the first is read."""

    @property
    def colour(self) -> bool:
        return self.mode not in GRAY_MODES


def _header(path: Path, img: Image.Image) -> ImageHeader:
    """The checked header of an opened image: an 8-bit mode, at most MAX_IMAGE_PIXELS pixels."""
    if img.mode not in GRAY_MODES | _COLOUR_MODES:
        raise DataError(f"{path}: pixel mode {img.mode} (16-bit, 32-bit or float pixels) is not "
                        "read, as scaling it to [0, 1] would be a guess; save it as 8-bit gray or "
                        "RGB")
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: announces {width}x{height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} allowed for one image; shrink it first")
    return ImageHeader(img.mode, height, width,
                       alpha=img.mode in _ALPHA_MODES or "transparency" in img.info,
                       animated=bool(getattr(img, "is_animated", False)))


def read_image_header(path: Path) -> ImageHeader:
    """The header of one image file (a PNG, JPEG, BMP, GIF or WebP), without decoding pixels."""
    with _open_checked(path, MAX_IMAGE_BYTES, _IMAGE_FIX) as stream:
        try:
            with Image.open(stream, formats=_IMAGE_FORMATS) as img:
                return _header(path, img)
        except DataError:
            raise
        except _PNG_ERRORS as exc:
            raise DataError(f"{path}: not a readable image ({exc}); {_IMAGE_FIX}") from exc


def read_image(path: Path, header: ImageHeader, colour: bool) -> np.ndarray:
    """The first frame of one image file as uint8 [H, W, 3] if ``colour`` else [H, W, 1].

    Pillow converts: gray is repeated into R = G = B, palettes are looked up, alpha is dropped.
    The file must still announce ``header`` (read earlier to choose ``colour`` and the size).
    """
    with _open_checked(path, MAX_IMAGE_BYTES, _IMAGE_FIX) as stream:
        try:
            with Image.open(stream, formats=_IMAGE_FORMATS) as img:
                if _header(path, img) != header:
                    raise DataError(f"{path}: changed while the folder was being read; "
                                    "load it again")
                img.load()
                pixels = np.asarray(img.convert("RGB" if colour else "L"), dtype=np.uint8)
        except DataError:
            raise
        except _PNG_ERRORS as exc:
            raise DataError(f"{path}: not a readable image, truncated or corrupt ({exc}); "
                            f"{_IMAGE_FIX}") from exc
    return pixels if colour else pixels[:, :, None]


# --- .npz archives of a user's arrays ------------------------------------------------------------

_NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _npz_array(path: Path, archive: Any, key: str, member: zipfile.ZipInfo) -> np.ndarray:
    """One array of an open .npz, its .npy header checked before anything is allocated: the
    reader allocates what the header announces, which must fit in what the member holds."""
    if member.file_size > MAX_NPZ_BYTES:
        raise DataError(f"{path}: array {key!r} is {member.file_size:,} bytes uncompressed, more "
                        f"than the {MAX_NPZ_BYTES:,} allowed; split it into smaller files")
    with archive.zip.open(member) as raw:
        version = np.lib.format.read_magic(raw)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise DataError(f"{path}: array {key!r} is in .npy format version {version}; save it "
                            "with np.savez / np.savez_compressed")
        shape, _, dtype = read(raw)
    if dtype.hasobject:
        raise DataError(f"{path}: array {key!r} holds Python objects ({dtype}), which are never "
                        "unpickled; save numbers (and class_names as strings, dtype 'U')")
    if math.prod(shape) * dtype.itemsize > member.file_size:
        raise DataError(f"{path}: array {key!r} announces shape {list(shape)} of {dtype}, more "
                        "than its member holds: the file is corrupt; save it again")
    return archive[key]


def read_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Those of the arrays ``keys`` that the .npz at ``path`` holds, and nothing else.

    Read with allow_pickle=False from a regular file of at most MAX_NPZ_BYTES; each array must
    hold at most MAX_NPZ_BYTES once decompressed.
    """
    fix = "save it with np.savez(path, x=images, y=labels)"
    with _open_checked(path, MAX_NPZ_BYTES, fix) as stream:
        try:
            archive = np.load(stream, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: holds a single array, not an .npz archive of named "
                                f"arrays; {fix}")
            with archive:
                members = {info.filename.removesuffix(".npy"): info
                           for info in archive.zip.infolist()}
                return {key: _npz_array(path, archive, key, members[key])
                        for key in keys if key in members}
        except DataError:
            raise
        except _NPZ_ERRORS as exc:
            raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc}); "
                            f"{fix}") from exc
