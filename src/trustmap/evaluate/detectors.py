"""Feature-space OOD detectors: scores from a model's features, higher = more likely OOD.

Each detector is fitted on the training split's features only, and fitting is memory-bounded:
the Gaussians are fitted from streaming sums (``GaussianFit.update`` sees the data in batches;
the result equals a one-shot fit up to float64 rounding), and KNN searches its bank in chunks,
so neither ever holds an N x N or N x K x D array.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from trustmap.errors import DataError


def _features(values: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or 0 in values.shape:
        shape = list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise DataError(f"{what} must be a non-empty tensor of features [N, D], got {shape}")
    if not bool(torch.isfinite(values).all()):
        raise DataError(f"{what} holds NaN or inf features; the model failed on those inputs")
    return values


@dataclass
class GaussianFit:
    """Class-conditional Gaussians with one shared covariance, fitted from streaming sums.

    ``update(features, labels)`` adds a batch; ``finish()`` gives the class means, the shared
    covariance Sigma = (1/N) sum_k sum_{i in k} (x_i - mu_k)(x_i - mu_k)^T, and the background
    Gaussian (mean and covariance of all features) that relative Mahalanobis needs. Sums are
    float64: a million 512-d features sum without losing the covariance.
    """

    num_classes: int
    counts: torch.Tensor = field(init=False)
    sums: torch.Tensor | None = field(init=False, default=None)
    second: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.counts = torch.zeros(self.num_classes, dtype=torch.float64)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> GaussianFit:
        x = _features(features, "features").double()
        if labels.shape != (len(x),) or labels.dtype != torch.int64:
            raise DataError(f"labels must be int64 [N] with N = {len(x)}, got {labels.dtype} "
                            f"{list(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise DataError(f"labels must lie in [0, {self.num_classes}), found "
                            f"[{int(labels.min())}, {int(labels.max())}]")
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, x.shape[1], dtype=torch.float64)
            self.second = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        assert self.second is not None
        if x.shape[1] != self.sums.shape[1]:
            raise DataError(f"features have {x.shape[1]} dimensions, earlier batches "
                            f"{self.sums.shape[1]}")
        self.counts += torch.bincount(labels, minlength=self.num_classes).double()
        self.sums.index_add_(0, labels, x)
        self.second += x.T @ x
        return self

    def finish(self, classes: Iterable[str] | None = None) -> Gaussians:
        """The fitted Gaussians; DataError for a class with fewer than two features."""
        if self.sums is None or self.second is None:
            raise DataError("no features were given to fit the Gaussians on")
        names = list(classes) if classes is not None else [str(k) for k in
                                                           range(self.num_classes)]
        scarce = int(self.counts.argmin())
        if self.counts[scarce] < 2:
            raise DataError(f"class {names[scarce]!r} has {int(self.counts[scarce])} training "
                            "feature(s); a class mean and its spread need at least two")
        total = float(self.counts.sum())
        means = self.sums / self.counts[:, None]
        within = (self.second - (means.T * self.counts) @ means) / total
        mean = self.sums.sum(0) / total
        background = self.second / total - torch.outer(mean, mean)
        return Gaussians(means, _precision(within), mean, _precision(background))


def _precision(covariance: torch.Tensor) -> torch.Tensor:
    """The (pseudo-)inverse of a covariance: features often span fewer dimensions than they
    have (ReLU zeros), where the plain inverse does not exist."""
    return torch.linalg.pinv(covariance, hermitian=True)


@dataclass(frozen=True)
class Gaussians:
    """Fitted class means [K, D], shared precision [D, D], background mean and precision."""

    means: torch.Tensor
    precision: torch.Tensor
    mean: torch.Tensor
    background_precision: torch.Tensor

    def class_distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distances [N, K] to every class mean."""
        x = _features(features, "features").double()
        if x.shape[1] != self.means.shape[1]:
            raise DataError(f"features have {x.shape[1]} dimensions, the Gaussians "
                            f"{self.means.shape[1]}")
        # x'Px - 2 x'P mu_k + mu_k'P mu_k: [N, K] without an [N, K, D] array
        projected = x @ self.precision
        own = (projected * x).sum(1, keepdim=True)
        centres = ((self.means @ self.precision) * self.means).sum(1)
        return own - 2 * projected @ self.means.T + centres


def mahalanobis(fit: Gaussians, features: torch.Tensor, batch_size: int = 4096
                ) -> torch.Tensor:
    """min_k (x - mu_k)^T Sigma^-1 (x - mu_k): distance to the closest class (Lee et al.,
    "A simple unified framework for detecting out-of-distribution samples and adversarial
    attacks", NeurIPS 2018). Float32 [N], higher = more likely OOD."""
    return torch.cat([fit.class_distances(x).min(1).values
                      for x in features.split(batch_size)]).float()


def relative_mahalanobis(fit: Gaussians, features: torch.Tensor, batch_size: int = 4096
                         ) -> torch.Tensor:
    """min_k [MD_k(x) - MD_0(x)], MD_0 the distance under the background Gaussian of all
    training features (Ren et al., "A simple fix to Mahalanobis distance for improving near-OOD
    detection", 2021). Float32 [N], higher = more likely OOD."""
    scores = []
    for x in features.split(batch_size):
        centred = x.double() - fit.mean
        background = torch.einsum("nd,de,ne->n", centred, fit.background_precision, centred)
        scores.append(fit.class_distances(x).min(1).values - background)
    return torch.cat(scores).float()


def knn(bank: torch.Tensor, features: torch.Tensor, k: int = 50, chunk: int = 1024,
        bank_chunk: int = 65536) -> torch.Tensor:
    """Distance to the k-th nearest training feature, both L2-normalised (Sun et al., "Out-of-
    distribution detection with deep nearest neighbors", ICML 2022). Float32 [N], higher =
    more likely OOD.

    Queries go ``chunk`` at a time and the bank ``bank_chunk`` rows at a time, keeping the k
    smallest distances so far: memory is chunk x (k + bank_chunk), whatever the bank's size.
    """
    bank = _features(bank, "bank")
    features = _features(features, "features")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(bank):
        raise DataError(f"k must be an integer in [1, {len(bank)}] (the bank's size), got {k!r}")
    if bank.shape[1] != features.shape[1]:
        raise DataError(f"features have {features.shape[1]} dimensions, the bank "
                        f"{bank.shape[1]}")
    normal = torch.nn.functional.normalize
    scores = []
    for query in features.split(chunk):
        query = normal(query.float(), dim=1)
        nearest = torch.full((len(query), 0), float("inf"))
        for part in bank.split(bank_chunk):
            distances = torch.cdist(query, normal(part.float(), dim=1))
            nearest = torch.cat([nearest, distances], 1).topk(
                min(k, nearest.shape[1] + distances.shape[1]), dim=1, largest=False).values
        scores.append(nearest[:, k - 1])
    return torch.cat(scores)
