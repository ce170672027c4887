"""Data references beyond the registry: a folder of images, an .npz file, a torch Dataset.

``trustmap.data.load`` hands every reference that is a path to ``load_path``:

- ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (ImageFolder): two splits; the class
  folders must be the same in both. Anything else at the top of ROOT is ignored (and recorded).
- ``ROOT/<class>/*``: one labelled set, divided into train and test by a seeded ratio.
- ``ROOT/*`` images only: one *unlabelled* set (labels -1, ``classes=()``), e.g. production
  images to audit or an OOD set; it has only a test split, as it cannot be trained on.
- ``FILE.npz`` with ``x`` and ``y`` (one split, divided like class folders) or ``x_train``,
  ``y_train``, ``x_test``, ``y_test``; optional ``class_names``; ``y`` all -1 is unlabelled.

Class names are the class folder names, sorted; images are read in (class, file name) order.
Hidden entries (a leading dot) are skipped. Other non-image files are ignored and counted in the
provenance, and listed in the error only when a folder holds no image at all, so a README beside
the images does not stop a load but an empty or mistaken folder says what it found. A folder
that mixes images and sub-folders, or a class folder with sub-folders, is an error: which of
them is meant is never guessed. EXIF orientation is not applied (as in torchvision).

Images keep their size unless ``resize=[H, W]`` is given (bilinear, antialiased, batched); they
are gray if every file is gray, else RGB (gray files repeated into R = G = B, palettes looked up,
alpha dropped), decided over the whole folder so that both splits get the same channels.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from torch.utils.data import DataLoader, default_collate

from trustmap.data import formats
from trustmap.data.dataset import LAYOUTS, SPLITS, Dataset, to_nchw
from trustmap.data.transforms import check_size, resize
from trustmap.errors import DataError

OPTIONS = ("resize", "layout", "test_fraction", "seed")
"""The options ``load`` takes for a path."""
TEST_FRACTION = 0.2
"""The share of a one-split set that goes to test unless option ``test_fraction`` says."""
CHUNK = 256
"""Images decoded, converted and resized at a time: bounds memory beyond the result."""
MAX_SPLIT_BYTES = 1 << 34
"""16 GiB: the float32 images of one split held in memory, checked before it is allocated."""
_HOW = ", ".join(formats.IMAGE_SUFFIXES)
_SPLIT_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_ARRAYS = ("x", "y", *_SPLIT_ARRAYS, "class_names")
_MAX_LISTED = 10


def is_path(ref: str | os.PathLike[str]) -> bool:
    """Whether ``ref`` reads as a path: a PathLike, or a str that has a path separator, ends
    in .npz or names an existing file or folder. The catalog asks only for names that are not
    registry names, so a folder called 'mnist' in the working directory never hides MNIST."""
    if not isinstance(ref, str):
        return isinstance(ref, os.PathLike)
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    return (any(sep in ref for sep in separators) or ref.lower().endswith(".npz")
            or os.path.lexists(os.path.expanduser(ref)))


def load_path(ref: str | os.PathLike[str], split: str = "test", resize: Sequence[int] | None = None,
              layout: str | None = None, test_fraction: float | None = None,
              seed: int | None = None) -> Dataset:
    """``split`` of the folder or .npz at ``ref``, named ``ref`` as given (see the module doc).

    ``resize`` [H, W] resizes every image; ``layout`` ('nhwc' or 'nchw') says how a 4-D .npz
    array is ordered when its shape does not; ``test_fraction`` (default 0.2) and ``seed``
    (default 0) divide a labelled one-split set. An option the data cannot use is refused.
    """
    name = os.fspath(ref)
    path = Path(name).expanduser()
    given = {key: value for key, value in (("layout", layout), ("test_fraction", test_fraction),
                                           ("seed", seed)) if value is not None}
    size = check_size(resize, f"dataset {name!r}: option resize") if resize is not None else None
    if layout is not None and layout not in LAYOUTS:
        raise DataError(f"dataset {name!r}: unknown layout {layout!r}; choose one of "
                        f"{', '.join(LAYOUTS)}")
    divide = _Divide(_fraction(name, test_fraction), _seed(name, seed))
    if path.is_dir():
        _refuse(name, given, ("layout",), "is a folder of images")
        return _load_folder(name, path, split, size, divide, given)
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path} is a file but not an .npz; a dataset is a folder of images "
                        f"({_HOW}) or an .npz holding x and y")
    return _load_npz(name, path, split, size, layout, divide, given)


@dataclass(frozen=True)
class _Divide:
    """How a one-split set is divided into train and test."""

    test_fraction: float
    seed: int


def _fraction(name: str, value: Any) -> float:
    if value is None:
        return TEST_FRACTION
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not 0 < value < 1:
        raise DataError(f"dataset {name!r}: option test_fraction must be a number strictly "
                        f"between 0 and 1, got {value!r}; e.g. 0.2")
    return float(value)


def _seed(name: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"dataset {name!r}: option seed must be an integer >= 0, got {value!r}")
    return int(value)


def _refuse(name: str, given: dict[str, Any], options: Sequence[str], why: str) -> None:
    """A DataError for each of ``options`` given although the data (which ``why``) ignores it."""
    found = [option for option in options if option in given]
    if found:
        raise DataError(f"dataset {name!r} does not take option(s) {', '.join(found)}: it {why}; "
                        "leave them out")


def _check_memory(name: str, n: int, channels: int, size: tuple[int, int]) -> None:
    nbytes = 4 * n * channels * size[0] * size[1]
    if nbytes > MAX_SPLIT_BYTES:
        raise DataError(f"dataset {name!r}: {n:,} images of {channels}x{size[0]}x{size[1]} take "
                        f"{nbytes / 2**30:.1f} GiB as float32, more than the "
                        f"{MAX_SPLIT_BYTES / 2**30:.0f} GiB one split may; pass resize=[H, W] "
                        "to shrink them, or split the data into smaller sets")


def _to_float(batch: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (divided by 255) or float [n, C, H, W] as float32 in [0, 1], resized to ``size``."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch))
    tensor = tensor.float().div_(255.0) if batch.dtype == np.uint8 else tensor.float()
    return tensor if tuple(tensor.shape[-2:]) == size else resize(tensor, size)


def _split_index(name: str, labels: np.ndarray, split: str,
                 divide: _Divide) -> tuple[np.ndarray, dict[str, Any]]:
    """The positions of ``split`` in a labelled one-split set, and the record of the division.

    Stratified: within each class a seeded permutation puts the first round(n_k * fraction)
    images in test, so every class keeps its share in both splits; a plain random cut can
    leave a small class out of test (its accuracy unmeasured) or out of train. Vectorised,
    deterministic for a seed, and the two splits are disjoint and cover the set.
    """
    rng = np.random.default_rng(divide.seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # class by class, shuffled within
    counts = np.bincount(labels)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - np.repeat(starts, counts)
    is_test = rank < np.floor(counts * divide.test_fraction + 0.5).astype(np.int64)[labels]
    n_test = int(is_test.sum())
    if n_test in (0, len(labels)):
        empty = "test" if n_test == 0 else "train"
        raise DataError(f"dataset {name!r}: test_fraction={divide.test_fraction} of "
                        f"{len(labels)} images leaves the {empty} split empty; change "
                        "test_fraction or add images")
    record = {"rule": "stratified: within each class, a seeded permutation; the first "
                      "round(n_class * test_fraction) images are test, the rest train",
              "test_fraction": divide.test_fraction, "seed": divide.seed,
              "counts": {"train": len(labels) - n_test, "test": n_test}}
    return np.flatnonzero(is_test if split == "test" else ~is_test), record


def _class_counts(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    return {name: int(count) for name, count in zip(classes, counts, strict=True)}


def _select(name: str, labels: np.ndarray, split: str, divide: _Divide, given: dict[str, Any],
            what: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The positions of ``split`` in a one-split set ``what`` describes, and the record.

    Unlabelled sets (every label -1) have only a test split, which is all of them.
    """
    if (labels >= 0).all():
        return _split_index(name, labels, split, divide)
    if split == "train":
        raise DataError(f"dataset {name!r} is unlabelled ({what}), so it has no train split: an "
                        "unlabelled set cannot be trained on; load its 'test' split to audit it "
                        "or use it as an OOD set")
    _refuse(name, given, ("test_fraction", "seed"), f"is unlabelled ({what}) and is not divided")
    return np.arange(len(labels)), {}


# --- folders of images ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Listing:
    """The entries of one folder, hidden ones left out, each list sorted by name."""

    folders: list[Path]
    images: list[Path]
    others: list[Path]


def _list(folder: Path) -> _Listing:
    try:
        with os.scandir(folder) as scan:
            entries = sorted((entry for entry in scan if not entry.name.startswith(".")),
                             key=lambda entry: entry.name)
        listing = _Listing([], [], [])
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():
                listing.folders.append(path)
            else:
                is_image = path.suffix.lower() in formats.IMAGE_SUFFIXES
                (listing.images if is_image else listing.others).append(path)
    except OSError as exc:
        raise DataError(f"{folder}: cannot be listed ({exc.strerror or exc}); check that it "
                        "exists and is readable") from exc
    return listing


def _found(paths: list[Path]) -> str:
    if not paths:
        return "it is empty"
    more = f" and {len(paths) - _MAX_LISTED} more" if len(paths) > _MAX_LISTED else ""
    return "found only " + ", ".join(p.name for p in paths[:_MAX_LISTED]) + more


def _class_folders(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """{class: its images} of a folder of class folders, and the non-image files ignored."""
    listing = _list(folder)
    if not listing.folders:
        raise DataError(f"{folder}: no class folders ({_found(listing.images + listing.others)});"
                        f" expected {folder}/<class>/<image>")
    if listing.images:
        raise DataError(f"{folder}: holds both images ({listing.images[0].name}, ...) and "
                        f"folders ({listing.folders[0].name}, ...); put every image in a class "
                        "folder (a labelled set), or move the folders out (an unlabelled set)")
    classes, ignored = {}, list(listing.others)
    for class_folder in listing.folders:
        inner = _list(class_folder)
        if inner.folders:
            raise DataError(f"{inner.folders[0]}: a folder inside class folder {class_folder}; "
                            "nested folders are not read: move its images up or remove it")
        if not inner.images:
            raise DataError(f"{class_folder}: a class folder with no images ({_HOW}); "
                            f"{_found(inner.others)}; add images or remove the folder")
        classes[class_folder.name] = inner.images
        ignored += inner.others
    return classes, ignored


@dataclass(frozen=True)
class _Folder:
    """What a folder holds: its image files in order, their labels and, for ImageFolder, splits."""

    kind: str
    classes: tuple[str, ...]
    paths: list[Path]
    labels: np.ndarray
    is_test: np.ndarray | None
    ignored: list[Path]


def _labelled(by_class: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
    ordered = sorted(by_class)
    paths = [path for name in ordered for path in by_class[name]]
    counts = [len(by_class[name]) for name in ordered]
    return paths, np.repeat(np.arange(len(ordered), dtype=np.int64), counts)


def _scan(root: Path) -> _Folder:
    listing = _list(root)
    names = {folder.name for folder in listing.folders}
    if names & set(SPLITS):
        if not set(SPLITS) <= names:
            have, lack = sorted(names & set(SPLITS))[0], sorted(set(SPLITS) - names)[0]
            raise DataError(f"{root}: has a {have}/ folder but no {lack}/; the ImageFolder "
                            f"layout needs both ({root}/train/<class>/..., {root}/test/<class>/"
                            f"...), or rename {have}/ if it is a class")
        (train, ignored_train), (test, ignored_test) = (_class_folders(root / s) for s in SPLITS)
        if set(train) != set(test):
            only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            raise DataError(f"{root}: train/ and test/ must hold the same class folders; only in "
                            f"train/: {', '.join(only_train) or 'none'}; only in test/: "
                            f"{', '.join(only_test) or 'none'}")
        train_paths, train_labels = _labelled(train)
        test_paths, test_labels = _labelled(test)
        ignored = [p for p in listing.folders if p.name not in SPLITS] + listing.images \
            + listing.others + ignored_train + ignored_test
        return _Folder("image-folder", tuple(sorted(train)), train_paths + test_paths,
                       np.concatenate([train_labels, test_labels]),
                       np.repeat([False, True], [len(train_paths), len(test_paths)]), ignored)
    if listing.folders:
        by_class, ignored = _class_folders(root)
        paths, labels = _labelled(by_class)
        return _Folder("class-folders", tuple(sorted(by_class)), paths, labels, None, ignored)
    if not listing.images:
        raise DataError(f"{root}: no images ({_HOW}) and no class folders to read; "
                        f"{_found(listing.others)}")
    return _Folder("flat-folder", (), listing.images,
                   np.full(len(listing.images), -1, dtype=np.int64), None, listing.others)


def _common_size(root: Path, paths: list[Path],
                 headers: list[formats.ImageHeader]) -> tuple[int, int]:
    """The one size of every image; a DataError naming two files that differ."""
    first = (headers[0].height, headers[0].width)
    for path, header in zip(paths, headers, strict=True):
        if (header.height, header.width) != first:
            raise DataError(f"{root}: images differ in size: {paths[0]} is {first[0]}x{first[1]} "
                            f"but {path} is {header.height}x{header.width}; pass "
                            "resize=[H, W] to resize them all (bilinear, antialiased)")
    return first


def _decode(name: str, paths: list[Path], headers: list[formats.ImageHeader], colour: bool,
            size: tuple[int, int]) -> torch.Tensor:
    """The images at ``paths`` as float32 [N, C, *size], CHUNK files at a time; files of one
    size in a chunk are converted and resized as one batch."""
    channels = 3 if colour else 1
    _check_memory(name, len(paths), channels, size)
    out = torch.empty((len(paths), channels, *size))
    for start in range(0, len(paths), CHUNK):
        chunk = [formats.read_image(path, header, colour) for path, header
                 in zip(paths[start:start + CHUNK], headers[start:start + CHUNK], strict=True)]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, pixels in enumerate(chunk):
            by_shape.setdefault(pixels.shape, []).append(i)
        for members in by_shape.values():
            batch = np.stack([chunk[i] for i in members]).transpose(0, 3, 1, 2)
            out[torch.tensor(members) + start] = _to_float(batch, size)
    return out


def _decode_steps(headers: list[formats.ImageHeader], colour: bool, colour_files: int,
                  total: int, size: tuple[int, int]) -> list[str]:
    """What decoding did to these files, for the provenance: nothing is converted unrecorded."""
    target = "RGB" if colour else "L"
    why = (f"RGB, as {colour_files} of the folder's {total} files are colour" if colour
           else "gray, as every file in the folder is gray")
    steps = [f"decoded {len(headers)} file(s) with Pillow {PIL.__version__} as {why}"]
    converted = Counter(h.mode for h in headers if h.mode != target)
    for mode, count in sorted(converted.items()):
        note = " (gray repeated: R = G = B)" if mode in formats.GRAY_MODES and colour else ""
        steps.append(f"{count} file(s) of Pillow mode {mode} -> {target}{note}")
    if alpha := sum(h.alpha for h in headers):
        steps.append(f"alpha / transparency dropped from {alpha} file(s)")
    if animated := sum(h.animated for h in headers):
        steps.append(f"first frame only of {animated} animated file(s)")
    steps.append("uint8 / 255 -> float32 in [0, 1]")
    if resized := sum((h.height, h.width) != size for h in headers):
        steps.append(f"{resized} image(s) resized to {size[0]}x{size[1]} (bilinear, antialiased)")
    return steps


def _load_folder(name: str, root: Path, split: str, size: tuple[int, int] | None,
                 divide: _Divide, given: dict[str, Any]) -> Dataset:
    folder = _scan(root)
    headers = [formats.read_image_header(path) for path in folder.paths]
    colour_files = sum(h.colour for h in headers)
    size = size or _common_size(root, folder.paths, headers)
    record: dict[str, Any] = {}
    if folder.is_test is not None:
        _refuse(name, given, ("test_fraction", "seed"), "has train/ and test/ folders")
        index = np.flatnonzero(folder.is_test == (split == "test"))
    else:
        index, record = _select(name, folder.labels, split, divide, given,
                                "a folder of images without class folders")
    paths, chosen = [folder.paths[i] for i in index], [headers[i] for i in index]
    images = _decode(name, paths, chosen, colour_files > 0, size)
    labels = folder.labels[index]
    source = {"files": [os.path.abspath(root)], "kind": folder.kind,
              "classes": _class_counts(labels, folder.classes), "images": len(index),
              "ignored": len(folder.ignored),
              "ignored_examples": [str(p.relative_to(root)) for p in folder.ignored[:_MAX_LISTED]]}
    provenance = {"source": source, **({"split": record} if record else {}),
                  "transforms": _decode_steps(chosen, colour_files > 0, colour_files,
                                              len(headers), size)}
    return Dataset(name, split, images, torch.from_numpy(labels), folder.classes, provenance)


# --- .npz files ----------------------------------------------------------------------------------

def _layout_of(path: Path, key: str, shape: tuple[int, ...]) -> str:
    """The layout a 4-D shape states: exactly one of axis 1 and axis 3 has 1 or 3 entries."""
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first != last:
        return "nchw" if first else "nhwc"
    why = "both axis 1 and axis 3 could be" if first else "neither axis 1 nor axis 3 is"
    raise DataError(f"{path}: {key} has shape {list(shape)}: {why} the channel axis (1 or 3); "
                    "the layout is never guessed: pass option layout='nhwc' (images [N, H, W, C])"
                    " or layout='nchw' ([N, C, H, W])")


def _npz_images(path: Path, key: str, x: np.ndarray,
                layout: str | None) -> tuple[np.ndarray, str | None]:
    """``x`` checked and viewed as [N, C, H, W], and the layout read (None for 3-D arrays)."""
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise DataError(f"{path}: {key} is {x.dtype}; images must be uint8 (0..255) or float "
                        "(0..1): convert with x.astype(np.uint8) or x / 255")
    if x.ndim not in (3, 4) or x.shape[0] == 0:
        raise DataError(f"{path}: {key} has shape {list(x.shape)}; expected N > 0 images as "
                        "[N, H, W], [N, H, W, C] or [N, C, H, W]")
    if x.dtype.kind == "f":
        lo, hi = x.min(), x.max()
        if np.isnan(lo) or np.isnan(hi):
            raise DataError(f"{path}: {key} holds NaN values; remove or repair those images")
        if lo < 0 or hi > 1:
            raise DataError(f"{path}: float {key} must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; "
                            "divide 0..255 pixels by 255, or save them as uint8")
    if x.ndim == 3:
        if layout is not None:
            raise DataError(f"{path}: {key} is [N, H, W] (gray, no channel axis), so option "
                            "layout does not apply; leave it out")
        return x[:, None], None
    read = layout or _layout_of(path, key, x.shape)
    return to_nchw(x, read, f"{path}: {key}"), read


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise DataError(f"{path}: {key} is {y.dtype} of shape {list(y.shape)}, but the images "
                        f"need {n} integer labels, shape [{n}]")
    labels = y.astype(np.int64)
    if labels.min() < -1 or (labels.min() == -1 and labels.max() >= 0):
        raise DataError(f"{path}: {key} must hold labels 0..K-1, or -1 for every image of an "
                        f"unlabelled set; found values from {labels.min()} to {labels.max()}")
    return labels


def _npz_classes(path: Path, names: np.ndarray | None, labels: list[np.ndarray]) -> tuple[str, ...]:
    """``class_names`` if given, else "0".."K-1" for K = the largest label + 1."""
    k = max(int(y.max()) for y in labels) + 1
    if names is None:
        return tuple(str(i) for i in range(k))
    if names.dtype.kind != "U" or names.ndim != 1 or len(set(names.tolist())) != len(names) \
            or len(names) < k or not all(names.tolist()):
        raise DataError(f"{path}: class_names must be {max(k, 1)} or more distinct, non-empty "
                        f"strings (dtype 'U', one per label 0..{k - 1}), got {names.dtype} of "
                        f"shape {list(names.shape)}")
    return tuple(names.tolist())


def _load_npz(name: str, path: Path, split: str, size: tuple[int, int] | None,
              layout: str | None, divide: _Divide, given: dict[str, Any]) -> Dataset:
    arrays = formats.read_npz(path, _ARRAYS)
    if any(key in arrays for key in _SPLIT_ARRAYS):
        missing = [key for key in _SPLIT_ARRAYS if key not in arrays]
        if missing or "x" in arrays or "y" in arrays:
            raise DataError(f"{path}: holds {', '.join(sorted(arrays))}; an .npz dataset holds "
                            "either x and y (one set) or all of x_train, y_train, x_test and "
                            "y_test, not both")
        _refuse(name, given, ("test_fraction", "seed"), "has x_train and x_test")
        keys = (f"x_{split}", f"y_{split}")
        other = {"train": "test", "test": "train"}[split]
        other_labels = [_npz_labels(path, f"y_{other}", arrays[f"y_{other}"],
                                    len(arrays[f"x_{other}"]))]
    else:
        missing = [key for key in ("x", "y") if key not in arrays]
        if missing:
            raise DataError(f"{path}: no array {' or '.join(missing)}; an .npz dataset holds x "
                            "(images [N, H, W], [N, H, W, C] or [N, C, H, W], uint8 or float in "
                            "[0, 1]) and y (N integer labels, or -1 for every image of an "
                            "unlabelled set), or x_train, y_train, x_test and y_test")
        keys, other_labels = ("x", "y"), []
    x, read = _npz_images(path, keys[0], arrays[keys[0]], layout)
    labels = _npz_labels(path, keys[1], arrays[keys[1]], len(x))
    classes = _npz_classes(path, arrays.get("class_names"), [labels, *other_labels])
    if not other_labels:
        index, record = _select(name, labels, split, divide, given, "y is -1 everywhere")
    elif min(int(y.min()) for y in (labels, *other_labels)) < 0:
        raise DataError(f"{path}: a file with train and test splits must be labelled; an "
                        "unlabelled set is one x with y = -1 everywhere")
    else:
        index, record = np.arange(len(labels)), {}
    size = size or (int(x.shape[2]), int(x.shape[3]))
    _check_memory(name, len(index), int(x.shape[1]), size)
    images = torch.empty((len(index), int(x.shape[1]), *size))
    for start in range(0, len(index), CHUNK):
        images[start:start + CHUNK] = _to_float(x[index[start:start + CHUNK]], size)
    steps = ([f"{keys[0]}: {read.upper()} -> NCHW (layout {'given' if layout else 'from shape'})"]
             if read == "nhwc" else [])
    steps.append("uint8 / 255 -> float32 in [0, 1]" if x.dtype == np.uint8
                 else f"{x.dtype} -> float32")
    if (int(x.shape[2]), int(x.shape[3])) != size:
        steps.append(f"resized {x.shape[2]}x{x.shape[3]} -> {size[0]}x{size[1]} (bilinear, "
                     "antialiased)")
    source = {"files": [os.path.abspath(path)], "kind": "npz", "arrays": list(keys),
              "classes": _class_counts(labels[index], classes), "images": len(index)}
    provenance = {"source": source, **({"split": record} if record else {}), "transforms": steps}
    return Dataset(name, split, images, torch.from_numpy(labels[index]), classes, provenance)


# --- torch Datasets ------------------------------------------------------------------------------

def _collate(name: str) -> Any:
    def collate(items: list[Any]) -> Any:
        if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
            raise DataError(f"dataset {name!r}: each item must be a pair (image tensor [C, H, W] "
                            f"float in [0, 1], int label), got {type(items[0]).__name__}")
        try:
            return default_collate(items)
        except (RuntimeError, TypeError) as exc:
            raise DataError(f"dataset {name!r}: items could not be stacked into a batch ({exc}); "
                            "every image must be a tensor of the same [C, H, W]: convert and "
                            "resize them in the dataset's transform") from exc
    return collate


def from_torch(dataset: torch.utils.data.Dataset[Any], name: str,
               classes: Sequence[str] | None = None, split: str = "test",
               batch_size: int = 256) -> Dataset:
    """A trustmap Dataset from any torch Dataset of (image [C, H, W] float in [0, 1], int label).

    Read in order with a DataLoader, ``batch_size`` items at a time (no workers: the result must
    not depend on the machine). ``classes`` defaults to "0".."K-1" for K = the largest label + 1;
    labels all -1 make an unlabelled set.
    """
    if split not in SPLITS:
        raise DataError(f"dataset {name!r}: unknown split {split!r}; choose one of "
                        f"{', '.join(SPLITS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"dataset {name!r}: batch_size must be a positive integer, "
                        f"got {batch_size!r}")
    images, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=_collate(name))
    for x, y in loader:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.dtype.is_floating_point \
                or (images and x.shape[1:] != images[0].shape[1:]):
            shape = list(x.shape[1:]) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"dataset {name!r}: item {sum(map(len, images))} onwards has images "
                            f"of {shape}, expected float [C, H, W] like the first; convert "
                            "uint8 with x.float() / 255 and give every image one size")
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.ndim != 1:
            raise DataError(f"dataset {name!r}: labels must be integers, one per image, "
                            f"got {y!r:.80}")
        images.append(x.float())
        labels.append(y.long())
    if not images:
        raise DataError(f"dataset {name!r}: the torch Dataset yields no items")
    all_labels = torch.cat(labels)
    k = int(all_labels.max()) + 1
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(k))
    provenance = {"source": {"torch_dataset": f"{type(dataset).__module__}."
                                              f"{type(dataset).__qualname__}",
                             "images": len(all_labels)},
                  "transforms": [f"collated in order by a DataLoader, batch_size={batch_size}"]}
    return Dataset(name, split, torch.cat(images), all_labels, names, provenance)
