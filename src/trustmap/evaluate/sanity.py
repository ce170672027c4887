"""Sanity check of attribution methods by cascading model-parameter randomisation.

Adebayo et al. (2018): an explanation that is about the model must change when the model's
learned weights are replaced by random ones. Layers are randomised one after another from the
output back to the input, and after each step the maps are compared, input by input, with the
maps of the trained model. A method whose similarity stays high (an edge detector, the input
itself) does not depend on what the model learned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.explain.core import Target, as_targets, check_inputs, module_named
from trustmap.explain.similarity import cosine, spearman
from trustmap.models.base import called_modules

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""An attribution method: explain(model, x, target) -> maps shaped like x."""

Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""similarity(a, b) of two batches of maps [N, C, H, W] -> one value per input [N]."""

SIMILARITIES: dict[str, Similarity] = {"spearman": spearman, "cosine": cosine}

WEIGHTED = (nn.Linear, nn.Conv2d)
"""The layers randomised by default. BatchNorm is left out: re-initialised it is the identity,
not random, and the convolution in front of it is randomised anyway; name BatchNorm layers in
``layers`` to randomise them too."""


def weighted_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the Linear and Conv2d layers ``model`` uses on ``x``, from output to input.

    The order comes from one dry forward pass with hooks (on one input), so it follows the
    computation rather than the order in which modules were registered; unused layers are left
    out. Run it on a copy when buffers must not move (BatchNorm in train mode).
    """
    called = called_modules(model, x, lambda module: isinstance(module, WEIGHTED)
                            and any(True for _ in module.parameters()))
    return list(dict.fromkeys(called))[::-1]


@torch.no_grad()
def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Redraw the module's parameters from N(0, s^2), s the spread of the weights replaced.

    Each submodule with parameters of its own gets its own s: the standard deviation of all its
    parameters' current values together, so the random layer feeds the next layers activations
    on the scale they were trained on. Draws come from ``generator`` (on the CPU, so the same
    seed gives the same weights on every device).
    """
    for submodule in module.modules():
        parameters = list(submodule.parameters(recurse=False))
        if not parameters:
            continue
        scale = torch.cat([p.detach().flatten().float().cpu() for p in parameters]).std(
            correction=0)
        for p in parameters:
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def _similarity(similarity: str | Similarity) -> Similarity:
    if callable(similarity):
        return similarity
    if similarity not in SIMILARITIES:
        raise ConfigError(f"similarity must be one of {', '.join(SIMILARITIES)} or a callable "
                          f"(a, b) -> [N], got {similarity!r}")
    return SIMILARITIES[similarity]


def _maps(explain: Explain, model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
          absolute: bool) -> torch.Tensor:
    maps = explain(model, x, targets)
    if not isinstance(maps, torch.Tensor) or maps.shape != x.shape:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise DataError(f"explain must return maps shaped like the inputs {list(x.shape)}, got "
                        f"{shape}")
    maps = maps.detach().float()
    return maps.abs() if absolute else maps


def parameter_randomisation(model: nn.Module, x: torch.Tensor, target: Target | None,
                            explain: Explain, *, seed: int = 0,
                            layers: Sequence[str] | None = None,
                            similarity: str | Similarity = "spearman", absolute: bool = True
                            ) -> pd.DataFrame:
    """Similarity of each step's maps to the trained model's maps, cascading layer by layer.

    Columns: ``step`` (0: nothing randomised; k: the first k layers randomised), ``layer``
    (the one randomised at that step; missing, NA, at step 0), ``similarity`` (mean over inputs) and
    ``sem`` (its standard error, NaN for one input). ``layers`` defaults to
    ``weighted_layers`` (output to input); given names are randomised in the order given, and
    any module with parameters may be named (a block randomises all of its layers).

    Every map is explained for the same class: ``target``, or where it is None the trained
    model's prediction, so a randomised model is never asked about its own (random) guess.
    ``absolute`` compares magnitudes (Adebayo et al. report both). Step 0 explains the
    unchanged copy again, so it shows the method's own noise (1.0 for deterministic methods).
    The work is done on a deep copy: ``model`` itself is never changed or run.
    """
    compare = _similarity(similarity)
    copied = copy.deepcopy(model)
    x = check_inputs(copied, x)
    if target is None:
        with torch.no_grad():
            targets = copied(x).argmax(1)
    else:
        with torch.no_grad():
            num_classes = copied(x[:1]).shape[1]
        targets = as_targets(target, len(x), num_classes)
    names = weighted_layers(copied, x) if layers is None else list(layers)
    if not names:
        raise ConfigError("there is no layer to randomise: the model uses no Linear or Conv2d "
                          "layer; name the layers to randomise in layers")
    modules = [module_named(copied, name) for name in names]
    for name, module in zip(names, modules, strict=True):
        if not any(True for _ in module.parameters()):
            raise ConfigError(f"layer {name!r} has no parameters to randomise; name layers with "
                              "weights (Linear, Conv2d, BatchNorm2d or blocks containing them)")

    reference = _maps(explain, copied, x, targets, absolute)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for step, (name, module) in enumerate(zip([None, *names], [None, *modules], strict=True)):
        if module is not None:
            randomise(module, generator)
        values = torch.as_tensor(compare(reference, _maps(explain, copied, x, targets, absolute)))
        n = len(x)
        if values.shape != (n,):
            raise DataError(f"similarity must return one value per input ([{n}]), got shape "
                            f"{list(values.shape)}")
        values = values.double().cpu()
        rows.append({"step": step, "layer": name, "similarity": float(values.mean()),
                     "sem": float(values.std() / math.sqrt(n)) if n > 1 else math.nan})
    return pd.DataFrame(rows, columns=["step", "layer", "similarity", "sem"])
