"""The registry: model names to builders, with the argument checks every builder relies on.

A builder's keyword-only parameters are the options its model accepts, and their defaults
are the model's defaults; the checks here are keyed by option name, so a new builder whose
options reuse these names needs no checking code of its own. The image models take
``input_size`` = [H, W], the image size they are built for (28x28 by default); whether a size
is large enough is the builder's to say, as only it knows its layers.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch

from trustmap.errors import ModelError, did_you_mean
from trustmap.models import cnn, recurrent, resnet
from trustmap.models.base import Classifier, per_channel

_BUILDERS: dict[str, Callable[..., Classifier]] = {
    "lenet": cnn.lenet,
    "lenet5": cnn.lenet5,
    "cnn": cnn.cnn,
    "cnn1000": cnn.cnn1000,
    "alexnet": cnn.alexnet,
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "rnn-shallow": recurrent.rnn_shallow,
    "rnn-deep": recurrent.rnn_deep,
    "rnn-deepv2": recurrent.rnn_deepv2,
    "rnn-convdeep": recurrent.rnn_convdeep,
    "lstm": recurrent.lstm,
    "gru": recurrent.gru,
}


@dataclass(frozen=True)
class ModelInfo:
    """One row of the zoo's table, for 1x28x28 inputs and 10 classes unless asked otherwise.

    ``min_input_size`` is the smallest [H, W] the model can be built for (None for the
    recurrent models, which read 28-pixel-high strips).
    """

    name: str
    description: str
    parameters: int
    gradcam_layer: str | None
    has_dropout: bool
    defaults: dict[str, Any]
    min_input_size: tuple[int, int] | None = None


def names() -> list[str]:
    """Every registered model name, in the order of the zoo's table."""
    return list(_BUILDERS)


def sized(name: str) -> bool:
    """Whether model ``name`` is built for an image size (``input_size``); the recurrent models
    read their own fixed sequence shape instead."""
    return "input_size" in _defaults(_builder(name))


def _builder(name: object) -> Callable[..., Classifier]:
    if isinstance(name, str) and name in _BUILDERS:
        return _BUILDERS[name]
    hint = did_you_mean(name.lower(), _BUILDERS) if isinstance(name, str) else ""
    raise ModelError(f"unknown model {name!r}{hint}; known models: {', '.join(_BUILDERS)}")


def _defaults(builder: Callable[..., Classifier]) -> dict[str, Any]:
    parameters = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _integer(what: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ModelError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _rate(what: str, value: object) -> float:
    if (isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value)
            or not 0 <= value < 1):
        raise ModelError(f"{what} must be a dropout rate in [0, 1), got {value!r}; "
                         "0 leaves the dropout layer out")
    return float(value)


def _size(what: str, value: object) -> list[int]:
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1
                       for v in value)):
        raise ModelError(f"{what} must be [height, width], two integers >= 1 (the data's image "
                         f"size), got {value!r}")
    return [int(v) for v in value]


def _check(model: str, option: str, value: object, in_channels: int) -> Any:
    """The option's value in plain JSON types, or ModelError naming the model and option."""
    what = f"{model}: {option}"
    if option.endswith("dropout"):
        return _rate(what, value)
    if option == "width":
        return _integer(what, value, 1)
    if option in ("mean", "std"):
        return per_channel(what, value, in_channels, positive=option == "std")
    if option == "input_size":
        return _size(what, value)
    raise AssertionError(f"no check for option {option!r} of model {model!r}")


def build(name: str, in_channels: int = 1, num_classes: int = 10, **kwargs: Any) -> Classifier:
    """A freshly initialised model; its weights depend only on torch's global seed.

    Raises ModelError for an unknown name or option, or a value the model cannot be built
    with (an ``input_size`` below the model's minimum included);
    ``build(**model.build_args)`` rebuilds the same architecture.
    """
    builder = _builder(name)
    in_channels = _integer(f"{name}: in_channels", in_channels, 1)
    num_classes = _integer(f"{name}: num_classes", num_classes, 2)
    defaults = _defaults(builder)
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        close = [m for u in unknown for m in difflib.get_close_matches(u, defaults, n=1)]
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ModelError(f"model {name!r} does not take {', '.join(map(repr, unknown))}{hint}; "
                         f"it takes in_channels, num_classes and {', '.join(defaults)}")
    options = {key: _check(name, key, kwargs.get(key, default), in_channels)
               for key, default in defaults.items()}
    return builder(in_channels, num_classes, **options)


def describe(in_channels: int = 1, num_classes: int = 10) -> list[ModelInfo]:
    """Name, description, parameter count, Grad-CAM layer and default dropout of every model."""
    rows = []
    for name, builder in _BUILDERS.items():
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = build(name, in_channels, num_classes)
        rows.append(ModelInfo(
            name=name,
            description=inspect.getdoc(builder).splitlines()[0],
            parameters=sum(p.numel() for p in model.parameters()),
            gradcam_layer=model.gradcam_layer,
            has_dropout=model.has_dropout,
            defaults=_defaults(builder),
            min_input_size=model.min_size,
        ))
    return rows
