"""Predictive distributions as samples of probabilities [S, N, K].

Every uncertainty measure is a function of these samples, so a single model (S = 1), a deep
ensemble (S = M members), MC dropout (S = T stochastic passes) and an ensemble of MC-dropout
models (S = M x T, one mixture) all feed the same measures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from trustmap.data.dataset import check_images
from trustmap.errors import ConfigError, ModelError, did_you_mean
from trustmap.models import channels_last, to_channels_last
from trustmap.training import forward_in_batches


@dataclass(frozen=True)
class Prediction:
    """One pass of a predictive over a batch, with everything derived from it.

    Holds the logits of every sample [S, N, K]; probabilities and the rest are derived once,
    on first use, so every uncertainty measure reads the same forward passes. Logits that are
    not finite raise ModelError here, where every predictive and every cached pass comes
    through: softmax would turn them into NaN probabilities, an argmax of 0 and a vote ratio
    of 1, and every number after that would look valid.
    """

    sample_logits: torch.Tensor  # [S, N, K]

    def __post_init__(self) -> None:
        finite = torch.isfinite(self.sample_logits)
        if not finite.all():
            raise ModelError(f"{int((~finite).sum())} of {finite.numel()} of the model's "
                             "outputs (logits) are not finite (NaN or inf): its weights diverged "
                             "or are damaged, or the inputs are far from what it was trained on; "
                             "retrain it (delete the run's member files and run `trustmap "
                             "train` again) or check the inputs")

    @classmethod
    def from_probs(cls, probs: torch.Tensor) -> Prediction:
        """A Prediction from probabilities alone (their logs serve as logits)."""
        return cls(probs.clamp_min(1e-30).log())

    @cached_property
    def sample_probs(self) -> torch.Tensor:
        """[S, N, K] softmax of each sample."""
        return self.sample_logits.softmax(-1)

    @cached_property
    def mean_probs(self) -> torch.Tensor:
        """[N, K] the predictive distribution: the average of the samples' probabilities."""
        return self.sample_probs.mean(0)

    @property
    def predicted(self) -> torch.Tensor:
        """Class of the averaged probabilities (the ensemble's answer)."""
        return self.mean_probs.argmax(1)

    @property
    def votes(self) -> torch.Tensor:
        """[N, K] how many samples voted for each class."""
        classes = self.sample_probs.shape[2]
        return nn.functional.one_hot(self.sample_probs.argmax(2), classes).sum(0)

    @property
    def majority_vote(self) -> torch.Tensor:
        """Class with the most votes; ties go to the lowest class index."""
        return self.votes.argmax(1)

    @property
    def vote_ratio(self) -> torch.Tensor:
        """Share of samples that voted for the majority class, in [1/K, 1]."""
        return self.votes.max(1).values.float() / self.sample_probs.shape[0]


class Predictive(ABC):
    """A model or a set of models seen as a distribution over predictions."""

    def __init__(self, batch_size: int = 1024) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    @property
    @abstractmethod
    def num_samples(self) -> int:
        """S, the number of probability samples per input."""

    @abstractmethod
    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every sample, [S, N, K]."""

    def sample_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x).sample_probs

    def predict(self, x: torch.Tensor) -> Prediction:
        return Prediction(self.sample_logits(x))


def _eval_models(models: Sequence[nn.Module]) -> list[nn.Module]:
    if len(models) == 0:
        raise ConfigError("a predictive needs at least one model; got an empty list")
    for model in models:
        model.eval()
    return list(models)


def _dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


class Single(Predictive):
    """One deterministic model: S = 1."""

    def __init__(self, model: nn.Module, batch_size: int = 1024) -> None:
        super().__init__(batch_size)
        self.model = _eval_models([model])[0]

    @property
    def num_samples(self) -> int:
        return 1

    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return forward_in_batches(self.model, x, self.batch_size)[None]


class Ensemble(Predictive):
    """M independently trained members, each in eval mode: S = M."""

    def __init__(self, models: Sequence[nn.Module], batch_size: int = 1024) -> None:
        super().__init__(batch_size)
        self.models = _eval_models(models)

    @property
    def num_samples(self) -> int:
        return len(self.models)

    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return torch.stack([forward_in_batches(m, x, self.batch_size) for m in self.models])


class MCDropout(Predictive):
    """T stochastic passes with dropout on and everything else (e.g. BatchNorm) in eval mode.

    The T passes of a chunk run as one batch of T x n inputs, each row getting its own
    dropout mask; the layers before the first dropout, which every pass would compute alike,
    run once per input. Sampling is seeded and leaves the global RNG state untouched.
    """

    def __init__(self, model: nn.Module, samples: int = 20, seed: int = 0,
                 batch_size: int = 1024) -> None:
        super().__init__(batch_size)
        if samples < 1:
            raise ConfigError(f"samples must be >= 1, got {samples}")
        self.model = _eval_models([model])[0]
        self.dropouts = _dropout_modules(self.model)
        if not self.dropouts:
            name = getattr(model, "name", type(model).__name__)
            raise ModelError(f"model {name!r} has no dropout layers, so MC dropout would "
                             "return identical samples; build it with a dropout argument "
                             "(e.g. build('lenet', dropout=0.25)) or use Single/Ensemble")
        self.samples = samples
        self.seed = seed

    @property
    def num_samples(self) -> int:
        return self.samples

    @torch.no_grad()
    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        try:
            return self._passes(x, shared=True)
        except RuntimeError:
            # A tensor from before the first dropout meets one from after it (a skip across
            # the dropout): run every layer T times instead, from the same seed.
            return self._passes(x, shared=False)

    def _passes(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """T passes of every chunk of ``x``; with ``shared``, what comes before the first
        dropout runs once per input and its output is repeated T times there (a pre-hook), so
        only the layers that dropout makes random run T times. Both draw the same masks; the
        logits agree up to the rounding of the shared layers on a smaller batch (bit for bit
        for the default run's lenet, tested)."""
        device = next(self.model.parameters()).device
        chunk = max(1, self.batch_size // self.samples)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), channels_last(self.model), \
                self._repeat_before_first_dropout(shared) as repeat:
            torch.manual_seed(self.seed)
            for module in self.dropouts:
                module.train()
            try:
                parts = []
                for part in x.split(chunk):
                    part = part.to(device)
                    repeat.rows = len(part)
                    batch = part if shared else part.repeat(self.samples, 1, 1, 1)
                    logits = self.model(to_channels_last(batch)).float().cpu()
                    parts.append(logits.view(self.samples, len(part), -1))
            finally:
                for module in self.dropouts:
                    module.eval()
        return torch.cat(parts, dim=1)

    @contextmanager
    def _repeat_before_first_dropout(self, active: bool) -> Iterator[_Repeat]:
        repeat = _Repeat(self.samples)
        handles = [m.register_forward_pre_hook(repeat) for m in self.dropouts] if active else []
        try:
            yield repeat
        finally:
            for handle in handles:
                handle.remove()


class _Repeat:
    """A dropout pre-hook: the first dropout a forward pass reaches gets its input repeated T
    times (rows still number ``rows``); later ones already see T x rows and are left alone."""

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.rows = 0

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]
                 ) -> tuple[torch.Tensor, ...] | None:
        (features,) = args
        if len(features) != self.rows or self.samples == 1:
            return None
        repeated = features.repeat(self.samples, *[1] * (features.ndim - 1))
        if features.ndim == 4 and features.is_contiguous(memory_format=torch.channels_last):
            # a dropout mask is drawn in memory order: keep the layout the T passes would have
            repeated = repeated.contiguous(memory_format=torch.channels_last)
        return (repeated,)


class EnsembleMC(Predictive):
    """M members x T dropout passes, pooled into one mixture of S = M x T samples."""

    def __init__(self, models: Sequence[nn.Module], samples: int = 20, seed: int = 0,
                 batch_size: int = 1024) -> None:
        super().__init__(batch_size)
        self.members = [MCDropout(m, samples, seed + i, batch_size)
                        for i, m in enumerate(_eval_models(models))]

    @property
    def num_samples(self) -> int:
        return sum(m.num_samples for m in self.members)

    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.sample_logits(x) for m in self.members])


PREDICTIVES = ("single", "ensemble", "mc-dropout", "ensemble-mc")
MC_PREDICTIVES = ("mc-dropout", "ensemble-mc")


def _unknown(kind: str) -> ConfigError:
    return ConfigError(f"unknown predictive {kind!r}{did_you_mean(kind, PREDICTIVES)}; "
                       f"choose one of {', '.join(PREDICTIVES)}")


def check_predictive(kind: str, samples: int) -> None:
    """ConfigError unless ``kind`` names a predictive and, for the MC ones, ``samples`` asks
    for at least two passes: one pass has no spread, so its uncertainty would read as zero.

    For commands, to refuse before any model is loaded or file written.
    """
    if kind not in PREDICTIVES:
        raise _unknown(kind)
    if kind in MC_PREDICTIVES and (isinstance(samples, bool) or not isinstance(samples, int)
                                   or samples < 2):
        raise ConfigError(f"samples must be an integer >= 2 for {kind} (dropout passes per "
                          f"model; one pass has no spread to measure), got {samples!r}")


def make_predictive(kind: str, models: Sequence[nn.Module], samples: int = 20, seed: int = 0,
                    batch_size: int = 1024) -> Predictive:
    """Build a predictive by name; ``single`` uses the first model."""
    if kind == "single":
        return Single(models[0], batch_size)
    if kind == "ensemble":
        return Ensemble(models, batch_size)
    if kind == "mc-dropout":
        return MCDropout(models[0], samples, seed, batch_size)
    if kind == "ensemble-mc":
        return EnsembleMC(models, samples, seed, batch_size)
    raise _unknown(kind)


def predict_kinds(kinds: Sequence[str], models: Sequence[nn.Module], x: torch.Tensor,
                  samples: int = 20, seed: int = 0, batch_size: int = 1024
                  ) -> dict[str, Prediction]:
    """Predictions of several predictives, sharing forward passes between them.

    ``single`` is the ensemble's first member and ``mc-dropout`` is the first member's passes
    within ``ensemble-mc`` (same seeds), so each is sliced out rather than computed again.
    The results equal ``make_predictive(kind, ...).predict(x)`` exactly.
    """
    unknown = [k for k in kinds if k not in PREDICTIVES]
    if unknown:
        raise ConfigError(f"unknown predictive {unknown[0]!r}"
                          f"{did_you_mean(unknown[0], PREDICTIVES)}; "
                          f"choose from {', '.join(PREDICTIVES)}")
    out: dict[str, Prediction] = {}
    if {"single", "ensemble"} & set(kinds):
        logits = Ensemble(models if "ensemble" in kinds else models[:1],
                          batch_size).sample_logits(x)
        out["single"], out["ensemble"] = Prediction(logits[:1]), Prediction(logits)
    if {"mc-dropout", "ensemble-mc"} & set(kinds):
        pool = models if "ensemble-mc" in kinds else models[:1]
        logits = EnsembleMC(pool, samples, seed, batch_size).sample_logits(x)
        out["mc-dropout"], out["ensemble-mc"] = Prediction(logits[:samples]), Prediction(logits)
    return {kind: out[kind] for kind in kinds}
