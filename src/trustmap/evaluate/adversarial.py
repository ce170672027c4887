"""L-inf adversarial attacks on a predictive, and how well uncertainty detects them.

Smith & Gal (2018) attack the predictive itself — one model, the ensemble mean or the
MC-dropout mean — and ask whether entropy or mutual information separates the adversarial
inputs from clean ones and from clean inputs with noise of the same L2 norm. So every attack
here maximises the negative log-likelihood of the true label under the *mean* probabilities
of a set of models (``mean_log_probs``), never under one member's logits.

Attacks work on float32 images in [0, 1], batched (chunks of ``batch_size`` inputs), and
touch neither the models' parameters' ``.grad`` nor their train/eval modes.

Success is counted only on inputs the attacked predictive classified correctly before the
attack (``success``): an input that was already wrong tells nothing about the attack.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from numbers import Integral, Real

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from trustmap.data.dataset import check_images
from trustmap.errors import ConfigError, DataError, ModelError
from trustmap.evaluate.ood import detection_metrics
from trustmap.models import channels_last, to_channels_last

Forward = Callable[[torch.Tensor], torch.Tensor]
"""x [N, C, H, W] -> log of the predictive's mean probabilities [N, K], differentiable in x."""


def _dropouts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextmanager
def _sampling_modes(models: Sequence[nn.Module], mc: bool) -> Iterator[None]:
    """Everything in eval mode (dropout in train mode when ``mc``), restored on exit.

    Each module's own flag is saved and written back, so a model that was left in train mode,
    or one with a hand-set mix of modes, comes back exactly as it was, even after an error.
    """
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
            if mc:
                for module in _dropouts(model):
                    module.train()
        yield
    finally:
        for module, training in saved:
            module.training = training


def mean_log_probs(models: Sequence[nn.Module], mc_samples: int = 0) -> Forward:
    """The differentiable log of the predictive's mean probabilities, the thing attacked.

    The members' log-softmax outputs are averaged in probability space with a log-mean-exp,
    which stays finite where a member is very confident. With ``mc_samples`` T > 0 each member
    runs T passes with only its dropout modules in train mode (fresh masks from torch's global
    RNG on every call: seed it with ``torch.manual_seed`` to repeat an attack), and all M x T
    passes form one mixture, as in ``EnsembleMC``. A single model is ``[model]``. Inputs go to
    each model's device and the result comes back on the input's device.
    """
    if len(models) == 0:
        raise ConfigError("mean_log_probs needs at least one model; got an empty list")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, Integral) or mc_samples < 0:
        raise ConfigError(f"mc_samples must be an integer >= 0 (0: deterministic passes), "
                          f"got {mc_samples!r}")
    models = list(models)
    passes = int(mc_samples)
    if passes > 0:
        for model in models:
            if not _dropouts(model):
                name = getattr(model, "name", type(model).__name__)
                raise ModelError(f"model {name!r} has no dropout layers, so mc_samples="
                                 f"{passes} would repeat one deterministic pass; build it "
                                 "with a dropout argument or use mc_samples=0")

    def forward(x: torch.Tensor) -> torch.Tensor:
        samples = []
        with _sampling_modes(models, mc=passes > 0):
            for model in models:
                device = next(model.parameters()).device
                inputs = x.to(device)
                if passes > 0:
                    inputs = inputs.repeat(passes, 1, 1, 1)
                with channels_last(model):  # faster convolutions; restored after the pass
                    logits = model(to_channels_last(inputs)).float().to(x.device)
                samples.append(logits.log_softmax(-1).view(max(passes, 1), len(x), -1))
        stacked = torch.cat(samples)
        return stacked.logsumexp(0) - math.log(len(stacked))

    return forward


def _check_attack(x: torch.Tensor, y: torch.Tensor, epsilon: float, batch_size: int) -> None:
    check_images(x, "x")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
        shape = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise DataError(f"y: expected int64 labels of shape [{len(x)}] (one per image in x), "
                        f"got {shape}")
    if (isinstance(epsilon, bool) or not isinstance(epsilon, Real)
            or not math.isfinite(epsilon) or not 0 < epsilon <= 1):
        raise ConfigError(f"epsilon must lie in (0, 1] (an L-inf radius for images in [0, 1], "
                          f"e.g. 0.1 or 8/255), got {epsilon!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _step_size(epsilon: float, steps: int, step_size: float | None) -> float:
    """``step_size`` as given, or 2.5 x epsilon / steps (Madry et al.'s choice).

    With sign steps the iterate reaches the ball's border from x in 40% of the steps (from the
    far side of a random start in 80%) and keeps moving along it for the rest.
    """
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    if step_size is None:
        return 2.5 * epsilon / steps
    if not isinstance(step_size, Real) or not math.isfinite(step_size) or step_size <= 0:
        raise ConfigError(f"step_size must be a positive number (or None for "
                          f"2.5 * epsilon / steps), got {step_size!r}")
    return float(step_size)


def _input_gradient(forward: Forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d NLL(y) / dx per input; the sum over inputs keeps each input's gradient unscaled.

    ``torch.autograd.grad`` on the input alone leaves every parameter's ``.grad`` untouched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.nll_loss(forward(x), y, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
    return gradient


def _project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Back into the L-inf ball around x, then into the image range [0, 1]."""
    return torch.clamp(x_adv, x - epsilon, x + epsilon).clamp(0.0, 1.0)


def _iterate(forward: Forward, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor,
             epsilon: float, steps: int, step_size: float, decay: float | None,
             batch_size: int) -> torch.Tensor:
    """Sign-gradient ascent from ``start``, projected after every step, chunk by chunk.

    ``decay`` None steps along sign(gradient) (BIM, PGD); a number accumulates the momentum
    g = decay * g + gradient / ||gradient||_1 per input and steps along sign(g) (MIM).
    """
    parts = []
    for x_part, y_part, x_adv in zip(x.split(batch_size), y.split(batch_size),
                                     start.split(batch_size), strict=True):
        momentum = torch.zeros_like(x_part)
        for _ in range(steps):
            direction = _input_gradient(forward, x_adv, y_part)
            if decay is not None:
                l1 = direction.abs().flatten(1).sum(1).clamp_min(1e-30)
                momentum = decay * momentum + direction / l1.view(-1, 1, 1, 1)
                direction = momentum
            x_adv = _project(x_adv + step_size * direction.sign(), x_part, epsilon)
        parts.append(x_adv.detach())
    return torch.cat(parts)


def fgsm(forward: Forward, x: torch.Tensor, y: torch.Tensor, epsilon: float,
         batch_size: int = 256) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of epsilon along sign(∇)."""
    _check_attack(x, y, epsilon, batch_size)
    parts = [(x_part.detach() + epsilon * _input_gradient(forward, x_part, y_part).sign())
             .clamp(0.0, 1.0)
             for x_part, y_part in zip(x.split(batch_size), y.split(batch_size), strict=True)]
    return torch.cat(parts)


def bim(forward: Forward, x: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int = 10,
        step_size: float | None = None, batch_size: int = 256) -> torch.Tensor:
    """Basic iterative method (Kurakin et al. 2017): FGSM steps from x itself, projected.

    The default step is 2.5 x epsilon / steps; Smith & Gal used about epsilon / steps
    (pass ``step_size=epsilon / steps`` to follow them).
    """
    _check_attack(x, y, epsilon, batch_size)
    step = _step_size(epsilon, steps, step_size)
    return _iterate(forward, x, y, x, epsilon, steps, step, None, batch_size)


def pgd(forward: Forward, x: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int = 10,
        step_size: float | None = None, generator: torch.Generator | None = None,
        batch_size: int = 256) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018): BIM from a uniform start in the ball.

    The start is drawn for all inputs at once, so it does not depend on ``batch_size``;
    ``generator`` None means a fresh generator seeded with 0, so runs repeat by default.
    """
    _check_attack(x, y, epsilon, batch_size)
    step = _step_size(epsilon, steps, step_size)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    noise = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
    start = _project(x + epsilon * (2 * noise - 1), x, epsilon)
    return _iterate(forward, x, y, start, epsilon, steps, step, None, batch_size)


def mim(forward: Forward, x: torch.Tensor, y: torch.Tensor, epsilon: float, steps: int = 10,
        decay: float = 1.0, step_size: float | None = None, batch_size: int = 256
        ) -> torch.Tensor:
    """Momentum iterative method (Dong et al. 2018): sign steps along accumulated gradients.

    Each input's gradient is L1-normalised before it enters the momentum, so inputs with tiny
    and large gradients weigh past steps alike; decay 0 is BIM. Dong et al. stepped
    epsilon / steps; the default here is BIM's 2.5 x epsilon / steps, so attacks compare at
    equal step sizes.
    """
    _check_attack(x, y, epsilon, batch_size)
    step = _step_size(epsilon, steps, step_size)
    if isinstance(decay, bool) or not isinstance(decay, Real) or not 0 <= decay < math.inf:
        raise ConfigError(f"decay must be a finite number >= 0 (1.0 in Dong et al.), "
                          f"got {decay!r}")
    return _iterate(forward, x, y, x, epsilon, steps, step, float(decay), batch_size)


Attack = Callable[..., torch.Tensor]
ATTACKS: dict[str, Attack] = {"fgsm": fgsm, "bim": bim, "pgd": pgd, "mim": mim}


def run_attack(name: str, forward: Forward, x: torch.Tensor, y: torch.Tensor, epsilon: float,
               **kwargs: object) -> torch.Tensor:
    """The attack called ``name``, with options checked so a config typo fails with a hint."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    attack = ATTACKS[name]
    options = list(inspect.signature(attack).parameters)[4:]  # after forward, x, y, epsilon
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(f"attack {name!r} does not take {', '.join(map(repr, unknown))}; "
                          f"it takes {', '.join(options)}")
    return attack(forward, x, y, epsilon, **kwargs)


def same_norm_noise(x: torch.Tensor, x_adv: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """x plus Gaussian noise with, per input, the L2 norm of the perturbation x_adv - x.

    The control of Smith & Gal: if a measure flags these as well as the adversarial inputs,
    it detects "perturbed", not "adversarial". The noise is clipped to [0, 1] like the attacks,
    which can shrink its norm a little near the borders (dark MNIST background, for instance);
    inputs whose perturbation is zero come back unchanged. ``generator`` None means a fresh
    generator seeded with 0.
    """
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise DataError(f"x_adv must have the shape of x {list(x.shape)}, "
                        f"got {list(x_adv.shape)}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    target = (x_adv - x).flatten(1).norm(dim=1)
    scale = target / noise.flatten(1).norm(dim=1).clamp_min(1e-30)
    return (x + noise * scale.view(-1, *[1] * (x.ndim - 1))).clamp(0.0, 1.0)


def success(labels: torch.Tensor, predicted_before: torch.Tensor,
            predicted_after: torch.Tensor) -> torch.Tensor:
    """Boolean [N]: the input was classified correctly before and is misclassified after.

    An input the predictive already got wrong is never a success, so report the success rate
    over the initially correct inputs (``success_rate``), not over all attempts.
    """
    if not labels.shape == predicted_before.shape == predicted_after.shape:
        raise DataError(f"labels, predicted_before and predicted_after must have one shape, "
                        f"got {list(labels.shape)}, {list(predicted_before.shape)} and "
                        f"{list(predicted_after.shape)}")
    return (predicted_before == labels) & (predicted_after != labels)


def success_rate(labels: torch.Tensor, predicted_before: torch.Tensor,
                 predicted_after: torch.Tensor) -> float:
    """Share of the initially correct inputs that the attack flipped; NaN if none was correct."""
    flipped = success(labels, predicted_before, predicted_after)
    correct = int((predicted_before == labels).sum())
    return float(flipped.sum()) / correct if correct else math.nan


def _metrics(negatives: torch.Tensor, positives: torch.Tensor) -> dict[str, float]:
    """``detection_metrics``, or NaN for each metric where one side has no inputs."""
    if negatives.numel() == 0 or positives.numel() == 0:
        return dict.fromkeys(("auroc", "aupr_in", "aupr_out", "fpr95"), math.nan)
    return detection_metrics(negatives, positives)


def detection_table(clean: Mapping[str, torch.Tensor], noisy: Mapping[str, torch.Tensor],
                    adversarial: Mapping[str, torch.Tensor], successful: torch.Tensor
                    ) -> pd.DataFrame:
    """How well each uncertainty score tells adversarial inputs from clean and noisy ones.

    Each mapping is measure name -> scores [N] (higher = more uncertain); ``successful``
    [N_adv] marks the adversarial inputs whose attack succeeded. One row per negatives
    ("clean" | "noise") x subset ("all" | "successful") x measure, the adversarial inputs
    being the positives; the negatives are always all clean (or noisy) inputs. Each row carries
    ``detection_metrics`` (auroc, aupr_in, aupr_out, fpr95) and the counts behind them; a
    subset with no inputs keeps its row, with NaN metrics.
    """
    measures = list(adversarial)
    for what, scores in (("clean", clean), ("noise", noisy)):
        if set(scores) != set(measures):
            raise DataError(f"the {what} scores name measures {sorted(scores)}, the adversarial "
                            f"ones {sorted(measures)}; give every set the same measures")
    mask = torch.as_tensor(successful).cpu()
    rows = []
    for measure in measures:
        positives = torch.as_tensor(adversarial[measure]).cpu()
        if mask.dtype != torch.bool or mask.shape != positives.shape:
            raise DataError(f"successful must be a boolean mask of shape {list(positives.shape)}"
                            f" (one per adversarial input), got {mask.dtype} "
                            f"{list(mask.shape)}")
        for kind, scores in (("clean", clean), ("noise", noisy)):
            negatives = torch.as_tensor(scores[measure]).cpu()
            for subset, chosen in (("all", positives), ("successful", positives[mask])):
                rows.append({"negatives": kind, "subset": subset, "measure": measure,
                             **_metrics(negatives, chosen),
                             "n_negatives": negatives.numel(), "n_positives": chosen.numel()})
    return pd.DataFrame(rows)
