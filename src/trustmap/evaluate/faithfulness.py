"""Faithfulness of attribution maps: does removing what a map calls relevant hurt the model most?

Region perturbation (Samek et al. 2017) replaces the image's patch x patch regions one after
another, in the order a map ranks them, and records the explained class's output after every
step. A faithful map makes the output drop fast when the most relevant regions go first (MoRF)
and slowly when the least relevant go first (LeRF); a seeded random order is the yardstick.
Pixel flipping is the same with 1x1 regions.

Everything is batched over inputs: each step is one forward pass of all N perturbed images (in
chunks of ``batch_size``, without gradients). The model runs in the mode it is in, so put it in
eval mode for a deterministic curve; its buffers (BatchNorm statistics) are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import pandas as pd
import torch
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.explain.core import Target, as_targets, check_inputs, kept_buffers
from trustmap.models import channels_last
from trustmap.training import forward_in_batches

ORDERS = ("morf", "lerf", "random")
"""Most relevant first, least relevant first, and a seeded random order (the baseline)."""

BASELINES = ("uniform", "mean")
"""Named fills besides a constant value: seeded uniform noise, or each image's channel mean."""

OUTPUTS = ("prob", "logit")


@dataclass(frozen=True)
class PerturbationCurve:
    """The explained class's output of N inputs after each of K perturbation steps.

    Column 0 is the unperturbed input, column k the input with its first k regions replaced,
    so every tensor has K + 1 columns.
    """

    order: str
    patch: int
    logits: torch.Tensor
    """[N, K+1] the target's logit."""
    probs: torch.Tensor
    """[N, K+1] the target's softmax probability."""
    predicted: torch.Tensor
    """[N, K+1] the predicted class (argmax of the logits)."""

    @property
    def steps(self) -> int:
        return self.logits.shape[1] - 1

    def values(self, output: str = "prob") -> torch.Tensor:
        """The curve of the target's probability ("prob") or logit ("logit"), [N, K+1]."""
        if output not in OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        return self.probs if output == "prob" else self.logits

    def aopc_of(self, output: str = "prob") -> torch.Tensor:
        """Area over the perturbation curve per input, [N]: mean over k = 0..K of f(x_0) - f(x_k).

        The k = 0 term is zero and counts, as in Samek et al. (2017), so AOPC = (1/(K+1)) sum.
        Higher under MoRF means a more faithful map; under LeRF, lower is better.
        """
        values = self.values(output)
        return (values[:, :1] - values).mean(1)

    @property
    def aopc(self) -> torch.Tensor:
        """AOPC of the target's softmax probability, [N] (bounded in [-1, 1], comparable
        across models; ``aopc_of("logit")`` gives it on the logit)."""
        return self.aopc_of("prob")

    @property
    def flips_to_change(self) -> torch.Tensor:
        """Per input, the first step at which the predicted class differs from step 0's, [N].

        An input whose prediction never changes gets K + 1, one past the last step, so that
        "more steps needed" stays ordered and the mean stays finite.
        """
        changed = self.predicted != self.predicted[:, :1]
        first = changed.int().argmax(1)  # the first True; 0 where there is none
        return torch.where(changed.any(1), first, torch.full_like(first, self.steps + 1))

    @property
    def mean_curve(self) -> torch.Tensor:
        """The target's probability after each step, averaged over inputs, [K+1]."""
        return self.probs.mean(0)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _checked_maps(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or maps.shape != x.shape:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise DataError(f"maps must be a tensor shaped like the inputs {list(x.shape)}, got "
                        f"{shape}; pass the attribution method's output unreduced")
    if not bool(torch.isfinite(maps).all()):
        raise DataError("maps contain NaN or inf values; the ranking of regions is undefined")
    return maps.to(x.device, torch.float32)


def _fill(x: torch.Tensor, baseline: float | str, generator: torch.Generator) -> torch.Tensor:
    """What replaces a removed region, per pixel: [N, C, H, W]."""
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ConfigError(f"baseline must be a value in [0, 1] or one of "
                              f"{', '.join(BASELINES)}, got {baseline!r}")
        if baseline == "uniform":
            return torch.rand(x.shape, generator=generator).to(x.device)
        return x.mean((2, 3), keepdim=True).expand_as(x)
    if isinstance(baseline, bool) or not isinstance(baseline, Real) or not 0 <= baseline <= 1:
        raise ConfigError(f"baseline must be a value in [0, 1] (inputs live there) or one of "
                          f"{', '.join(BASELINES)}, got {baseline!r}")
    return torch.full_like(x, float(baseline))


def _region_ranks(maps: torch.Tensor, patch: int, order: str, generator: torch.Generator
                  ) -> torch.Tensor:
    """Each region's position in the removal order, [N, R] (regions row-major)."""
    n, _, height, width = maps.shape
    relevance = maps.sum(1).view(n, height // patch, patch, width // patch, patch).sum((2, 4))
    relevance = relevance.flatten(1)
    if order == "random":
        sequence = torch.rand(relevance.shape, generator=generator).argsort(1)
    else:
        # Stable, so tied regions (flat maps) go in reading order for MoRF and LeRF alike.
        sequence = relevance.double().cpu().argsort(dim=1, descending=order == "morf", stable=True)
    positions = torch.arange(sequence.shape[1]).expand_as(sequence)
    return torch.empty_like(sequence).scatter_(1, sequence, positions).to(maps.device)


@torch.no_grad()
def region_perturbation(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, target: Target, *,
                        patch: int = 4, steps: int | None = None, order: str = "morf",
                        baseline: float | str = 0.0, seed: int = 0, batch_size: int = 1024
                        ) -> PerturbationCurve:
    """Replace regions in the order ``maps`` ranks them and record the target's output.

    Regions are non-overlapping ``patch`` x ``patch`` squares (H and W must be multiples of
    ``patch``), ranked by the map's relevance summed over the region and over channels. Step k
    replaces the k-th region, in all channels, by ``baseline``: a constant in [0, 1],
    "uniform" (seeded noise, the same for every order) or "mean" (each image's channel mean).
    ``steps`` defaults to every region (49 for 28x28 and patch 4); ``patch=1`` is pixel flipping.
    ``seed`` drives the noise and the "random" order, so both are reproducible.
    """
    x = check_inputs(model, x)
    maps = _checked_maps(maps, x)
    patch = _positive_int("patch", patch)
    batch_size = _positive_int("batch_size", batch_size)
    height, width = x.shape[-2:]
    if height % patch or width % patch:
        raise ConfigError(f"patch {patch} does not divide the {height}x{width} images into whole "
                          f"regions; choose a divisor of {math.gcd(height, width)}")
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    regions = (height // patch) * (width // patch)
    steps = regions if steps is None else _positive_int("steps", steps)
    if steps > regions:
        raise ConfigError(f"steps must be at most the number of regions ({regions} regions of "
                          f"{patch}x{patch}), got {steps}")
    generator = torch.Generator().manual_seed(seed)
    fill = _fill(x, baseline, generator)  # noise first: every order then sees the same noise
    ranks = _region_ranks(maps, patch, order, generator)
    pixel_region = (torch.arange(height, device=x.device)[:, None] // patch * (width // patch)
                    + torch.arange(width, device=x.device)[None, :] // patch)
    pixel_rank = ranks[:, pixel_region.flatten()].view(len(x), 1, height, width)

    logits, probs, predicted = [], [], []
    targets: torch.Tensor | None = None
    with kept_buffers(model), channels_last(model):
        for k in range(steps + 1):
            perturbed = torch.where(pixel_rank < k, fill, x)
            out = forward_in_batches(model, perturbed, batch_size)
            if targets is None:
                targets = as_targets(target, len(x), out.shape[1]).cpu().view(-1, 1)
            logits.append(out.gather(1, targets).squeeze(1))
            probs.append(out.softmax(1).gather(1, targets).squeeze(1))
            predicted.append(out.argmax(1))
    return PerturbationCurve(order=order, patch=patch, logits=torch.stack(logits, 1),
                             probs=torch.stack(probs, 1), predicted=torch.stack(predicted, 1))


def aopc_table(curves: Mapping[str, PerturbationCurve | Sequence[PerturbationCurve]], *,
               output: str = "prob") -> pd.DataFrame:
    """One row per (method, order): mean AOPC over inputs, its standard error, mean flips.

    ``curves`` maps a method's name to its curve, or to several curves (one per order, e.g.
    MoRF and LeRF of the same maps). ``aopc_sem`` is the standard error of the mean (sample
    std / sqrt(N)); NaN for a single input.
    """
    rows = []
    seen: set[tuple[str, str]] = set()
    for method, entry in curves.items():
        for curve in [entry] if isinstance(entry, PerturbationCurve) else entry:
            if (method, curve.order) in seen:
                raise DataError(f"method {method!r} has two curves of order {curve.order!r}; "
                                "give each (method, order) once")
            seen.add((method, curve.order))
            aopc = curve.aopc_of(output).double()
            n = len(aopc)
            sem = float(aopc.std() / math.sqrt(n)) if n > 1 else math.nan
            rows.append({"method": method, "order": curve.order, "patch": curve.patch,
                         "steps": curve.steps, "n": n, "aopc": float(aopc.mean()),
                         "aopc_sem": sem,
                         "flips_to_change": float(curve.flips_to_change.double().mean())})
    return pd.DataFrame(rows, columns=["method", "order", "patch", "steps", "n", "aopc",
                                       "aopc_sem", "flips_to_change"])
