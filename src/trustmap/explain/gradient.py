"""Gradient-family attributions: plain, ×input, integrated, noise-averaged and modified-ReLU.

Every method runs its whole batch (all inputs, and all steps or noise samples) through one
forward and one backward pass where it can, differentiates the explained logit with respect to
the input only (parameters are frozen meanwhile, so no weight gradients are computed), and never
changes the model's training mode: under MC dropout each forward draws its own masks, and the
attribution explains that stochastic forward.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.explain.core import (
    PASS_SIZE,
    Target,
    as_targets,
    check_inputs,
    frozen_parameters,
    selected,
)
from trustmap.explain.structure import require_relu_modules

IG_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
              "gausslegendre")
"""Integration rules of integrated_gradients, with Captum's step positions and weights."""


def prepare(model: nn.Module, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked images on the model's device and one checked class per image ([N] long)."""
    x = check_inputs(model, x)
    targets = as_targets(target, len(x), getattr(model, "num_classes", None))
    return x, targets.to(x.device)


def input_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d logit_target / d input for every row of an already checked batch: one forward, one
    backward, and no weight gradients."""
    with frozen_parameters(model), torch.enable_grad():
        leaf = inputs.detach().requires_grad_()  # a new leaf on the same storage: no copy
        (grad,) = torch.autograd.grad(selected(model(leaf), targets).sum(), leaf)
    return grad


def gradient(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """The signed gradient of the target logit with respect to the image (saliency, no abs)."""
    x, targets = prepare(model, x, target)
    return input_gradient(model, x, targets)


def gradient_x_input(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """Image times gradient: the first-order share of each pixel in the logit."""
    x, targets = prepare(model, x, target)
    return x * input_gradient(model, x, targets)


def _count(what: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _quadrature(method: str, steps: int) -> tuple[list[float], list[float]]:
    """(weights, positions in [0, 1]) of an integration rule, exactly as Captum computes them."""
    if method not in IG_METHODS:
        raise ConfigError(f"unknown integration method {method!r}; choose one of "
                          f"{', '.join(IG_METHODS)}")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (0.5 * weights).tolist(), (0.5 * (1 + nodes)).tolist()
    if method == "riemann_trapezoid" and steps < 2:
        raise ConfigError(f"riemann_trapezoid needs steps >= 2 (both ends), got {steps}")
    weights = [1 / steps] * steps
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
    first, last = {"riemann_left": (0.0, 1 - 1 / steps),
                   "riemann_right": (1 / steps, 1.0),
                   "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)),
                   "riemann_trapezoid": (0.0, 1.0)}[method]
    # A float32 linspace, as Captum's, so the positions agree to the last bit.
    return weights, torch.linspace(first, last, steps, dtype=torch.float32).tolist()


def _baseline(baseline: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The baseline as a view broadcast to x's shape (no copy)."""
    if isinstance(baseline, torch.Tensor):
        try:
            shape = torch.broadcast_shapes(baseline.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise DataError(f"baseline of shape {list(baseline.shape)} does not broadcast to the "
                            f"images' shape {list(x.shape)}")
        base = baseline.detach().to(device=x.device, dtype=x.dtype)
    elif isinstance(baseline, Real) and not isinstance(baseline, bool):
        base = torch.tensor(float(baseline), device=x.device, dtype=x.dtype)
    else:
        raise ConfigError(f"baseline must be a number or a tensor, got {baseline!r}")
    if not bool(torch.isfinite(base).all()):
        raise DataError("the baseline contains NaN or inf values")
    return base.expand_as(x)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: Target, *,
                         baseline: float | torch.Tensor = 0.0, steps: int = 32,
                         method: str = "gausslegendre",
                         chunk_size: int | None = PASS_SIZE) -> torch.Tensor:
    """(x - baseline) times the path integral of the gradient from baseline to x.

    The baseline lives in image space ([0, 1], before the model's normalisation); a tensor
    broadcasts to x. Step positions and weights are Captum's for every `method`, so results
    equal ``IntegratedGradients(model).attribute(x, baselines, target, n_steps, method)``.
    Steps of all inputs are batched into passes of at most `chunk_size` images (whole steps of
    all inputs where they fit), which bounds memory and keeps activations in cache; None puts
    everything into one pass.
    """
    x, targets = prepare(model, x, target)
    steps = _count("steps", steps, 1)
    if chunk_size is not None:
        chunk_size = _count("chunk_size", chunk_size, 1)
    step_weights, step_alphas = _quadrature(method, steps)
    base = _baseline(baseline, x)
    n = len(x)
    chunk = steps * n if chunk_size is None else chunk_size
    steps_per_pass, items_per_pass = max(1, chunk // n), min(n, chunk)
    alphas = torch.tensor(step_alphas, dtype=x.dtype, device=x.device)
    # Captum weighs in float32 whatever the input's precision; so do we, to agree with it.
    weights = torch.tensor(step_weights, dtype=torch.float32).to(x.device, x.dtype)
    delta = x - base
    total = torch.zeros_like(x)
    for first in range(0, steps, steps_per_pass):
        alpha = alphas[first:first + steps_per_pass]
        weight = weights[first:first + steps_per_pass]
        for start in range(0, n, items_per_pass):
            rows = slice(start, start + items_per_pass)
            # [k steps, m inputs] flattened step-major, as Captum orders its expanded batch.
            points = (base[rows] + alpha.view(-1, 1, 1, 1, 1) * delta[rows]).flatten(0, 1)
            grads = input_gradient(model, points, targets[rows].repeat(len(alpha)))
            total[rows] += torch.tensordot(weight, grads.view(len(alpha), -1, *x.shape[1:]), 1)
    return total.mul_(delta)


def _noisy_gradients(model: nn.Module, x: torch.Tensor, target: Target, samples: int,
                     sigma: float, seed: int) -> torch.Tensor:
    """Gradients at `samples` noisy copies of every input, [N, samples, C, H, W]."""
    x, targets = prepare(model, x, target)
    samples = _count("samples", samples, 1)
    if (isinstance(sigma, bool) or not isinstance(sigma, Real) or not math.isfinite(sigma)
            or sigma < 0):
        raise ConfigError(f"sigma must be a finite number >= 0 (noise std in image units), "
                          f"got {sigma!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator(device=x.device)
    generator.manual_seed(int(seed))
    n = len(x)
    # Input-major order ([N, samples]) and z * sigma, as Captum's NoiseTunnel draws its noise:
    # the same seed in the global generator gives Captum exactly this noise.
    noisy = torch.randn((n * samples, *x.shape[1:]), generator=generator, device=x.device,
                        dtype=x.dtype).mul_(sigma)
    noisy.view(n, samples, *x.shape[1:]).add_(x.unsqueeze(1))
    repeated = targets.repeat_interleave(samples)
    grads = torch.cat([input_gradient(model, part, part_targets) for part, part_targets
                       in zip(noisy.split(PASS_SIZE), repeated.split(PASS_SIZE), strict=True)])
    return grads.view(n, samples, *x.shape[1:])


def smoothgrad(model: nn.Module, x: torch.Tensor, target: Target, *, samples: int = 16,
               sigma: float = 0.15, seed: int = 0) -> torch.Tensor:
    """Mean gradient over Gaussian-noised copies of x (Smilkov et al. 2017).

    `sigma` is the noise's standard deviation in image units ([0, 1] scale), the same for every
    image. Noisy images are not clamped to [0, 1]: SmoothGrad averages the gradient over a
    Gaussian neighbourhood of x, and clamping would bias that neighbourhood near black and
    white pixels. Noise comes from a generator seeded with `seed` (the global RNG is untouched),
    so equal seeds give equal maps; the noisy copies of all inputs run in passes of PASS_SIZE.
    """
    return _noisy_gradients(model, x, target, samples, sigma, seed).mean(1)


def vargrad(model: nn.Module, x: torch.Tensor, target: Target, *, samples: int = 16,
            sigma: float = 0.15, seed: int = 0) -> torch.Tensor:
    """Population variance of the gradient over Gaussian-noised copies of x (Adebayo et al.).

    Same noise and arguments as smoothgrad; the variance is Captum's (mean of squares minus
    squared mean), computed in two passes so it never comes out negative.
    """
    grads = _noisy_gradients(model, x, target, samples, sigma, seed)
    return torch.var(grads, dim=1, correction=0)


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients, and only where the input was > 0."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad.clamp(min=0).masked_fill_(out <= 0, 0)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is relu(grad), whatever the forward input was."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


def modified_relu_gradient(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                           guided: bool) -> torch.Tensor:
    """The input gradient with every nn.ReLU module's backward replaced, for checked inputs.

    Temporary forward hooks swap each ReLU module's output for one built by the replacement
    function; they are removed whatever happens. Functional relus are not modules and keep
    their ordinary backward (as in Captum): the public methods refuse models that have any
    (``structure.require_relu_modules``); this engine does not check.
    """
    relu = _GuidedReLU if guided else _DeconvReLU

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...],
             output: torch.Tensor) -> torch.Tensor:
        return relu.apply(args[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        return input_gradient(model, x, targets)
    finally:
        for handle in handles:
            handle.remove()


def guided_backprop(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015): through every nn.ReLU, only positive
    gradients pass, and only where the forward input was positive.

    A model that applies relu as a function (F.relu, torch.relu), has no nn.ReLU module, or is
    TorchScript gets a ModelError saying where (``structure.require_relu_modules``): there the
    result would silently be (partly) the plain gradient.
    """
    x, targets = prepare(model, x, target)
    require_relu_modules(model, x, "guided backprop")
    return modified_relu_gradient(model, x, targets, guided=True)


def deconvnet(model: nn.Module, x: torch.Tensor, target: Target) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): every nn.ReLU passes relu(gradient) backwards,
    regardless of its forward input. Models without that structure are refused as by
    guided_backprop."""
    x, targets = prepare(model, x, target)
    require_relu_modules(model, x, "deconvnet")
    return modified_relu_gradient(model, x, targets, guided=False)
