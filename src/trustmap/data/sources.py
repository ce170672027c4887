"""The catalog of official dataset files: names, URLs, sizes, checksums, classes, search path.

This is the only module that names download hosts. Sizes and MD5s come from the records of
torchvision and tensorflow-datasets (see data-sources.md). notMNIST_small has no checksum in
either record, so it is verified by size only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from trustmap.errors import DataError

SYSTEM_DIR = Path("/usr/share/datasets")
"""Where Debian dataset packages install files (``dataset-fashion-mnist``: ``fashion-mnist/``)."""


@dataclass(frozen=True)
class OfficialFile:
    """One file as its publisher distributes it; ``md5`` is None where no record exists."""

    name: str
    url: str
    size: int
    md5: str | None


@dataclass(frozen=True)
class OfficialSource:
    """An official dataset: its files and, per split, the local paths that hold that split.

    ``layout[split]`` is a tuple of required entries; each entry is a tuple of alternative
    paths relative to the dataset directory (the first that exists is used), so that a
    gzipped or an un-gzipped IDX file, or an archive or its extracted folder, all count.
    """

    name: str
    format: str
    description: str
    classes: tuple[str, ...]
    files: tuple[OfficialFile, ...]
    layout: dict[str, tuple[tuple[str, ...], ...]]
    install_hint: str | None = None


DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
LETTERS = tuple("ABCDEFGHIJ")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_META = "batches.meta"

_IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_LAYOUT = {split: tuple((f"{stem}.gz", stem) for stem in stems)
               for split, stems in _IDX_STEMS.items()}


def _idx_files(base_url: str, records: dict[str, tuple[int, str]]) -> tuple[OfficialFile, ...]:
    return tuple(OfficialFile(name, base_url + name, size, md5)
                 for name, (size, md5) in records.items())


SOURCES: dict[str, OfficialSource] = {
    "mnist": OfficialSource(
        name="mnist", format="idx",
        description="MNIST handwritten digits, official IDX files (60,000 train / 10,000 test)",
        classes=DIGITS,
        files=_idx_files("https://ossci-datasets.s3.amazonaws.com/mnist/", {
            "train-images-idx3-ubyte.gz": (9_912_422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels-idx1-ubyte.gz": (28_881, "d53e105ee54ea40749a09fcbcd1e9432"),
            "t10k-images-idx3-ubyte.gz": (1_648_877, "9fb629c4189551a2d022fa330f9573f3"),
            "t10k-labels-idx1-ubyte.gz": (4_542, "ec29112dd5afa0611ce80d1b7f02629c"),
        }),
        layout=_IDX_LAYOUT,
    ),
    "fashion-mnist": OfficialSource(
        name="fashion-mnist", format="idx",
        description="Fashion-MNIST clothing images, official IDX files (60,000 / 10,000)",
        classes=FASHION_CLASSES,
        files=_idx_files("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
            "train-images-idx3-ubyte.gz": (26_421_880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels-idx1-ubyte.gz": (29_515, "25c81989df183df01b3e8a0aad5dffbe"),
            "t10k-images-idx3-ubyte.gz": (4_422_102, "bef4ecab320f06d8554ea6380940ec79"),
            "t10k-labels-idx1-ubyte.gz": (5_148, "bb300cfdad3c16e7a12a480ee83cd310"),
        }),
        layout=_IDX_LAYOUT,
        install_hint="apt-get install dataset-fashion-mnist",
    ),
    "kmnist": OfficialSource(
        name="kmnist", format="idx",
        description="Kuzushiji-MNIST cursive Japanese characters, official IDX files "
                    "(60,000 / 10,000)",
        classes=KMNIST_CLASSES,
        files=_idx_files("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", {
            "train-images-idx3-ubyte.gz": (18_165_135, "bdb82020997e1d708af4cf47b453dcf7"),
            "train-labels-idx1-ubyte.gz": (29_497, "e144d726b3acfaa3e44228e80efcd344"),
            "t10k-images-idx3-ubyte.gz": (3_041_136, "5c965bf0a639b31b8f53240b1b52f4d7"),
            "t10k-labels-idx1-ubyte.gz": (5_120, "7320c461ea6c1c855c0b718fb2a4b134"),
        }),
        layout=_IDX_LAYOUT,
    ),
    "notmnist-small": OfficialSource(
        name="notmnist-small", format="png-folders",
        description="notMNIST_small letters A-J in many fonts, official PNG archive; no official "
                    "split, so fonts are split 80/20 by a hash of the file name",
        classes=LETTERS,
        files=(OfficialFile("notMNIST_small.tar.gz",
                            "http://yaroslavvb.com/upload/notMNIST/notMNIST_small.tar.gz",
                            8_458_043, None),),
        layout={split: (("notMNIST_small", "notMNIST_small.tar.gz"),)
                for split in ("train", "test")},
    ),
    "svhn": OfficialSource(
        name="svhn", format="svhn-mat",
        description="SVHN cropped house-number digits, official .mat files (73,257 / 26,032), "
                    "turned into 28x28 gray",
        classes=DIGITS,
        files=(
            OfficialFile("train_32x32.mat",
                         "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                         182_040_794, "e26dedcc434d2e4c54c9b2d4a06d8373"),
            OfficialFile("test_32x32.mat",
                         "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                         64_275_384, "eb5a983be6a315427106f1b164d9cef3"),
        ),
        layout={"train": (("train_32x32.mat",),), "test": (("test_32x32.mat",),)},
    ),
    "cifar10": OfficialSource(
        name="cifar10", format="cifar-python",
        description="CIFAR-10 natural images, official python batches (50,000 / 10,000), "
                    "turned into 28x28 gray",
        classes=CIFAR10_CLASSES,
        files=(OfficialFile("cifar-10-python.tar.gz",
                            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                            170_498_071, "c58f30108f718f92721af3b95e74349a"),),
        layout={split: (("cifar-10-batches-py", "cifar-10-python.tar.gz"),)
                for split in ("train", "test")},
    ),
}


def notmnist_split(file_name: str) -> str:
    """The split of a notMNIST PNG: ``test`` when md5(file name) mod 5 is 0, else ``train``.

    notMNIST has no official split. A notMNIST file name encodes its font and recurs in every
    letter folder, so hashing the bare file name keeps each font wholly in one split (no font
    seen in training is tested on) and never changes between runs or machines (~80/20).
    """
    digest = hashlib.md5(file_name.encode("utf-8"), usedforsecurity=False).digest()
    return "test" if int.from_bytes(digest[:4], "big") % 5 == 0 else "train"


def default_data_root() -> Path:
    """Where ``fetch`` stores files: ``$TRUSTMAP_DATA`` if set, else ``~/.cache/trustmap``."""
    env = os.environ.get("TRUSTMAP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trustmap"


def search_path() -> list[Path]:
    """The base directories searched, in order; each is searched for a sub-folder per dataset."""
    bases = []
    env = os.environ.get("TRUSTMAP_DATA")
    if env:
        bases.append(Path(env).expanduser())
    bases += [Path.home() / ".cache" / "trustmap", SYSTEM_DIR]
    return bases


def source(name: str) -> OfficialSource:
    """The official source called ``name``; DataError naming the known ones otherwise."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"no official files named {name!r} to fetch; official datasets: "
                        f"{', '.join(SOURCES)} (embedded and generated datasets need no "
                        "download)") from None


def split_paths(directory: Path, name: str, split: str) -> list[Path] | None:
    """The files in ``directory`` holding ``split`` of dataset ``name``; None if any is missing."""
    found = []
    for alternatives in source(name).layout[split]:
        path = next((directory / alt for alt in alternatives if (directory / alt).exists()), None)
        if path is None:
            return None
        found.append(path)
    return found


def candidate_dirs(name: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories that may hold dataset ``name``: ``root`` and ``root/name``, else the search
    path (each base directory's ``name`` sub-folder)."""
    if root is not None:
        root = Path(root).expanduser()
        return [root, root / name]
    return [base / name for base in search_path()]


def locate(name: str, split: str | None = None,
           root: str | os.PathLike[str] | None = None) -> Path | None:
    """The first candidate directory holding ``split`` (all splits if None) of ``name``, or None."""
    splits = [split] if split is not None else list(source(name).layout)
    for directory in candidate_dirs(name, root):
        if all(split_paths(directory, name, s) is not None for s in splits):
            return directory
    return None


def not_found_error(name: str, split: str | None = None,
                    root: str | os.PathLike[str] | None = None) -> DataError:
    """The error for a dataset that is nowhere: every place looked, what was expected, the fix."""
    src = source(name)
    splits = [split] if split is not None else list(src.layout)
    wanted = sorted({" or ".join(alts) for s in splits for alts in src.layout[s]})
    places = "\n".join(f"  {d}" for d in candidate_dirs(name, root))
    fixes = [f"`trustmap data fetch {name}`"]
    if src.install_hint:
        fixes.append(f"`{src.install_hint}`")
    if root is None:
        fixes.append("set $TRUSTMAP_DATA to a directory holding a "
                     f"'{name}/' folder with these files")
    what = f"the {split} split of " if split else ""
    return DataError(f"could not find {what}dataset {name!r}: expected {'; '.join(wanted)} in one "
                     f"of these directories:\n{places}\nTo get it, run " + " or ".join(fixes))
