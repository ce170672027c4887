"""Readers of the official dataset file formats: IDX, SVHN .mat, CIFAR python batches, PNG folders.

Each reader returns uint8 images and int64 labels and turns every way a file can be broken
into a DataError that names the file and says what to do. Nothing here downloads or writes.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import importlib
import io
import pickle
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
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


def _redo(path: Path, fetch_name: str | None) -> str:
    """The standard advice for a damaged file."""
    if fetch_name:
        return f"delete it and run `trustmap data fetch {fetch_name}`"
    return "replace it with an intact copy of the official file"


def _read_bytes(path: Path, fetch_name: str | None, max_bytes: int | None = None) -> bytes:
    """The file's content, gunzipped if it starts with the gzip magic (whatever its name)."""
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=raw) if is_gzip else raw
            return stream.read() if max_bytes is None else stream.read(max_bytes)
    except _GZIP_ERRORS as exc:
        raise DataError(f"{path}: the gzip data is truncated or corrupt ({exc}); "
                        f"{_redo(path, fetch_name)}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc


def _parse_idx_header(path: Path, data: bytes, magic: int,
                      fetch_name: str | None) -> tuple[int, ...]:
    """The dimensions an IDX header announces, after checking its magic number."""
    kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise DataError(f"{path}: only {len(data)} bytes, too short for an IDX header; "
                        f"{_redo(path, fetch_name)}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
                        f"for uint8 {kind}; is this the right file? Otherwise "
                        f"{_redo(path, fetch_name)}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes); "
                        f"{_redo(path, fetch_name)}")
    return tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))


def read_idx_header(path: Path, magic: int, fetch_name: str | None = None) -> tuple[int, ...]:
    """The dimensions of an IDX file, reading only its header (cheap even for 60,000 images)."""
    ndim = magic & 0xFF
    return _parse_idx_header(path, _read_bytes(path, fetch_name, 4 + 4 * ndim), magic, fetch_name)


def read_idx(path: Path, magic: int, fetch_name: str | None = None) -> np.ndarray:
    """A uint8 IDX array (images [N, rows, cols] or labels [N]), gzipped or not."""
    data = _read_bytes(path, fetch_name)
    dims = _parse_idx_header(path, data, magic, fetch_name)
    offset = 4 + 4 * len(dims)
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        state = "truncated" if len(data) - offset < expected else "longer than its header says"
        raise DataError(f"{path}: IDX file is {state}: the header announces {dims} = {expected} "
                        f"bytes of data but {len(data) - offset} follow; {_redo(path, fetch_name)}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=offset).reshape(dims).copy()


def read_idx_pair(images_path: Path, labels_path: Path,
                  fetch_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """IDX images [N, rows, cols] uint8 and their labels [N] int64, checked to match in number."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC, fetch_name)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC, fetch_name).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels; the two files come from different releases or one "
                        f"is damaged: {_redo(images_path, fetch_name)}")
    return images, labels


def read_svhn_mat(path: Path, fetch_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits: X (32,32,3,N) -> uint8 [N,3,32,32]; y (N,1), 10 meaning 0 -> int64."""
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except (MatReadError, ValueError, IndexError, OSError, EOFError, NotImplementedError,
            zlib.error) as exc:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({exc}); "
                        f"{_redo(path, fetch_name)}") from exc
    missing = [key for key in ("X", "y") if key not in mat]
    if missing:
        raise DataError(f"{path}: no variable(s) {', '.join(missing)} in this .mat file; an SVHN "
                        f"cropped-digits file holds X and y. {_redo(path, fetch_name)}")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] == 0:
        raise DataError(f"{path}: X is {x.dtype} of shape {list(x.shape)}, expected uint8 "
                        f"(32, 32, 3, N) with N > 0; {_redo(path, fetch_name)}")
    n = x.shape[3]
    if y.size != n or y.ndim not in (1, 2):
        raise DataError(f"{path}: y has shape {list(y.shape)} but X holds {n} images; expected "
                        f"y of shape ({n}, 1). {_redo(path, fetch_name)}")
    labels = y.reshape(n).astype(np.int64)
    if not np.array_equal(labels, y.reshape(n)) or labels.min() < 0 or labels.max() > 10:
        raise DataError(f"{path}: y must hold the integers 1..10 (10 meaning digit 0); "
                        f"{_redo(path, fetch_name)}")
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


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
            IndexError, KeyError) as exc:
        raise DataError(f"{origin}: not a readable CIFAR batch pickle ({type(exc).__name__}: "
                        f"{exc}); delete it and run `trustmap data fetch cifar10`") from exc


def _cifar_streams(source: Path, wanted: set[str]) -> Iterator[tuple[str, str, BinaryIO]]:
    """(base name, origin, stream) for each wanted CIFAR batch file in a folder or .tar.gz."""
    if source.is_dir():
        nested = source / "cifar-10-batches-py"
        folder = nested if nested.is_dir() else source
        for name in sorted(wanted):
            path = folder / name
            if path.is_file():
                with open(path, "rb") as stream:
                    yield name, str(path), stream
        return
    # Stream mode reads the archive once, front to back, and never writes to disk.
    with tarfile.open(source, mode="r|*") as tar:
        for member in tar:
            base = PurePosixPath(member.name).name
            if member.isfile() and base in wanted:
                stream = tar.extractfile(member)
                if stream is not None:
                    yield base, f"{source}:{member.name}", stream


def read_cifar_batches(source: Path, batches: Sequence[str], meta: str = "batches.meta",
                       ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """CIFAR python batches -> uint8 [N,3,32,32] (R, G, B planes), int64 labels, label names.

    ``source`` is a ``cifar-10-batches-py`` folder (or its parent) or the official .tar.gz read
    in place. The label names come from ``meta`` and are None when that file is absent.
    """
    found: dict[str, tuple[str, Any]] = {}
    try:
        for base, origin, stream in _cifar_streams(source, set(batches) | {meta}):
            found[base] = (origin, _unpickle(stream, origin))
    except (tarfile.TarError, OSError, *_GZIP_ERRORS) as exc:
        raise DataError(f"{source}: the CIFAR archive is truncated or corrupt ({exc}); "
                        "delete it and run `trustmap data fetch cifar10`") from exc
    missing = [b for b in batches if b not in found]
    if missing:
        raise DataError(f"{source}: no CIFAR batch file(s) {', '.join(missing)}; expected the "
                        "official cifar-10-batches-py contents. Delete it and run "
                        "`trustmap data fetch cifar10`")
    images, labels = zip(*(_check_cifar_batch(*found[b]) for b in batches), strict=True)
    names = None
    if meta in found:
        origin, content = found[meta]
        raw = content.get("label_names") if isinstance(content, dict) else None
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
            raise DataError(f"{origin}: batches.meta has no list of label_names; "
                            "delete it and run `trustmap data fetch cifar10`")
        names = tuple(raw)
    return np.concatenate(images), np.concatenate(labels), names


def _check_cifar_batch(origin: str, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """The images [N,3,32,32] and labels [N] of one unpickled batch, after checking its contents."""
    fix = "delete it and run `trustmap data fetch cifar10`"
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{origin}: a CIFAR batch is a dict with 'data' and 'labels'; {fix}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        shape = list(data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{origin}: 'data' must be uint8 [N, 3072], got {shape}; {fix}")
    labels = np.asarray(batch["labels"])
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{origin}: {len(data)} images but 'labels' of shape {list(labels.shape)} "
                        f"and type {labels.dtype}; {fix}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


_PNG_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError,
               Image.DecompressionBombError)


def _decode_png(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """A gray uint8 image of ``size``, or None if the bytes are not such an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.size != size:
                return None
            return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    except _PNG_ERRORS:
        return None


def _png_members(source: Path, classes: Sequence[str]) -> Iterator[tuple[str, str, bytes]]:
    """(class folder, file name, bytes) of every PNG in class folders in a directory or .tar.gz."""
    if source.is_dir():
        top = source if (source / classes[0]).is_dir() else source / "notMNIST_small"
        for label in classes:
            folder = top / label
            if folder.is_dir():
                for path in sorted(folder.glob("*.png")):
                    yield label, path.name, path.read_bytes()
        return
    with tarfile.open(source, mode="r|*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.isfile() and len(parts) >= 2 and parts[-2] in classes \
                    and parts[-1].endswith(".png"):
                stream = tar.extractfile(member)
                if stream is not None:
                    yield parts[-2], parts[-1], stream.read()


def read_png_folders(source: Path, classes: Sequence[str], keep: Callable[[str], bool],
                     size: tuple[int, int] = (28, 28), fetch_name: str | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Gray PNGs in one folder per class (a directory or a .tar.gz read in place).

    Only files whose name passes ``keep`` are decoded. Unreadable PNGs and PNGs of another size
    are skipped with a single warning that counts them. Images are sorted by (class, file name),
    so the result never depends on the order of the archive or the file system.
    """
    index = {label: i for i, label in enumerate(classes)}
    decoded: list[tuple[str, str, np.ndarray]] = []
    skipped: list[str] = []
    try:
        for label, name, data in _png_members(source, classes):
            if keep(name):
                image = _decode_png(data, size)
                if image is None:
                    skipped.append(f"{label}/{name}")
                else:
                    decoded.append((label, name, image))
    except (tarfile.TarError, OSError, *_GZIP_ERRORS) as exc:
        raise DataError(f"{source}: the archive is truncated or corrupt ({exc}); "
                        f"{_redo(source, fetch_name)}") from exc
    if skipped:
        warnings.warn(f"{source}: skipped {len(skipped)} unreadable or wrongly sized PNG file(s) "
                      f"(e.g. {', '.join(sorted(skipped)[:3])})", stacklevel=2)
    if not decoded:
        raise DataError(f"{source}: no readable {size[0]}x{size[1]} PNG images in folders "
                        f"{', '.join(classes)}; {_redo(source, fetch_name)}")
    decoded.sort(key=lambda item: (index[item[0]], item[1]))
    images = np.stack([image for _, _, image in decoded])
    labels = np.array([index[label] for label, _, _ in decoded], dtype=np.int64)
    return images, labels
