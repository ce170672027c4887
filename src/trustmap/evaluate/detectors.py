"""Feature-space OOD detectors: scores from a model's features, higher = more likely OOD.

Each detector is fitted on the training split's features only, and fitting is memory-bounded:
the Gaussians are fitted from streaming sums (``GaussianFit.update`` and ``ClassGaussianFit.update``
see the data in batches; the result equals a one-shot fit up to float64 rounding), ViM's subspace
comes from a streamed second moment, ReAct's clip from at most 2^24 activations, and KNN searches
its bank in chunks, so none ever holds an N x N, N x K x D or per-sample D x D array. ``DETECTORS``
registers them under one signature: ``fit(name, features, labels, head, classes)`` gives a scorer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Self, TypeVar

import torch

from trustmap.errors import ConfigError, DataError, ModelError, did_you_mean

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""Features [M, D] -> float32 scores [M], higher = more likely OOD."""

_CHECK_ROWS = 65536  # rows checked for NaN at once: a 1M-row bank never gets a 1M-row mask


def _finite(values: torch.Tensor) -> bool:
    """Whether every value is finite: a finite sum says so at the cost of one read (NaN and inf
    propagate through sums), and only a sum that overflowed needs the elementwise check."""
    return bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all())


def _features(values: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.ndim != 2 or 0 in values.shape:
        shape = list(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise DataError(f"{what} must be a non-empty tensor of features [N, D], got {shape}")
    if not all(_finite(part) for part in values.split(_CHECK_ROWS)):
        raise DataError(f"{what} holds NaN or inf features; the model failed on those inputs")
    return values


def _queries(values: torch.Tensor, dim: int) -> torch.Tensor:
    x = _features(values, "features")
    if x.shape[1] != dim:
        raise DataError(f"features have {x.shape[1]} dimensions, the detector was fitted on {dim}; "
                        "score features from the layer it was fitted on")
    return x


def _labels(labels: torch.Tensor, count: int, num_classes: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.shape != (count,) or \
            labels.dtype != torch.int64:
        found = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, torch.Tensor) else \
            type(labels).__name__
        raise DataError(f"labels must be int64 [N] with N = {count}, got {found}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DataError(f"labels must lie in [0, {num_classes}), found "
                        f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def _batch(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The batch as float64, after checking it and its labels."""
    x = _features(features, "features")
    _labels(labels, len(x), num_classes)
    return x.double()


def _check_counts(counts: torch.Tensor, classes: Iterable[str] | None) -> None:
    """DataError for a class with fewer than the two features its mean and spread need."""
    names = list(classes) if classes is not None else [str(k) for k in range(len(counts))]
    scarce = int(counts.argmin())
    if counts[scarce] == 0:
        raise DataError(f"class {names[scarce]!r} has no training features; check that the "
                        "training labels cover every class of the model")
    if counts[scarce] < 2:
        raise DataError(f"class {names[scarce]!r} has {int(counts[scarce])} training "
                        "feature(s); a class mean and its spread need at least two, so give it "
                        "more training data")


@dataclass
class _ClassSums:
    """Per-class counts and feature sums and a second moment, accumulated batch by batch in
    float64 (a million 512-d features sum without losing the covariance); the two Gaussian
    fits differ only in the second moment they keep (``_empty``, ``_add``)."""

    num_classes: int
    counts: torch.Tensor = field(init=False)
    sums: torch.Tensor | None = field(init=False, default=None)
    second: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.counts = torch.zeros(self.num_classes, dtype=torch.float64)

    def _empty(self, size: int) -> torch.Tensor:
        raise NotImplementedError

    def _add(self, x: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> None:
        raise NotImplementedError

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> Self:
        """Add a batch of features [B, D] and their int64 labels [B]."""
        x = _batch(features, labels, self.num_classes)
        size = x.shape[1]
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, size, dtype=torch.float64)
            self.second = self._empty(size)
        if size != self.sums.shape[1]:
            raise DataError(f"features have {size} dimensions, earlier batches "
                            f"{self.sums.shape[1]}")
        counts = torch.bincount(labels, minlength=self.num_classes)
        self.sums.index_put_((labels,), x, accumulate=True)  # index_add_ is slow threaded
        self._add(x, labels, counts)
        self.counts += counts
        return self

    def _sums(self, classes: Iterable[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The sums and second moment, once every class has two features (else DataError)."""
        if self.sums is None or self.second is None:
            raise DataError("no features were given to fit the Gaussians on")
        _check_counts(self.counts, classes)
        return self.sums, self.second


@dataclass
class GaussianFit(_ClassSums):
    """Class-conditional Gaussians with one shared covariance, fitted from streaming sums.

    ``update(features, labels)`` adds a batch; ``finish()`` gives the class means, the shared
    covariance Sigma = (1/N) sum_k sum_{i in k} (x_i - mu_k)(x_i - mu_k)^T, and the background
    Gaussian (mean and covariance of all features) that relative Mahalanobis needs.
    """

    def _empty(self, size: int) -> torch.Tensor:
        return torch.zeros(size, size, dtype=torch.float64)

    def _add(self, x: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> None:
        assert self.second is not None
        self.second.addmm_(x.T, x)

    def finish(self, classes: Iterable[str] | None = None) -> Gaussians:
        """The fitted Gaussians; DataError for a class with fewer than two features."""
        sums, second = self._sums(classes)
        total = float(self.counts.sum())
        means = sums / self.counts[:, None]
        within = (second - (means.T * self.counts) @ means) / total
        mean = sums.sum(0) / total
        background = second / total - torch.outer(mean, mean)
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
        bank_chunk: int = 16384) -> torch.Tensor:
    """Distance to the k-th nearest training feature, both L2-normalised (Sun et al., "Out-of-
    distribution detection with deep nearest neighbors", ICML 2022). Float32 [N], higher =
    more likely OOD.

    The bank is normalised ``bank_chunk`` rows at a time, once, and each part meets the queries
    ``chunk`` at a time, keeping the k largest cosine similarities so far: memory is N x k plus
    chunk x bank_chunk, whatever the bank's size. For unit vectors ||a - b||^2 = 2 - 2 a.b, so
    a matrix product ranks the neighbours and the k-th gives the distance.
    """
    bank = _features(bank, "bank")
    features = _features(features, "features")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(bank):
        raise DataError(f"k must be an integer in [1, {len(bank)}] (the bank's size), got {k!r}")
    if bank.shape[1] != features.shape[1]:
        raise DataError(f"features have {features.shape[1]} dimensions, the bank "
                        f"{bank.shape[1]}")
    normal = torch.nn.functional.normalize
    nearest = torch.full((len(features), k), -float("inf"))
    for part in bank.split(bank_chunk):
        part = normal(part.float(), dim=1)
        for start in range(0, len(features), chunk):
            rows = slice(start, start + chunk)
            similar = normal(features[rows].float(), dim=1) @ part.T
            top = similar.topk(min(k, len(part)), dim=1).values
            nearest[rows] = torch.cat([nearest[rows], top], 1).topk(k, dim=1).values
    return (2 - 2 * nearest[:, k - 1]).clamp_min(0).sqrt()


@dataclass(frozen=True)
class Head:
    """The model's last nn.Linear, logits = features @ weight.T + bias: ViM and ReAct compute
    the logits of features they change (project, clip), so they need the layer, not its output.

    ``weight`` is [K, D] and ``bias`` [K], as ``nn.Linear`` holds them; a layer built with
    ``bias=False`` has a zero bias.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self) -> None:
        weight, bias = self.weight, self.bias
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or 0 in weight.shape:
            found = list(weight.shape) if isinstance(weight, torch.Tensor) else \
                type(weight).__name__
            raise DataError(f"the head's weight must be the last nn.Linear's weight [K, D], "
                            f"got {found}")
        if not isinstance(bias, torch.Tensor) or bias.shape != (len(weight),):
            found = list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise DataError(f"the head's bias must be [K] = [{len(weight)}] like its weight "
                            f"{list(weight.shape)}, got {found}")
        if not (_finite(weight) and _finite(bias)):
            raise ModelError("the head's weight or bias holds NaN or inf; the model's last "
                             "nn.Linear is broken (check its training or checkpoint)")

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Float64 logits [N, K] of float features [N, D]."""
        return (features.double() @ self.weight.detach().double().T
                + self.bias.detach().double())

    def check(self, dim: int) -> Head:
        """The head, if it reads D = ``dim`` features; else DataError."""
        if self.weight.shape[1] != dim:
            raise DataError(f"the head's weight is {list(self.weight.shape)}, so it reads "
                            f"{self.weight.shape[1]} features, but the features have {dim}; give "
                            "the nn.Linear that the features feed")
        return self


def _vim_dim(dim: int) -> int:
    """Default principal dimension for D-dimensional features: 1000 from D = 1500, 512 from
    D = 768, else D // 2."""
    return 1000 if dim >= 1500 else 512 if dim >= 768 else dim // 2


@dataclass(frozen=True)
class VirtualLogit:
    """A fitted ViM: the head, the origin u [D], an orthonormal basis [D, D - dim] of the
    residual space (the complement of the principal subspace) and the scale alpha."""

    head: Head
    origin: torch.Tensor
    residual: torch.Tensor
    alpha: float


def fit_vim(features: torch.Tensor, head: Head, dim: int | None = None,
            batch_size: int = 4096) -> VirtualLogit:
    """ViM's subspace and alpha from training features, ``batch_size`` rows at a time (Wang et
    al., "ViM: Out-of-distribution with virtual-logit matching", CVPR 2022).

    The origin u = -pinv(W) b is where every logit is 0. The principal subspace holds the top
    ``dim`` eigenvectors of the uncentred second moment (1/N) sum (x - u)(x - u)^T, as the
    paper's code (EmpiricalCovariance(assume_centered=True) of x - u); alpha = sum max_k l_k(x)
    / sum ||residual(x)|| over the training features makes the virtual logit as large as the
    real ones on average. ``dim`` None takes 1000 for D >= 1500, 512 for D >= 768, else D // 2:
    a rule of thumb between the ViM authors' script (1000 from D = 2048, else 512) and OpenOOD's
    settings (256 for ResNet-18's 512 features); tune it on held-out data where you can.
    """
    x = _features(features, "training features")
    size = x.shape[1]
    dim = _vim_dim(size) if dim is None else dim
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim < size:
        raise ConfigError(f"ViM's principal dimension must be an integer in [1, {size}) for "
                          f"{size}-dimensional features, got {dim!r}; leave vim_dim None for "
                          f"the default ({_vim_dim(size)})")
    head = head.check(size)
    origin = -torch.linalg.pinv(head.weight.detach().double()) @ head.bias.detach().double()
    moment = torch.zeros(size, size, dtype=torch.float64)
    for part in x.split(batch_size):
        shifted = part.double() - origin
        moment.addmm_(shifted.T, shifted)
    values, vectors = torch.linalg.eigh(moment / len(x))  # ascending eigenvalues
    if float(values[:size - dim].clamp_min(0).sum()) <= 1e-12 * float(values.sum()):
        raise DataError(f"the training features span at most {dim} dimensions around ViM's "
                        f"origin, so their residual is 0 and alpha undefined; choose vim_dim "
                        "below the features' rank")
    residual = vectors[:, :size - dim]
    top_logits = norms = 0.0
    for part in x.split(batch_size):
        top_logits += float(head.logits(part).max(1).values.sum())
        norms += float(((part.double() - origin) @ residual).norm(dim=1).sum())
    return VirtualLogit(head, origin, residual, top_logits / norms)


def vim(fit: VirtualLogit, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """alpha ||residual(x - u)|| - logsumexp_k l_k(x), float32 [N], higher = more likely OOD.

    This is the log-odds log(p_0 / (1 - p_0)) of the virtual class, p_0 = softmax over
    [alpha ||residual||, l_1, ..., l_K] at index 0: the negated log of the paper's ID-ness
    (energy minus virtual logit), so it ranks inputs as the paper's ViM score does.
    """
    x = _queries(features, len(fit.origin))
    scores = []
    for part in x.split(batch_size):
        virtual = fit.alpha * ((part.double() - fit.origin) @ fit.residual).norm(dim=1)
        scores.append(virtual - torch.logsumexp(fit.head.logits(part), 1))
    return torch.cat(scores).float()


_EXACT_LIMIT = 2 ** 24  # activations ranked exactly: kthvalue copies them, 64 MiB of float32


def _percentile(values: torch.Tensor, q: float) -> float:
    """The q-quantile of a 1-d tensor with linear interpolation, as np.percentile, from two
    kthvalue selections: linear time, where torch.quantile sorts (and refuses over 2^24)."""
    position = q * (len(values) - 1)
    low = math.floor(position)
    lower = float(values.kthvalue(low + 1).values)
    if position == low:
        return lower
    return lower + (position - low) * (float(values.kthvalue(low + 2).values) - lower)


def react_clip(features: torch.Tensor, percentile: float = 90.0, seed: int = 0) -> float:
    """ReAct's clip c: the ``percentile``-th percentile of all training activations (linear
    interpolation, as np.percentile).

    Exact when the bank has at most 2^24 activations. A larger bank would need a copy of all of
    them to rank, so c is then the percentile of a seeded uniform sample (with replacement) of
    2^24 activations, drawn 2^20 at a time: the standard error of its rank is at most
    sqrt(0.25 / 2^24) = 1.2e-4.
    """
    x = _features(features, "training features")
    if x.numel() <= _EXACT_LIMIT:
        return _percentile(x.reshape(-1).float(), percentile / 100)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.empty(_EXACT_LIMIT)
    for part in sample.split(2 ** 20):
        part.copy_(x[torch.randint(len(x), (len(part),), generator=generator),
                     torch.randint(x.shape[1], (len(part),), generator=generator)])
    return _percentile(sample, percentile / 100)


def react_energy(head: Head, clip: float, features: torch.Tensor, batch_size: int = 4096
                 ) -> torch.Tensor:
    """Energy of the clipped features, -logsumexp_k (W min(x, c) + b)_k (Sun, Guo and Li,
    "ReAct: Out-of-distribution detection with rectified activations", NeurIPS 2021). Float32
    [N], higher = more likely OOD: clipping caps the few huge activations OOD inputs cause."""
    x = _queries(features, head.weight.shape[1])
    return torch.cat([-torch.logsumexp(head.logits(part.clamp(max=clip)), 1)
                      for part in x.split(batch_size)]).float()


_JITTERS = (0.0, *(float(f"1e{e}") for e in range(-20, 1)))
"""DDU's jitters, smallest first; the paper's code starts at 1e-308, where a dead feature (zero
variance) makes a log-density of order 1e308, so this ladder starts at 1e-20."""


@dataclass
class ClassGaussianFit(_ClassSums):
    """One Gaussian per class, each with its own covariance, fitted from streaming float64 sums
    (DDU's Gaussian discriminant analysis).

    ``update(features, labels)`` adds a batch; ``finish()`` gives the class means, the class
    covariances Sigma_k = (1/(n_k - 1)) sum_{i in k} (x_i - mu_k)(x_i - mu_k)^T (as the paper's
    code) and the priors n_k / N. Memory is K x D x D float64, whatever N.
    """

    def _empty(self, size: int) -> torch.Tensor:
        return torch.zeros(self.num_classes, size, size, dtype=torch.float64)

    def _add(self, x: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> None:
        assert self.second is not None
        for k, own in enumerate(x[labels.argsort()].split(counts.tolist())):
            self.second[k].addmm_(own.T, own)  # one gather: the classes' rows in a row

    def finish(self, classes: Iterable[str] | None = None) -> ClassGaussians:
        """The fitted Gaussians, with the smallest jitter (0, 1e-20, 1e-19, ..., 1) times the
        identity for which every class covariance has a Cholesky factor; DataError for a class
        with fewer than two features."""
        sums, second = self._sums(classes)
        means = sums / self.counts[:, None]
        outer = self.counts[:, None, None] * means[:, :, None] * means[:, None, :]
        covariances = (second - outer) / (self.counts - 1)[:, None, None]
        identity = torch.eye(means.shape[1], dtype=torch.float64)
        for jitter in _JITTERS:
            factors, info = torch.linalg.cholesky_ex(covariances + jitter * identity)
            if not bool(info.any()):
                return ClassGaussians(means, factors, (self.counts / self.counts.sum()).log(),
                                      jitter)
        raise DataError("the class covariances have no Cholesky factor even with jitter 1; the "
                        "features are too large in scale for DDU: standardise them first")


@dataclass(frozen=True)
class ClassGaussians:
    """Fitted class means [K, D], Cholesky factors [K, D, D] of Sigma_k + jitter I, log priors
    [K], and the jitter that was needed."""

    means: torch.Tensor
    cholesky: torch.Tensor
    log_priors: torch.Tensor
    jitter: float

    def log_density(self, features: torch.Tensor) -> torch.Tensor:
        """log q(x) = logsumexp_k [log pi_k + log N(x; mu_k, Sigma_k)], float64 [N], by one
        triangular solve per class: [N, D] at a time, never [N, K, D]."""
        x = _queries(features, self.means.shape[1]).double()
        size = x.shape[1]
        log_det = 2 * self.cholesky.diagonal(dim1=1, dim2=2).log().sum(1)
        constant = self.log_priors - 0.5 * (size * math.log(2 * math.pi) + log_det)
        distances = torch.stack([
            torch.linalg.solve_triangular(factor, (x - mean).T, upper=False).square().sum(0)
            for mean, factor in zip(self.means, self.cholesky, strict=True)], 1)
        return torch.logsumexp(constant - 0.5 * distances, 1)


def ddu(fit: ClassGaussians, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """-log q(x), the negated log-density under the class Gaussians (Mukhoti et al., "Deep
    deterministic uncertainty: a new simple baseline", CVPR 2023). Float32 [N], higher = more
    likely OOD. q weighs the classes by their frequency pi_k = n_k / N, as the paper's q(z) =
    sum_y q(z | y) q(y); the paper's code sums the class densities unweighted."""
    return torch.cat([-fit.log_density(part) for part in features.split(batch_size)]).float()


@dataclass(frozen=True)
class DetectorOptions:
    """Settings of the detectors that have any, and the rows processed at once."""

    k: int = 50
    react_percentile: float = 90.0
    vim_dim: int | None = None
    batch_size: int = 4096

    def __post_init__(self) -> None:
        for name in ("k", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        percentile = self.react_percentile
        if isinstance(percentile, bool) or not isinstance(percentile, int | float) or \
                not 0 <= percentile <= 100:
            raise ConfigError(f"react_percentile must be a number in [0, 100], got "
                              f"{percentile!r}; the paper uses 90")
        if self.vim_dim is not None and (isinstance(self.vim_dim, bool) or
                                         not isinstance(self.vim_dim, int) or self.vim_dim < 1):
            raise ConfigError(f"vim_dim must be a positive integer or None (the default for "
                              f"the features' size), got {self.vim_dim!r}")


Fitter = Callable[[torch.Tensor, torch.Tensor, Head | None, Sequence[str], DetectorOptions], Scorer]


@dataclass(frozen=True)
class Detector:
    """A registered detector: its formula and paper for reports, whether it needs the head, and
    ``fit(features, labels, head, classes, options)``, which gives its scorer."""

    name: str
    definition: str
    paper: str
    needs_head: bool
    fit: Fitter


def _training(features: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
              ) -> tuple[torch.Tensor, list[str]]:
    """The training features and class names, after checking them and the labels."""
    names = list(classes)
    if not names:
        raise ConfigError("classes must name the model's classes, one per logit; got none")
    x = _features(features, "training features")
    _labels(labels, len(x), len(names))
    return x, names


_Accumulator = TypeVar("_Accumulator", bound=_ClassSums)


def _streamed(fit: _Accumulator, features: torch.Tensor, labels: torch.Tensor, batch_size: int
              ) -> _Accumulator:
    for xs, ys in zip(features.split(batch_size), labels.split(batch_size), strict=True):
        fit.update(xs, ys)
    return fit


def _shared(features: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
            options: DetectorOptions) -> Gaussians:
    x, names = _training(features, labels, classes)
    return _streamed(GaussianFit(len(names)), x, labels, options.batch_size).finish(names)


def _fit_mahalanobis(features: torch.Tensor, labels: torch.Tensor, head: Head | None,
                     classes: Sequence[str], options: DetectorOptions) -> Scorer:
    fitted = _shared(features, labels, classes, options)
    return lambda queries: mahalanobis(fitted, queries, options.batch_size)


def _fit_relative(features: torch.Tensor, labels: torch.Tensor, head: Head | None,
                  classes: Sequence[str], options: DetectorOptions) -> Scorer:
    fitted = _shared(features, labels, classes, options)
    return lambda queries: relative_mahalanobis(fitted, queries, options.batch_size)


def _fit_knn(features: torch.Tensor, labels: torch.Tensor, head: Head | None,
             classes: Sequence[str], options: DetectorOptions) -> Scorer:
    """The bank is the training features themselves, kept by reference, not copied."""
    bank, _ = _training(features, labels, classes)
    if options.k > len(bank):
        raise ConfigError(f"k = {options.k} is more than the {len(bank)} training features; "
                          f"choose k <= {len(bank)}")
    return lambda queries: knn(bank, queries, k=options.k)


def _needed(head: Head | None, name: str) -> Head:
    if head is None:
        raise ConfigError(f"detector {name!r} needs the head, the weight and bias of the "
                          "logits' last nn.Linear (the layer the features feed): pass "
                          "Head(layer.weight, layer.bias)")
    return head


def _fit_vim(features: torch.Tensor, labels: torch.Tensor, head: Head | None,
             classes: Sequence[str], options: DetectorOptions) -> Scorer:
    x, _ = _training(features, labels, classes)
    fitted = fit_vim(x, _needed(head, "vim"), options.vim_dim, options.batch_size)
    return lambda queries: vim(fitted, queries, options.batch_size)


def _fit_react(features: torch.Tensor, labels: torch.Tensor, head: Head | None,
               classes: Sequence[str], options: DetectorOptions) -> Scorer:
    x, _ = _training(features, labels, classes)
    needed = _needed(head, "react_energy").check(x.shape[1])
    clip = react_clip(x, options.react_percentile)
    return lambda queries: react_energy(needed, clip, queries, options.batch_size)


def _fit_ddu(features: torch.Tensor, labels: torch.Tensor, head: Head | None,
             classes: Sequence[str], options: DetectorOptions) -> Scorer:
    x, names = _training(features, labels, classes)
    fitted = _streamed(ClassGaussianFit(len(names)), x, labels, options.batch_size).finish(names)
    return lambda queries: ddu(fitted, queries, options.batch_size)


DETECTORS: Mapping[str, Detector] = MappingProxyType({detector.name: detector for detector in (
    Detector("mahalanobis", "min_k (x - mu_k)^T Sigma^-1 (x - mu_k), Sigma shared by the classes",
             "Lee et al., NeurIPS 2018", False, _fit_mahalanobis),
    Detector("relative_mahalanobis", "min_k MD_k(x) - MD_0(x), MD_0 under one Gaussian of all "
             "training features", "Ren et al., arXiv 2021", False, _fit_relative),
    Detector("knn", "||z - z_(k)|| with z = x / ||x|| and z_(k) the k-th nearest normalised "
             "training feature", "Sun et al., ICML 2022", False, _fit_knn),
    Detector("vim", "alpha ||(x - u) P_res|| - log sum_k exp l_k(x), u = -W^+ b, alpha = "
             "sum max_k l_k / sum ||(x - u) P_res|| on training", "Wang et al., CVPR 2022", True,
             _fit_vim),
    Detector("react_energy", "-log sum_k exp (W min(x, c) + b)_k, c the p-th percentile of "
             "training activations", "Sun, Guo and Li, NeurIPS 2021", True, _fit_react),
    Detector("ddu", "-log sum_k pi_k N(x; mu_k, Sigma_k + jitter I), pi_k = n_k / N",
             "Mukhoti et al., CVPR 2023", False, _fit_ddu),
)})
"""Read-only view of the detectors by name, in the order above."""


def get(name: str) -> Detector:
    """The detector called ``name``; an unknown name gets the closest match as a hint."""
    if name in DETECTORS:
        return DETECTORS[name]
    raise ConfigError(f"unknown detector {name!r}{did_you_mean(name, DETECTORS)}; known "
                      f"detectors: {', '.join(DETECTORS)}")


def fit(name: str, features: torch.Tensor, labels: torch.Tensor, head: Head | None,
        classes: Sequence[str], options: DetectorOptions = DetectorOptions()) -> Scorer:
    """Fit detector ``name`` on training features [N, D] with int64 labels [N] in [0, K), K =
    len(classes); ``head`` is the last nn.Linear's (None where ``needs_head`` is False). The
    scorer maps features [M, D] to float32 [M], higher = more likely OOD, in batches."""
    return get(name).fit(features, labels, head, classes, options)
