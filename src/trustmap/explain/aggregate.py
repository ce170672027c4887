"""Explanations of a predictive: one map per sample (ensemble member or dropout pass), summed up.

A deep ensemble or an MC-dropout model is a distribution over models, so it has a distribution
over explanations too. This module computes the maps of every sample [S, N, C, H, W] for the
class the predictive predicts, summarises them per pixel (mean, std, CV), and registers measures of
how much the samples disagree as uncertainty measures, so they are judged like entropy or mutual
information (e.g. by their OOD-detection AUROC). It also builds seed 001's class saliency maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trustmap.data.dataset import check_images
from trustmap.errors import ConfigError, DataError
from trustmap.explain.core import Target, as_targets
from trustmap.explain.methods import SINGLE_PASS, Method, MethodRef, resolve, single_pass
from trustmap.explain.reduce import minmax
from trustmap.explain.similarity import pairwise_mean
from trustmap.models import channels_last, to_channels_last
from trustmap.predictive import Ensemble, EnsembleMC, MCDropout, Predictive, Single


def _chunks(method: Method, model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
            batch_size: int, options: dict[str, object]) -> torch.Tensor:
    """One model's maps of every input, in chunks, with the model held channels-last.

    Convolutions run about 1.5x faster in that layout on CPU (measured: gradient on lenet);
    the weights go back to the default layout afterwards.
    """
    with channels_last(model):
        return torch.cat([method(model, to_channels_last(part), t, **options).cpu()
                          .contiguous() for part, t in zip(x.split(batch_size),
                                                           targets.split(batch_size),
                                                           strict=True)])


def _dropout_samples(method: Method, predictive: MCDropout, x: torch.Tensor,
                     targets: torch.Tensor, batch_size: int, options: dict[str, object]
                     ) -> torch.Tensor:
    """T maps per input: the inputs repeated T times in one batch, each row its own mask."""
    t = predictive.samples
    chunk = max(1, batch_size // t)
    model = predictive.model
    parts = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(predictive.seed)
        for module in predictive.dropouts:
            module.train()
        try:
            with channels_last(model):
                for part, part_targets in zip(x.split(chunk), targets.split(chunk),
                                              strict=True):
                    repeated = to_channels_last(part.repeat(t, 1, 1, 1))
                    maps = method(model, repeated, part_targets.repeat(t), **options)
                    parts.append(maps.cpu().contiguous().view(t, len(part), *part.shape[1:]))
        finally:
            for module in predictive.dropouts:
                module.eval()
    return torch.cat(parts, dim=1)


def attribute_samples(method: MethodRef, predictive: Predictive, x: torch.Tensor,
                      target: Target | None = None, *, batch_size: int = 256,
                      **options: object) -> torch.Tensor:
    """Maps [S, N, C, H, W] of every sample of ``predictive``, for ``target``.

    ``method`` is any method reference (``methods.resolve``): a registered name,
    "captum:Name", a Captum Attribution class or instance (rebound to every member), or a
    callable. ``target`` defaults to the class the predictive predicts (the argmax of its mean
    probabilities), so every member explains the same, ensemble-level decision, as in seed 000.
    """
    check_images(x)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    name, function = resolve(method)
    if isinstance(predictive, MCDropout | EnsembleMC) and not single_pass(method):
        raise ConfigError(f"{name!r} runs several forward passes per map, and under MC "
                          "dropout each pass draws new masks, so its maps would mix models; "
                          f"use one of {', '.join(sorted(SINGLE_PASS))} (or Captum's "
                          "Saliency, InputXGradient, GuidedBackprop, Deconvolution)")
    if target is None:
        target = predictive.predict(x).predicted
    targets = as_targets(target, len(x))
    if isinstance(predictive, Single):
        return _chunks(function, predictive.model, x, targets, batch_size, options)[None]
    if isinstance(predictive, Ensemble):
        return torch.stack([_chunks(function, m, x, targets, batch_size, options)
                            for m in predictive.models])
    if isinstance(predictive, MCDropout):
        return _dropout_samples(function, predictive, x, targets, batch_size, options)
    if isinstance(predictive, EnsembleMC):
        return torch.cat([_dropout_samples(function, member, x, targets, batch_size, options)
                          for member in predictive.members])
    raise ConfigError(f"no way to explain a {type(predictive).__name__}; use Single, Ensemble, "
                      "MCDropout or EnsembleMC")


@dataclass(frozen=True)
class Summary:
    """Per-pixel statistics of the S maps of each input, [N, C, H, W] each."""

    mean: torch.Tensor
    std: torch.Tensor
    """Population standard deviation across samples (ddof 0), as seed 000."""
    cv: torch.Tensor
    """std / |mean|, and 0 where the mean is 0."""


def summarize(samples: torch.Tensor) -> Summary:
    """Mean, std and coefficient of variation across the sample axis of [S, N, C, H, W]."""
    _check_samples(samples)
    mean = samples.mean(0)
    std = samples.std(0, correction=0)
    magnitude = mean.abs()
    cv = torch.where(magnitude > 0, std / magnitude.clamp_min(torch.finfo(std.dtype).tiny),
                     torch.zeros_like(std))
    return Summary(mean, std, cv)


def _check_samples(samples: torch.Tensor) -> None:
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5 or 0 in samples.shape:
        shape = list(samples.shape) if isinstance(samples, torch.Tensor) else type(samples)
        raise DataError(f"expected maps of every sample [S, N, C, H, W], got {shape}")
    if not bool(torch.isfinite(samples).all()):
        raise DataError("the maps contain NaN or inf values; check the model and the method")


def seed000_uncertainty(samples: torch.Tensor) -> torch.Tensor:
    """Seed 000's U(x): mean over pixels of std/mean across the S min-max-normalised maps.

    Meant for Grad-CAM with ReLU (non-negative maps), as seed 000; each map is scaled to [0, 1]
    first, the std is the population std, and CV is 0 where the mean is 0. For S maps
    U <= sqrt(S - 1).
    """
    _check_samples(samples)
    if bool((samples < 0).any()):
        raise DataError("seed 000's CV measure needs non-negative maps (Grad-CAM with ReLU); "
                        "reduce signed maps first, e.g. with trustmap.explain.reduce.absolute")
    normalised = minmax(samples.flatten(0, 1)).view_as(samples)
    return summarize(normalised).cv.flatten(1).mean(1)


def rank_disagreement(samples: torch.Tensor) -> torch.Tensor:
    """1 - mean pairwise Spearman correlation of the samples' importance maps, [N].

    Importance is |sum over channels|, so a pixel ranks by how much it matters, whatever its
    sign. 0 when all samples order the pixels alike; about 1 when their orders are unrelated.
    A rank measure ignores the maps' scale, which differs between members for reasons unrelated
    to the input (e.g. the size of their logits).
    """
    _check_samples(samples)
    if samples.shape[0] == 1:
        return torch.zeros(samples.shape[1])
    importance = samples.sum(2).abs()
    return 1 - pairwise_mean(importance, "spearman")


def cosine_disagreement(samples: torch.Tensor) -> torch.Tensor:
    """1 - mean pairwise cosine similarity of the samples' signed maps, [N] in [0, 2]."""
    _check_samples(samples)
    if samples.shape[0] == 1:
        return torch.zeros(samples.shape[1])
    return 1 - pairwise_mean(samples, "cosine")


@dataclass(frozen=True)
class ClassSaliency:
    """Seed 001's class saliency map: the mean of N input-specific maps, with its uncertainty."""

    label: int
    """The class of the inputs."""
    explained: int
    """The output that was explained (seed 001 explained output 4 on class-0 images by mistake;
    here it is chosen explicitly and recorded)."""
    mean: torch.Tensor
    """[C, H, W] mean map."""
    sem: torch.Tensor
    """[C, H, W] standard error of the mean per pixel: sample std (ddof 1) / sqrt(N)."""
    n: int


def class_saliency(maps: torch.Tensor, label: int, explained: int) -> ClassSaliency:
    """Mean and SEM over the maps [N, C, H, W] of N inputs of one class (N >= 2)."""
    if maps.ndim != 4 or maps.shape[0] < 2:
        raise DataError("a class saliency map needs the maps of at least 2 inputs [N, C, H, W], "
                        f"got shape {list(maps.shape)}")
    n = maps.shape[0]
    return ClassSaliency(label, explained, maps.mean(0), maps.std(0, correction=1) / math.sqrt(n),
                         n)
