"""Influence and performance maps by entropic projection (seed 004, after the ethik library).

For every pixel j and every tau, the N images are reweighted by an exponential tilt
``lambda_i = softmax_i(xi * z_ij)`` (z: the pixel standardised over the N images, sample std)
so that the pixel's weighted mean reaches a target ``t_j``. Among all reweightings with that
mean this one is closest to the empirical distribution in KL divergence (the entropic
projection), so correlated pixels move with it as they do in real images. Any per-image
quantity then has a weighted mean under each projection: a class probability (influence), a
per-image correctness or loss (performance), an uncertainty measure. A map is the weighted
mean at tau = +1 minus the one at tau = -1, one value per pixel.

Targets follow ethik's rule: ``t = mean + tau * (mean - q_alpha)+`` for tau < 0 and
``t = mean + tau * (q_(1-alpha) - mean)+`` for tau >= 0, with linear-interpolated quantiles.

Where ethik runs an optimiser per pixel in Python, the tilt here is found for all (tau, pixel)
pairs at once: safeguarded Newton steps on ``m(xi) - t`` (m, the weighted mean of z, increases
with xi; its derivative is the weighted variance), where a step that leaves the bracket known to
hold the root is replaced by bisection, until ``|m(xi) - t| <= tol * s(xi)``, s the pixel's
standard deviation under the tilt. That bounds the first-order error of any weighted mean of
values in [0, 1] by tol/2 even where the target sits close to the pixel's minimum or maximum,
where a tolerance on the mean alone (ethik's) leaves the weights far from converged. Three cases
are settled without steps and reported:

- constant pixels (std 0): no tilt, uniform weights, influence 0;
- targets at the pixel's minimum or maximum (on MNIST the tau = -1 target of nearly every pixel
  is 0, its minimum): the projection is the limit ``xi -> -inf`` or ``+inf``, uniform weights on
  the images at that value; ethik stops a finite xi short of it, within its tolerance;
- targets at the mean: ``xi = 0``.

Pairs that do not meet the tolerance within ``max_iterations`` keep their last iterate and are
flagged in ``Projection.converged``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trustmap.errors import ConfigError, DataError, did_you_mean
from trustmap.predictive import Prediction
from trustmap.uncertainty import compute as compute_measures

ALPHA = 0.05
"""ethik's quantile level: tau = -1 and +1 aim at the 5% and 95% quantile side of the mean."""
TAUS = (-1.0, 1.0)
TOLERANCE = 1e-6
"""Largest |weighted mean - target| accepted, in standard deviations of the tilted pixel."""
MAX_ITERATIONS = 50

Metric = Callable[..., float]


@dataclass(frozen=True)
class Projection:
    """The entropic projections of N images, one per (tau, pixel).

    ``weights[t, p]`` are the N image weights (summing to 1) that move pixel p's mean to
    ``targets[t, p]``; ``xi`` is the tilt on the standardised pixel (+-inf at a bound, 0 for a
    constant pixel); ``iterations`` counts the Newton steps each pair took.
    """

    taus: torch.Tensor  # [T]
    targets: torch.Tensor  # [T, P], in the images' units
    xi: torch.Tensor  # [T, P]
    weights: torch.Tensor  # [T, P, N]
    converged: torch.Tensor  # [T, P] bool
    at_bound: torch.Tensor  # [T, P] bool: the target is the pixel's minimum or maximum
    constant: torch.Tensor  # [P] bool
    iterations: torch.Tensor  # [T, P] int
    image_shape: tuple[int, ...]

    def weighted_mean(self, values: torch.Tensor) -> torch.Tensor:
        """[T, K, P] mean of per-image values [N, K] (or [N]: K = 1) under every projection."""
        values = _per_image(values, self.weights.shape[2], "values")
        values = values.to(self.weights.device, self.weights.dtype)
        return torch.einsum("tpn,nk->tkp", self.weights, values)

    def difference(self, values: torch.Tensor, high: float = 1.0, low: float = -1.0
                   ) -> torch.Tensor:
        """[K, *image_shape]: weighted mean of ``values`` at tau = ``high`` minus at ``low``."""
        means = self.weighted_mean(values)
        change = means[self.tau_index(high)] - means[self.tau_index(low)]
        return change.reshape(change.shape[0], *self.image_shape)

    def tau_index(self, tau: float) -> int:
        """Position of ``tau`` in ``taus``; ConfigError if it was not solved for."""
        hits = torch.nonzero(torch.isclose(self.taus, torch.tensor(tau, dtype=self.taus.dtype)))
        if len(hits) == 0:
            raise ConfigError(f"tau = {tau} is not among the projection's taus "
                              f"{self.taus.tolist()}; project with it included")
        return int(hits[0, 0])

    def summary(self) -> dict[str, int]:
        """Counts for a report: pixels, constant pixels, pairs at a bound, pairs not converged."""
        return {"pixels": int(self.constant.numel()),
                "constant_pixels": int(self.constant.sum()),
                "pairs": int(self.converged.numel()),
                "pairs_at_bound": int(self.at_bound.sum()),
                "pairs_not_converged": int((~self.converged).sum()),
                "pixels_not_converged": int((~self.converged).any(0).sum()),
                "max_iterations": int(self.iterations.max()) if self.iterations.numel() else 0}


@dataclass(frozen=True)
class MemberMaps:
    """Influence maps of every ensemble member, and their spread: is the influence certain?"""

    maps: torch.Tensor  # [M, K, *image_shape]
    mean: torch.Tensor  # [K, *image_shape]
    std: torch.Tensor  # [K, *image_shape], sample std over members (0 for one member)


@dataclass(frozen=True)
class Curves:
    """Weighted means of per-image values against the target mean, for chosen pixels."""

    pixels: tuple[int, ...]  # flat pixel indices
    taus: torch.Tensor  # [T]
    targets: torch.Tensor  # [T, Q], the pixels' target means
    values: torch.Tensor  # [T, Q, K]
    converged: torch.Tensor  # [T, Q] bool


def _flat_images(images: torch.Tensor) -> torch.Tensor:
    """[N, P] float64 view of images [N, ...]; DataError for NaN, too few images or no pixel."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dim() < 2:
        raise DataError(f"images must be [N, ...] with one row per image, got shape "
                        f"{tuple(images.shape)}")
    if images.shape[0] < 2:
        raise DataError(f"an entropic projection reweights images, so it needs at least 2; got "
                        f"{images.shape[0]}")
    flat = images.reshape(images.shape[0], -1).to(torch.float64)
    if flat.shape[1] == 0:
        raise DataError("images have no pixels")
    bad = int((~torch.isfinite(flat)).sum())
    if bad:
        raise DataError(f"images hold {bad} NaN or infinite value(s); clean or drop those images "
                        "before projecting")
    return flat


def _per_image(values: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """[N, K] from [N] or [N, K]; DataError on a row count other than N or non-finite values."""
    values = torch.as_tensor(values)
    if values.dim() == 1:
        values = values[:, None]
    if values.dim() != 2 or values.shape[0] != n:
        raise DataError(f"{what} must be [N] or [N, K] with N = {n} (one row per image), got "
                        f"shape {tuple(values.shape)}")
    if values.is_floating_point() and not torch.isfinite(values).all():
        raise DataError(f"{what} hold NaN or infinite values; check the model's outputs")
    return values


def _quantile(by_pixel: torch.Tensor, q: float) -> torch.Tensor:
    """[P] linear-interpolated quantile of each row, as numpy and pandas compute it.

    Only the two order statistics around the position are needed, so a partial sort (top-k
    from the nearer end) replaces a full one.
    """
    count = by_pixel.shape[1]
    position = q * (count - 1)
    below = int(np.floor(position))
    above = min(below + 1, count - 1)
    if q <= 0.5:
        smallest = by_pixel.topk(above + 1, dim=1, largest=False).values  # ascending
        low, high = smallest[:, below], smallest[:, above]
    else:
        largest = by_pixel.topk(count - below, dim=1).values  # descending
        low, high = largest[:, count - 1 - below], largest[:, count - 1 - above]
    return low + (position - below) * (high - low)


def _check_taus(taus: Sequence[float], alpha: float) -> torch.Tensor:
    if not 0 < alpha < 0.5:
        raise ConfigError(f"alpha must lie in (0, 0.5), got {alpha!r}")
    tau = torch.as_tensor(list(taus), dtype=torch.float64)
    if tau.dim() != 1 or tau.numel() == 0:
        raise ConfigError("taus must be a non-empty list of numbers in [-1, 1]")
    if not torch.isfinite(tau).all() or (tau.abs() > 1).any():
        raise ConfigError(f"taus must lie in [-1, 1], got {tau.tolist()}")
    return tau


def targets(images: torch.Tensor, taus: Sequence[float] = TAUS, alpha: float = ALPHA
            ) -> torch.Tensor:
    """[T, P] ethik's target means: tau in [-1, 1] scales the way to the alpha quantiles."""
    by_pixel = _flat_images(images).T.contiguous()
    return _targets(by_pixel, by_pixel.mean(1), _check_taus(taus, alpha), alpha)


def _targets(by_pixel: torch.Tensor, mean: torch.Tensor, tau: torch.Tensor, alpha: float
             ) -> torch.Tensor:
    """[T, P] from the pixels as rows [P, N] and their means."""
    down = (mean - _quantile(by_pixel, alpha)).clamp_min(0)
    up = (_quantile(by_pixel, 1 - alpha) - mean).clamp_min(0)
    tau = tau.to(by_pixel.device)[:, None]
    return mean + tau * torch.where(tau < 0, down, up)


def _solve(pixels: torch.Tensor, row: torch.Tensor, goal: torch.Tensor, tol: float,
           max_iterations: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tilts xi [J] with ``sum_i softmax(xi z)_i z_i = goal`` for z = ``pixels[row]``, all J at
    once (``pixels``: [P, N] standardised, one row per pixel; every goal strictly inside its
    row's range).

    Works on d = z - goal (a softmax does not see the shift), so that the gap is ``sum w d``
    and the variance ``sum w d^2 - gap^2`` loses no digits as the gap closes. The step is
    Newton's on log(room left to the bound the target lies towards): near that bound the mean
    approaches it exponentially in xi, where plain Newton crawls and this is nearly exact. Steps
    run on the unconverged pairs only; one that leaves the bracket [lo, hi] known to hold the
    root (or is not finite) falls back to bisection, or to doubling the distance from the one
    finite end. Returns xi, converged, step counts and the weights [J, N] at the last xi.
    """
    pairs = goal.numel()
    xi = torch.zeros(pairs, dtype=pixels.dtype, device=pixels.device)
    lo = torch.full_like(xi, -torch.inf)
    hi = torch.full_like(xi, torch.inf)
    converged = torch.zeros(pairs, dtype=torch.bool, device=pixels.device)
    steps = torch.zeros(pairs, dtype=torch.long, device=pixels.device)
    found = torch.empty(pairs, pixels.shape[1], dtype=pixels.dtype, device=pixels.device)
    active = torch.arange(pairs, device=pixels.device)
    shifted = pixels[row] - goal[:, None]  # [A, N], the active pairs
    toward = torch.sign(goal)
    room = torch.where(toward > 0, shifted.amax(1), -shifted.amin(1))  # target to its bound
    for step in range(max_iterations + 1):
        here = xi[active]
        weights = torch.softmax(here[:, None] * shifted, dim=1)
        weighted = weights * shifted
        gap = weighted.sum(1)
        variance = (weighted * shifted).sum(1) - gap.square()
        done = gap.abs() <= tol * variance.clamp_min(0).sqrt()
        if step == max_iterations:
            done = torch.ones_like(done)
        converged[active] = gap.abs() <= tol * variance.clamp_min(0).sqrt()
        steps[active] = step
        found[active[done]] = weights[done]
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = ~done
            active, here, gap, variance = active[keep], here[keep], gap[keep], variance[keep]
            shifted, toward, room = shifted[keep], toward[keep], room[keep]
        low = torch.where(gap < 0, here, lo[active])
        high = torch.where(gap > 0, here, hi[active])
        lo[active], hi[active] = low, high
        left = room - toward * gap  # room between the current mean and the bound
        proposal = here + toward * left * torch.log(left / room) / variance
        inside = torch.isfinite(proposal) & (proposal > low) & (proposal < high)
        span = torch.clamp_min(here.abs(), 1.0)
        fallback = torch.where(torch.isinf(high), low + 2 * span,
                               torch.where(torch.isinf(low), high - 2 * span, (low + high) / 2))
        xi[active] = torch.where(inside, proposal, fallback)
    return xi, converged, steps, found


def project(images: torch.Tensor, taus: Sequence[float] = TAUS, alpha: float = ALPHA,
            tol: float = TOLERANCE, max_iterations: int = MAX_ITERATIONS) -> Projection:
    """Solve the entropic projection of every pixel of ``images`` [N, ...] for every tau.

    Maps built from it have the shape of one image (``images.shape[1:]``).
    """
    tau = _check_taus(taus, alpha)
    if not tol > 0:
        raise ConfigError(f"tol must be positive, got {tol!r}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) \
            or max_iterations < 1:
        raise ConfigError(f"max_iterations must be an integer >= 1, got {max_iterations!r}")
    flat = _flat_images(images)
    return _project(flat, tau, alpha, tol, max_iterations, tuple(np.shape(images)[1:]))


def _project(flat: torch.Tensor, tau: torch.Tensor, alpha: float, tol: float,
             max_iterations: int, image_shape: tuple[int, ...]) -> Projection:
    count, pixels = flat.shape
    by_pixel = flat.T.contiguous()  # [P, N]: every reduction below runs along rows
    mean = by_pixel.mean(1)
    goal_pixels = _targets(by_pixel, mean, tau, alpha)  # [T, P]
    centred = by_pixel - mean[:, None]
    std = (centred.square().sum(1) / (count - 1)).sqrt()
    constant = by_pixel.amin(1) == by_pixel.amax(1)
    scale = torch.where(constant, torch.ones_like(std), std)
    z = centred / scale[:, None]
    goal = (goal_pixels - mean) / scale  # [T, P], in standard deviations
    lowest, highest = z.amin(1), z.amax(1)
    low_bound = goal <= lowest + tol
    high_bound = goal >= highest - tol
    settled = constant | (goal.abs() <= tol)  # no tilt: uniform weights
    at_bound = (low_bound | high_bound) & ~settled
    free = ~at_bound & ~settled
    row = torch.arange(pixels, device=flat.device).expand_as(goal)
    xi = torch.zeros_like(goal)
    converged = torch.ones_like(free)
    iterations = torch.zeros(goal.shape, dtype=torch.long, device=flat.device)
    weights = torch.full((*goal.shape, count), 1.0 / count, dtype=z.dtype, device=z.device)
    if bool(free.any()):
        solved, ok, steps, found = _solve(z, row[free], goal[free], tol, max_iterations)
        xi[free], converged[free], iterations[free], weights[free] = solved, ok, steps, found
    if bool(at_bound.any()):
        rows, low = row[at_bound], low_bound[at_bound]
        extreme = (z[rows] == torch.where(low, lowest[rows], highest[rows])[:, None]).to(z.dtype)
        weights[at_bound] = extreme / extreme.sum(1, keepdim=True)
        xi[at_bound] = torch.where(low, -torch.inf, torch.inf).to(xi.dtype)
    return Projection(taus=tau, targets=goal_pixels, xi=xi, weights=weights,
                      converged=converged, at_bound=at_bound, constant=constant,
                      iterations=iterations, image_shape=image_shape)


def influence_map(projection: Projection, probabilities: torch.Tensor) -> torch.Tensor:
    """[K, *image_shape]: how much each class's mean probability moves when a pixel goes up."""
    return projection.difference(probabilities)


def _accuracy(labels: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    return (probabilities.argmax(1) == labels).to(torch.float64)


def _log_loss(labels: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """-log p_y, clipped like scikit-learn's log_loss (float64 machine epsilon)."""
    eps = torch.finfo(torch.float64).eps
    picked = probabilities.to(torch.float64).gather(1, labels[:, None])[:, 0]
    return -picked.clamp(eps, 1 - eps).log()


PER_IMAGE_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "accuracy": _accuracy,
    "log-loss": _log_loss,
}
"""Metrics that are a mean of per-image values, so every projection is one matrix product."""


def performance(projection: Projection, metric: str | Metric, y_true: Any, y_pred: Any
                ) -> torch.Tensor:
    """[T, P] the metric under every projection's sample weights.

    ``metric`` names a per-image metric (``accuracy``, ``log-loss``; then ``y_true`` are labels
    [N] and ``y_pred`` probabilities [N, K]) or is any scikit-learn-like callable
    ``metric(y_true, y_pred, sample_weight=...)``, called once per (tau, pixel) on numpy arrays
    passed as given; constant pixels share one call.
    """
    count = projection.weights.shape[2]
    if isinstance(metric, str):
        if metric not in PER_IMAGE_METRICS:
            raise ConfigError(f"unknown metric {metric!r}{did_you_mean(metric, PER_IMAGE_METRICS)}"
                              f"; choose from {', '.join(PER_IMAGE_METRICS)} or pass a callable "
                              "metric(y_true, y_pred, sample_weight=...)")
        labels = _per_image(torch.as_tensor(y_true), count, "y_true")[:, 0].long()
        probabilities = _per_image(torch.as_tensor(y_pred), count, "y_pred")
        if probabilities.shape[1] < 2:
            raise DataError(f"y_pred for {metric!r} must be probabilities [N, K]")
        if labels.min() < 0 or labels.max() >= probabilities.shape[1]:
            raise DataError(f"y_true must be class indices in [0, {probabilities.shape[1]})")
        scores = PER_IMAGE_METRICS[metric](labels.to(probabilities.device), probabilities)
        return projection.weighted_mean(scores)[:, 0]
    if not callable(metric):
        raise ConfigError(f"metric must be a name or a callable, got {metric!r}")
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    for name, array in (("y_true", truth), ("y_pred", predicted)):
        if len(array) != count:
            raise DataError(f"{name} has {len(array)} rows; the projection has {count} images")
    weights = projection.weights.cpu().numpy()
    result = np.empty(weights.shape[:2])
    uniform = float(metric(truth, predicted, sample_weight=np.full(count, 1.0 / count)))
    result[:, projection.constant.cpu().numpy()] = uniform
    for p in np.flatnonzero(~projection.constant.cpu().numpy()):
        for t in range(len(result)):
            result[t, p] = metric(truth, predicted, sample_weight=weights[t, p])
    return torch.as_tensor(result, device=projection.weights.device)


def performance_map(projection: Projection, metric: str | Metric, y_true: Any, y_pred: Any
                    ) -> torch.Tensor:
    """[*image_shape]: the metric at tau = +1 minus at tau = -1 (see ``performance``)."""
    scores = performance(projection, metric, y_true, y_pred)
    change = scores[projection.tau_index(1.0)] - scores[projection.tau_index(-1.0)]
    return change.reshape(projection.image_shape)


def uncertainty_map(projection: Projection, prediction: Prediction, measure: str
                    ) -> torch.Tensor:
    """[*image_shape]: how the mean of an uncertainty measure moves when a pixel goes up."""
    scores = compute_measures(prediction, [measure])[measure]
    return projection.difference(scores)[0]


def member_maps(projection: Projection, member_probabilities: torch.Tensor) -> MemberMaps:
    """Influence maps of each member's probabilities [M, N, K], their mean and std."""
    probabilities = torch.as_tensor(member_probabilities)
    if probabilities.dim() != 3:
        raise DataError(f"member probabilities must be [M, N, K], got shape "
                        f"{tuple(probabilities.shape)}")
    maps = torch.stack([projection.difference(p) for p in probabilities])
    std = maps.std(0) if len(maps) > 1 else torch.zeros_like(maps[0])
    return MemberMaps(maps=maps, mean=maps.mean(0), std=std)


def curves(images: torch.Tensor, values: torch.Tensor, pixels: Sequence[int],
           taus: Sequence[float] | None = None, alpha: float = ALPHA, tol: float = TOLERANCE,
           max_iterations: int = MAX_ITERATIONS) -> Curves:
    """Weighted means of ``values`` [N, K] against each chosen pixel's target mean.

    ``pixels`` are flat indices into one image; ``taus`` default to 41 from -1 to 1 (ethik's
    grid for curves).
    """
    flat = _flat_images(images)
    chosen = [int(p) for p in pixels]
    if not chosen or min(chosen) < 0 or max(chosen) >= flat.shape[1]:
        raise ConfigError(f"pixels must be flat indices in [0, {flat.shape[1]}), got {chosen}")
    tau = _check_taus(np.linspace(-1, 1, 41) if taus is None else taus, alpha)
    projection = _project(flat[:, chosen], tau, alpha, tol, max_iterations, (len(chosen),))
    means = projection.weighted_mean(values)  # [T, K, Q]
    return Curves(pixels=tuple(chosen), taus=tau, targets=projection.targets,
                  values=means.transpose(1, 2), converged=projection.converged)
