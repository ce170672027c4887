"""Uncertainty over a 2-D latent space: where is a classifier confident far from its data?

Smith & Gal (2018) decode a grid over the latent space of a VAE with 2-D codes, score every
decoded image by a classifier's uncertainty, and draw that map behind the encoded training set:
regions far from the data where the model is confidently (and wrongly) sure are the finding.
They also walk between two images of different classes, once in pixel space and once through
the latent space, and compare the uncertainty along both paths.

The generative model is not imported here: ``encode`` (images [N, C, H, W] -> codes [N, D],
e.g. the VAE's posterior mean) and ``decode`` (codes [M, D] -> images [M, C, H, W] in [0, 1])
are plain callables, run without gradients in chunks of ``batch_size`` on CPU tensors (a
callable that works on a GPU moves its input there itself; outputs are brought back to CPU).
Everything is batched: loops run over chunks, predictives and measures, never over inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from scipy.spatial import ConvexHull, Delaunay, QhullError

from trustmap import uncertainty
from trustmap.data.dataset import check_images
from trustmap.errors import ConfigError, DataError
from trustmap.predictive import Predictive

Encode = Callable[[torch.Tensor], torch.Tensor]
"""Images [N, C, H, W] in [0, 1] -> latent codes [N, D] (deterministic, e.g. the VAE's mean)."""

Decode = Callable[[torch.Tensor], torch.Tensor]
"""Latent codes [M, D] -> images [M, C, H, W] in [0, 1]."""

FAR_SPACINGS = 3.0
"""Default distance, in grid spacings, beyond which a grid point counts as far from the data."""

_CDIST_ELEMENTS = 2**24
"""Pairwise distances held at once by ``distance_to_data`` (64 MiB of float32)."""


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _finite_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _callable(name: str, fn: object) -> None:
    if not callable(fn):
        raise ConfigError(f"{name} must be a callable taking a tensor, got {type(fn).__name__}; "
                          f"pass e.g. lambda z: vae.decode(z) rather than its result")


def _values(values: object, name: str, n: int | None = None) -> torch.Tensor:
    """A finite 1-D float tensor [P] (of length ``n`` when given), or a DataError."""
    if not isinstance(values, torch.Tensor) or values.ndim != 1 or not values.is_floating_point():
        shape = list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise DataError(f"{name} must be a 1-D float tensor [P] (one value per point), got "
                        f"{shape}; pass one measure's scores, e.g. scored.scores[kind][measure]")
    if n is not None and len(values) != n:
        raise DataError(f"{name} has {len(values)} values but there are {n} points; pass values "
                        "computed on the same points in the same order")
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise DataError(f"{name} holds {int(bad.sum())} NaN or infinite value(s), the first at "
                        f"index {int(bad.nonzero()[0])}; a measure failed on those inputs")
    return values


def _points(points: object, name: str) -> torch.Tensor:
    """A non-empty, finite float tensor of 2-D points [P, 2], or a DataError."""
    if (not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 2
            or not points.is_floating_point()):
        shape = list(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise DataError(f"{name} must be a float tensor of 2-D latent codes [P, 2], got {shape}; "
                        "the latent maps need a VAE with a 2-D latent space")
    if len(points) == 0:
        raise DataError(f"{name} is empty; pass at least one latent code")
    bad = ~torch.isfinite(points)
    if bool(bad.any()):
        raise DataError(f"{name} holds {int(bad.any(1).sum())} code(s) with NaN or inf; the "
                        "encoder diverged on those inputs")
    return points.detach().cpu()


def _codes(codes: object, n: int, what: str) -> torch.Tensor:
    """Check what ``encode`` returned: finite float codes [n, D]."""
    if (not isinstance(codes, torch.Tensor) or codes.ndim != 2 or len(codes) != n
            or not codes.is_floating_point()):
        shape = list(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise DataError(f"{what} must return float codes [N, D] with one row per image "
                        f"({n} here), got {shape}; for a VAE return the mean code, not the "
                        "(mu, logvar) pair")
    if not bool(torch.isfinite(codes).all()):
        raise DataError(f"{what} returned NaN or inf codes; check the encoder's weights")
    return codes


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int,
             what: str) -> torch.Tensor:
    """``fn`` applied to ``x`` in chunks, without gradients, concatenated on CPU."""
    parts = []
    with torch.no_grad():
        for chunk in x.split(batch_size):
            out = fn(chunk)
            if not isinstance(out, torch.Tensor):
                raise DataError(f"{what} must return a tensor, got {type(out).__name__}; for a "
                                "VAE's encoder return the mean code alone, not (mu, logvar)")
            if out.ndim == 0 or len(out) != len(chunk):
                raise DataError(f"{what} must return one row per input ({len(chunk)} here), "
                                f"got shape {list(out.shape)}")
            parts.append(out.detach().cpu())
    return torch.cat(parts)


def encode_images(encode: Encode, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Latent codes [N, D] of ``images`` (e.g. the training set drawn behind the map)."""
    _callable("encode", encode)
    check_images(images)
    batch_size = _positive_int("batch_size", batch_size)
    return _codes(_chunked(encode, images, batch_size, "encode"), len(images), "encode")


def _decode(decode: Decode, z: torch.Tensor, batch_size: int) -> torch.Tensor:
    _callable("decode", decode)
    batch_size = _positive_int("batch_size", batch_size)
    images = _chunked(decode, z, batch_size, "decode")
    return check_images(images, "decode(z)")


@dataclass(frozen=True)
class LatentGrid:
    """A regular R x R grid over [-bound, bound]^2 and the image decoded at every point.

    Points are in row-major order: ``z[i * R + j] = (axis[j], axis[i])``, so z0 runs along the
    columns (x) and z1 along the rows (y), both increasing from -bound. ``as_map`` turns
    per-point values into an [R, R] array whose row 0 is z1 = -bound: draw it with
    ``imshow(grid.as_map(scores), origin="lower", extent=grid.extent)``.
    """

    z: torch.Tensor  # [R * R, 2]
    images: torch.Tensor  # [R * R, C, H, W]
    resolution: int
    bound: float

    @property
    def axis(self) -> torch.Tensor:
        """[R] coordinates along each axis, from -bound to bound (both included exactly)."""
        return _axis(self.resolution, self.bound)

    @property
    def spacing(self) -> float:
        """Distance between neighbouring grid points, 2 bound / (R - 1)."""
        return 2 * self.bound / (self.resolution - 1)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) for matplotlib's imshow with origin="lower"."""
        return (-self.bound, self.bound, -self.bound, self.bound)

    def as_map(self, values: torch.Tensor) -> torch.Tensor:
        """Per-point values [..., R * R] as a map [..., R, R]; ``.flatten(-2)`` undoes it."""
        points = self.resolution ** 2
        if not isinstance(values, torch.Tensor) or values.ndim == 0 or values.shape[-1] != points:
            shape = list(values.shape) if isinstance(values, torch.Tensor) else type(values)
            raise DataError(f"values must end with one entry per grid point ({points}), got "
                            f"{shape}; pass scores of grid.images in grid order")
        return values.reshape(*values.shape[:-1], self.resolution, self.resolution)


def _axis(resolution: int, bound: float) -> torch.Tensor:
    # In float64, i / (R - 1) is exact at both ends and (for odd R) in the middle, so the grid
    # holds -bound, 0 and bound exactly.
    steps = torch.arange(resolution, dtype=torch.float64) / (resolution - 1)
    return (-bound + 2 * bound * steps).float()


def latent_grid(decode: Decode, resolution: int = 40, bound: float = 10.0,
                batch_size: int = 1024) -> LatentGrid:
    """Decode every point of an R x R grid over [-bound, bound]^2 (the paper: 40, 10)."""
    resolution = _positive_int("resolution", resolution, minimum=2)
    bound = _finite_real("bound", bound)
    if bound <= 0:
        raise ConfigError(f"bound must be > 0 (the grid spans [-bound, bound]^2), got {bound}")
    axis = _axis(resolution, bound)
    z1, z0 = torch.meshgrid(axis, axis, indexing="ij")
    z = torch.stack([z0.flatten(), z1.flatten()], dim=1)
    return LatentGrid(z, _decode(decode, z, batch_size), resolution, bound)


@dataclass(frozen=True)
class Scored:
    """Uncertainty of some inputs under several predictives, with what each one predicts.

    ``scores[kind][measure]`` and ``predicted[kind]`` share one shape: [N] for images, [N, steps]
    for paths. ``predicted`` is the class of the averaged probabilities, so a low score next to
    it says what the model is confidently seeing (e.g. "a 1" far from every digit).
    """

    scores: dict[str, dict[str, torch.Tensor]]
    predicted: dict[str, torch.Tensor]


def _measure_names(measures: Sequence[str] | None) -> list[str] | None:
    """Check measure names before any forward pass, so a typo fails at once."""
    if measures is None:
        return None
    if isinstance(measures, str):
        raise ConfigError(f"measures must be a sequence of names, got the string {measures!r}; "
                          f"pass [{measures!r}]")
    names = list(measures)
    if not names:
        raise ConfigError("measures is empty; name at least one measure, or pass None for every "
                          f"measure of the probabilities ({', '.join(uncertainty.names())})")
    for name in names:
        uncertainty.get(name)  # a ConfigError naming the nearest measure if unknown
    return names


def _checked_predictives(predictives: Mapping[str, Predictive]) -> None:
    if not isinstance(predictives, Mapping) or not predictives:
        raise ConfigError("predictives must be a non-empty mapping name -> Predictive, e.g. "
                          "{'mc-dropout': make_predictive('mc-dropout', models, samples=50)}")
    for kind, predictive in predictives.items():
        if not isinstance(predictive, Predictive):
            raise ConfigError(f"predictives[{kind!r}] is a {type(predictive).__name__}, not a "
                              "Predictive; wrap a model with trustmap.predictive.Single or "
                              "make_predictive")


def score_images(images: torch.Tensor, predictives: Mapping[str, Predictive],
                 measures: Sequence[str] | None = None) -> Scored:
    """Scores [N] of every measure under every predictive, and each one's predicted class.

    ``measures=None`` computes every registered measure of the probabilities. Each predictive
    batches its own forward passes (its ``batch_size``), and all measures of one predictive read
    the same passes.
    """
    check_images(images)
    names = _measure_names(measures)
    _checked_predictives(predictives)
    scores: dict[str, dict[str, torch.Tensor]] = {}
    predicted: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for kind, predictive in predictives.items():
            prediction = predictive.predict(images)
            scores[kind] = uncertainty.compute(prediction, names)
            predicted[kind] = prediction.predicted
    return Scored(scores, predicted)


def inside_hull(data_z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """BoolTensor [P]: which points lie in the convex hull of the encoded data.

    Points on the hull's boundary count as inside, within Qhull's rounding tolerance
    (``Delaunay.find_simplex``), so a grid point exactly on an edge is "near".
    """
    data = _points(data_z, "data_z").double().numpy()
    queries = _points(points, "points").double().numpy()
    distinct = np.unique(data, axis=0)
    if len(distinct) < 3 or np.linalg.matrix_rank(distinct - distinct[0]) < 2:
        raise DataError(f"data_z has {len(distinct)} distinct code(s), all on one line, so their "
                        "convex hull has no area; encode more (and more varied) images")
    try:
        # The hull's vertices span the same hull; triangulating only them keeps this fast for
        # a whole encoded training set.
        triangulation = Delaunay(distinct[ConvexHull(distinct).vertices])
    except QhullError as error:
        raise DataError(f"the convex hull of data_z could not be computed ({error}); check that "
                        "the codes are not (nearly) collinear") from error
    return torch.from_numpy(triangulation.find_simplex(queries) >= 0)


def distance_to_data(data_z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """[P] Euclidean distance from each point to its nearest encoded data point."""
    data = _points(data_z, "data_z")
    queries = _points(points, "points")
    dtype = torch.promote_types(data.dtype, queries.dtype)
    data, queries = data.to(dtype), queries.to(dtype)
    chunk = max(1, _CDIST_ELEMENTS // len(data))
    # Without the matrix-product shortcut the distances are exact up to rounding, not
    # cancellation: a point on top of a code is at distance 0.
    return torch.cat([
        torch.cdist(part, data, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
        for part in queries.split(chunk)
    ])


def low_uncertainty_share(scores: torch.Tensor, near: torch.Tensor, threshold: float
                          ) -> dict[str, float | int]:
    """How much of the grid is confident: the share of points scoring strictly below threshold.

    ``threshold`` is the reference, usually the median score of the in-distribution test set;
    ``near`` marks points near the data (usually ``inside_hull(data_z, grid.z)``). Returns the
    share over all points, near and far points (``share``, ``share_near``, ``share_far``; NaN
    when a group is empty), the number of points in each group (``points*``) and how many of
    them are below the threshold (``low*``).
    """
    scores = _values(scores, "scores")
    if not isinstance(near, torch.Tensor) or near.dtype != torch.bool or near.shape != scores.shape:
        shape = list(near.shape) if isinstance(near, torch.Tensor) else type(near).__name__
        raise DataError(f"near must be a bool tensor with one entry per score ({len(scores)}), "
                        f"got {shape}; pass inside_hull(data_z, grid.z)")
    threshold = _finite_real("threshold", threshold)
    low = scores < threshold
    out: dict[str, float | int] = {"threshold": threshold}
    for suffix, mask in (("", torch.ones_like(near)), ("_near", near), ("_far", ~near)):
        points, below = int(mask.sum()), int((low & mask).sum())
        out[f"share{suffix}"] = below / points if points else math.nan
        out[f"points{suffix}"] = points
        out[f"low{suffix}"] = below
    return out


def confident_far_points(grid: LatentGrid, scores: torch.Tensor, distance: torch.Tensor,
                         k: int = 10, min_distance: float | None = None) -> torch.Tensor:
    """Indices into the grid of the k lowest-scoring points at least ``min_distance`` from data.

    The default ``min_distance`` is ``FAR_SPACINGS`` (3) grid spacings: a point within one
    spacing shares a grid cell with encoded data, and two more empty cells of margin keep its
    decoded image from being a blurred training digit. Indices come most confident first (ties
    by index); fewer than k come back when fewer points are that far, none if none is.
    """
    if not isinstance(grid, LatentGrid):
        raise ConfigError(f"grid must be a LatentGrid from latent_grid(...), got "
                          f"{type(grid).__name__}")
    k = _positive_int("k", k)
    scores = _values(scores, "scores", len(grid.z))
    distance = _values(distance, "distance", len(grid.z))
    if min_distance is None:
        min_distance = FAR_SPACINGS * grid.spacing
    min_distance = _finite_real("min_distance", min_distance)
    far = (distance >= min_distance).nonzero().flatten()
    order = torch.sort(scores[far], stable=True).indices
    return far[order[:k]]


def _paired_positions(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Check paired images a[i] -> b[i] and return the positions t of the path's steps."""
    check_images(a, "a")
    check_images(b, "b")
    if a.shape != b.shape:
        raise DataError(f"a and b must be paired images of one shape, got {list(a.shape)} and "
                        f"{list(b.shape)}; index both with pairs_of_different_classes(...)")
    return _positions(steps)


def _positions(steps: int) -> torch.Tensor:
    """[steps] positions t along a path, i / (steps - 1): exactly 0, 1 and (odd steps) 1/2."""
    steps = _positive_int("steps", steps, minimum=2)
    return torch.arange(steps, dtype=torch.float64) / (steps - 1)


def _line(start: torch.Tensor, end: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[N, steps, ...] (1 - t) start + t end: exactly start at t = 0 and end at t = 1."""
    shape = (1, len(t)) + (1,) * (start.ndim - 1)
    t = t.to(start.dtype).view(shape)
    return (1 - t) * start.unsqueeze(1) + t * end.unsqueeze(1)


def pixel_path(a: torch.Tensor, b: torch.Tensor, steps: int = 21) -> torch.Tensor:
    """[N, steps, C, H, W] straight lines in pixel space from a[i] to b[i].

    Step s is (1 - t) a + t b with t = s / (steps - 1): the first step is a, the last b and, for
    odd steps, the middle one is (a + b) / 2, all exactly.
    """
    t = _paired_positions(a, b, steps)
    return _line(a, b, t).clamp(0, 1)


def latent_path(encode: Encode, decode: Decode, a: torch.Tensor, b: torch.Tensor,
                steps: int = 21, batch_size: int = 1024) -> torch.Tensor:
    """[N, steps, C, H, W] the straight line between the codes of a[i] and b[i], decoded.

    The first and last steps are decode(encode(a)) and decode(encode(b)), reconstructions
    rather than a and b themselves, so the path shows what the generative model makes of them.
    """
    t = _paired_positions(a, b, steps)
    _callable("decode", decode)
    codes = encode_images(encode, torch.cat([a, b]), batch_size)
    z = _line(codes[:len(a)], codes[len(a):], t)
    images = _decode(decode, z.flatten(0, 1), batch_size)
    return images.view(len(a), len(t), *images.shape[1:])


def path_scores(paths: torch.Tensor, predictives: Mapping[str, Predictive],
                measures: Sequence[str] | None = None) -> Scored:
    """Scores and predicted classes [N, steps] of every image along every path."""
    if not isinstance(paths, torch.Tensor) or paths.ndim != 5:
        shape = list(paths.shape) if isinstance(paths, torch.Tensor) else type(paths).__name__
        raise DataError(f"paths must be [N, steps, C, H, W] as pixel_path/latent_path return, "
                        f"got {shape}")
    n, steps = paths.shape[:2]
    flat = score_images(paths.flatten(0, 1), predictives, measures)
    return Scored({kind: {name: values.view(n, steps) for name, values in measured.items()}
                   for kind, measured in flat.scores.items()},
                  {kind: classes.view(n, steps) for kind, classes in flat.predicted.items()})


def path_midpoints(scored: Scored) -> Scored:
    """Scores and predicted classes [N] at the middle of paths with an odd number of steps.

    With odd steps the middle step is exactly t = 1/2, the mean image for ``pixel_path`` and
    the decoded mean code for ``latent_path``. With even steps no step sits at the midpoint and
    averaging its two neighbours' scores would not be a score of any image, so that raises.
    """
    if not isinstance(scored, Scored) or not scored.predicted:
        raise ConfigError("path_midpoints takes the Scored that path_scores returns")
    shapes = {tuple(v.shape) for v in scored.predicted.values()}
    shapes |= {tuple(v.shape) for m in scored.scores.values() for v in m.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise DataError(f"path_midpoints needs scores of paths [N, steps], got shapes "
                        f"{sorted(shapes)}; pass the result of path_scores")
    steps = next(iter(shapes))[1]
    if steps % 2 == 0:
        raise ConfigError(f"paths have {steps} steps, so none lies at the midpoint; build them "
                          f"with an odd number of steps, e.g. {steps + 1}")
    middle = steps // 2
    return Scored({kind: {name: values[:, middle] for name, values in measured.items()}
                   for kind, measured in scored.scores.items()},
                  {kind: classes[:, middle] for kind, classes in scored.predicted.items()})


def pairs_of_different_classes(labels: torch.Tensor, n: int, seed: int = 0
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx_a, idx_b) LongTensors [n]: seeded random pairs whose labels differ.

    idx_a is uniform over all inputs and idx_b uniform over the inputs of another class than
    idx_a's, drawn with replacement (a pair can repeat). The same labels and seed give the same
    pairs, and the global random state is not touched.
    """
    if (not isinstance(labels, torch.Tensor) or labels.ndim != 1
            or labels.is_floating_point() or labels.dtype == torch.bool):
        shape = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise DataError(f"labels must be a 1-D integer tensor, got {shape}; pass dataset.labels")
    n = _positive_int("n", n)
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    labels = labels.cpu()
    classes, class_of, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"labels hold a single class ({len(labels)} inputs), so no pair of "
                        "different classes exists; pass inputs of at least two classes")
    generator = torch.Generator().manual_seed(int(seed))
    # Sorted by class, every class occupies one block [start, start + count) of ``order``; a
    # uniform position among the others skips the block of a's class.
    order = torch.sort(class_of, stable=True).indices
    starts = counts.cumsum(0) - counts
    idx_a = torch.randint(len(labels), (n,), generator=generator)
    own = class_of[idx_a]
    others = len(labels) - counts[own]
    draw = torch.rand(n, generator=generator, dtype=torch.float64)
    position = torch.minimum((draw * others).long(), others - 1)
    position = torch.where(position >= starts[own], position + counts[own], position)
    return idx_a, order[position]
