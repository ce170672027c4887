"""User models: any ``nn.Module``, wrapped so that every trustmap code path that takes a
Classifier takes it too.

A user model comes from a factory and checkpoints (``"package.module:callable"`` plus one
``.safetensors``/``.pt``/``.pth`` state dict per ensemble member), from TorchScript files (one
per member), or as a module passed in Python. ``load_members`` is the one call a run makes: it
validates everything (the factory, every file, that every member takes the data's images and
returns one logit per class) before it returns anything, so a caller can check a run before
writing a single file.

The wrapper is a ``Classifier``: ``Normalize`` first (identity, ``(x - 0) / 1``, which is
exact, where the model normalises its input itself or needs none), the user's model as
``features`` and ``nn.Identity`` as ``head``. A layer of the user's model named ``"layer4"``
is ``"features.layer4"`` in the wrapper. Grad-CAM's layer, when not named, is found by one
dry run with forward hooks: the last module to produce spatial maps [N, C, h, w] with
h*w > 1 (None where there is none, and for TorchScript, where forward hooks cannot be
registered; ``supports_hooks`` says so).

User members are never trained by trustmap. Their ``build_args`` say where they came from
(``"source": "factory:pkg.mod:fn"``, ``"torchscript"``, ``"python:ClassName"``) and always
hold a ``"source"`` key, which ``trustmap.models.build`` refuses: code that rebuilds members
from recorded build_args (``training.load_member``) gets a ModelError, which it reports as a
CheckpointError, and is never fooled into building a zoo model of the same name.

``torch.export`` programs (``.pt2``) are not accepted: ``torch.export.load`` unpickles the
file, and trustmap never unpickles data from outside. Export to TorchScript instead.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from trustmap.errors import CheckpointError, ModelError, did_you_mean
from trustmap.models.base import DEFAULT_INPUT_SIZE, Classifier, Normalize

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
"""The checkpoint files ``load_weights`` reads: safetensors, or torch.save'd state dicts."""

FACTORY_FORMAT = "package.module:callable"

StrPath = str | PathLike[str]


# --- factories -------------------------------------------------------------------------------

def _parse_reference(reference: object) -> tuple[str, str]:
    parts = reference.split(":") if isinstance(reference, str) else []
    if (len(parts) != 2
            or not all(p.isidentifier() for p in parts[0].split("."))
            or not all(p.isidentifier() for p in parts[1].split("."))):
        raise ModelError(f"model factory {reference!r} is not of the form {FACTORY_FORMAT!r} "
                         "(e.g. 'mymodels:make_net': the module mymodels.py, the function "
                         "make_net in it)")
    return parts[0], parts[1]


def _public_callables(owner: object) -> list[str]:
    """The public callables of a module or class, those defined in it first."""
    names = [n for n in dir(owner) if not n.startswith("_")]
    found = [n for n in names if callable(getattr(owner, n, None))]
    home = getattr(owner, "__name__", None)
    own = [n for n in found if getattr(getattr(owner, n), "__module__", None) == home]
    return own + [n for n in found if n not in own]


def _import(reference: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            top = module_name.split(".")[0]
            raise ModelError(
                f"model factory {reference!r}: there is no module named {missing!r}; the "
                f"module must be importable: run from the folder that holds {top}.py (or the "
                f"package {top}/), add that folder to PYTHONPATH, or install its package"
            ) from None
        raise ModelError(f"model factory {reference!r}: importing {module_name!r} failed "
                         f"because it imports {missing!r}, which is not installed; install "
                         "it in this environment") from None
    except Exception as error:  # the user's module: anything may go wrong while it imports
        raise ModelError(f"model factory {reference!r}: importing {module_name!r} raised "
                         f"{type(error).__name__}: {error}; fix the module so that it "
                         "imports") from None


def _accepted(factory: Any, offered: dict[str, int]) -> dict[str, int]:
    """The arguments of ``offered`` that ``factory``'s signature accepts by keyword."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): offer nothing
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(offered)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {p.name for p in parameters if p.kind in keyword}
    return {key: value for key, value in offered.items() if key in names}


def from_factory(reference: str, num_classes: int, in_channels: int) -> nn.Module:
    """The module ``reference`` ("package.module:callable") builds.

    The callable gets ``num_classes=`` and ``in_channels=`` where its signature takes them (or
    ``**kwargs``), nothing else. Torch's global random state is left as it was, so loading a
    user model never changes the numbers of a seeded run. ModelError, saying what to do, for
    a module that cannot be imported, a missing attribute (with the closest public callable),
    a call that raises, or a result that is not an ``nn.Module``.
    """
    module_name, attribute = _parse_reference(reference)
    target: Any = _import(reference, module_name)
    parts = attribute.split(".")
    for index, part in enumerate(parts):
        if not hasattr(target, part):
            owner = ".".join([module_name, *parts[:index]])
            choices = _public_callables(target)
            listed = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
            raise ModelError(f"model factory {reference!r}: {owner!r} has no attribute "
                             f"{part!r}{did_you_mean(part, choices)}; its public callables: "
                             f"{listed or 'none'}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"model factory {reference!r}: {attribute} is a "
                         f"{type(target).__name__}, not a callable; name a function or class "
                         "that builds the model")
    kwargs = _accepted(target, {"num_classes": num_classes, "in_channels": in_channels})
    call = f"{attribute}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        with torch.random.fork_rng(devices=[]):
            model = target(**kwargs)
    except Exception as error:  # the user's code
        raise ModelError(f"model factory {reference!r}: {call} raised {type(error).__name__}: "
                         f"{error}; the factory must build the model when called with "
                         "num_classes= and in_channels= (where it takes them) and nothing "
                         "else") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {reference!r}: {call} returned a "
                         f"{type(model).__name__}, not a torch.nn.Module; the factory must "
                         "build and return the model")
    return model


# --- files -----------------------------------------------------------------------------------

def _plain(text: str) -> str:
    """``text`` without terminal colour codes (torch's messages carry some)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _regular_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{what} {path} is missing; check the path")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a regular file; give the file itself")


def _read_state(path: Path) -> Mapping[str, Any]:
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {path} cannot be read as safetensors ({error}); "
                                  "the file is damaged or not a safetensors file") from None
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        detail = f" (it holds a {found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} holds more than tensors, so torch.load(weights_only=True) "
            f"refuses it{detail}; trustmap never unpickles code: save the weights alone, "
            "torch.save(model.state_dict(), path), or as safetensors") from None
    except Exception as error:  # a damaged or foreign file fails in many ways
        raise CheckpointError(f"checkpoint {path} cannot be read with torch.load "
                              f"({type(error).__name__}: {_plain(str(error))}); the file is "
                              "damaged or not a torch.save file") from None
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a "
                              "state dict; save torch.save(model.state_dict(), path)")
    bad = [key for key, value in payload.items()
           if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors (entry "
                              f"{bad[0]!r} is a {type(payload[bad[0]]).__name__}); save "
                              "torch.save(model.state_dict(), path), or a dict whose "
                              "'state_dict' is that")
    return payload


def _first(keys: list[str]) -> str:
    more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
    return f"{keys[0]!r}{more}"


def load_weights(model: nn.Module, path: StrPath, *, source: str | None = None) -> nn.Module:
    """Load the state dict in ``path`` into ``model`` strictly, and return the model.

    ``path`` is ``.safetensors``, or ``.pt``/``.pth`` read with ``torch.load(weights_only=True)``
    (a state dict, or a dict whose ``"state_dict"`` is one). CheckpointError naming the file
    for a missing, unreadable or damaged file, keys missing or unexpected, a shape mismatch
    (the first key and both shapes) and NaN or inf weights. ``source`` names the model in
    messages (e.g. the factory reference).
    """
    path = Path(path)
    built = f"the model built by {source}" if source else "the model"
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"checkpoint {path}: give a {', '.join(WEIGHT_SUFFIXES)} file "
                              "with the model's state dict (a TorchScript file goes to "
                              "torchscript=, not with a factory)")
    _regular_file(path, "checkpoint")
    state = _read_state(path)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{built} has {_first(missing)} that the file lacks")
        if unexpected:
            parts.append(f"the file has {_first(unexpected)} that {built} lacks")
        hint = ""
        if unexpected and all(k.startswith("module.") for k in state):
            hint = (" (every key in the file starts with 'module.': it was saved from "
                    "DataParallel; save model.module.state_dict() instead)")
        raise CheckpointError(f"checkpoint {path}: {'; '.join(parts)}{hint}; is this the "
                              "checkpoint of this model?")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"checkpoint {path}: {key} is {list(state[key].shape)} in "
                                  f"the file but {list(value.shape)} in {built}; is this the "
                                  "checkpoint of this model, built with these num_classes "
                                  "and in_channels?")
    broken = [key for key, value in state.items()
              if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(f"checkpoint {path} holds NaN or inf weights (in "
                              f"{_first(broken)}): every prediction would be NaN; give the "
                              "checkpoint of a model that trained")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # e.g. a dtype that cannot be copied
        raise CheckpointError(f"checkpoint {path} does not fit {built} ({error})") from None
    return model


def load_torchscript(path: StrPath) -> nn.Module:
    """The TorchScript module saved in ``path`` (``torch.jit.save``), on the CPU.

    CheckpointError naming the file where it is missing or not TorchScript. (``torch.export``
    programs are not read: loading them unpickles the file.)
    """
    path = Path(path)
    _regular_file(path, "TorchScript file")
    if path.suffix.lower() == ".pt2":
        raise CheckpointError(f"TorchScript file {path} looks like a torch.export program "
                              "(.pt2); trustmap does not load those, as torch.export.load "
                              "unpickles the file: save torch.jit.save(torch.jit.script(model) "
                              "or torch.jit.trace(model, example), path) instead")
    try:
        with warnings.catch_warnings():
            # torch 2.13 deprecates torch.jit in favour of torch.export, which unpickles.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                    category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # a damaged or foreign file fails in many ways
        text = _plain(str(error)).strip()
        first = text.splitlines()[0] if text else ""
        raise CheckpointError(f"TorchScript file {path} cannot be loaded "
                              f"({type(error).__name__}: {first}); save it with "
                              "torch.jit.save(torch.jit.script(model), path) or "
                              "torch.jit.save(torch.jit.trace(model, example), path)") from None
    return module


# --- the wrapper -----------------------------------------------------------------------------

def _spatial_outputs(classifier: Classifier, model: nn.Module,
                     example: torch.Tensor) -> list[tuple[str, list[int]]]:
    """(name inside ``model``, output shape) of every module of ``model`` whose output is
    [N, C, h, w] with h*w > 1, in the order their forward calls end, from one dry run of
    ``classifier`` (eval mode, no gradients). A module called twice counts at its last call.
    """
    names = {module: name for name, module in model.named_modules() if name}
    calls: list[tuple[str, list[int]]] = []

    def record(module: nn.Module, args: object, output: object) -> None:
        if (isinstance(output, torch.Tensor) and output.ndim == 4
                and output.shape[2] * output.shape[3] > 1):
            calls.append((names[module], list(output.shape)))

    handles = [module.register_forward_hook(record) for module in names]
    was_training = classifier.training
    try:
        classifier.eval()
        with torch.no_grad():
            classifier(example)
    except Exception as error:  # the user's model
        raise ModelError(f"model {classifier.name!r} does not take images "
                         f"{list(example.shape)}: {type(error).__name__}: {error}") from None
    finally:
        for handle in handles:
            handle.remove()
        classifier.train(was_training)
    last: dict[str, list[int]] = {}
    for name, shape in calls:
        last.pop(name, None)
        last[name] = shape
    return list(last.items())


class UserClassifier(Classifier):
    """A user's ``nn.Module`` as a Classifier: normalize → the model → identity.

    ``source`` says where the model came from; ``build_args`` hold it, so that
    ``trustmap.models.build(**build_args)`` refuses to rebuild it (see the module's notes).
    Forward checks the channels only: the model decides which sizes it takes.
    """

    def __init__(self, model: nn.Module, *, name: str, num_classes: int, in_channels: int,
                 mean: float | Sequence[float] | None, std: float | Sequence[float] | None,
                 input_size: tuple[int, int], source: str, options: dict[str, Any]) -> None:
        normalize = Normalize(0.0 if mean is None else mean, 1.0 if std is None else std,
                              in_channels)
        super().__init__(name, normalize, model, nn.Identity(), num_classes=num_classes,
                         gradcam_layer=None,
                         options={"source": source, "input_size": list(input_size), **options},
                         input_size=input_size, fixed_size=False)
        self.source = source
        self.supports_hooks = not isinstance(model, torch.jit.ScriptModule)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, source={self.source!r}"


def _integer(what: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _image_size(value: object) -> tuple[int, int]:
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                       for v in value)):
        raise ModelError(f"image_size must be [height, width], two integers >= 1, got "
                         f"{value!r}")
    return int(value[0]), int(value[1])


def user_classifier(model: nn.Module, *, name: str, num_classes: int, in_channels: int,
                    mean: float | Sequence[float] | None = None,
                    std: float | Sequence[float] | None = None,
                    gradcam_layer: str | None = None,
                    image_size: Sequence[int] = DEFAULT_INPUT_SIZE,
                    example: torch.Tensor | None = None, source: str | None = None,
                    **record: Any) -> UserClassifier:
    """Wrap ``model`` (which maps images to logits [N, num_classes]) as a Classifier.

    ``mean``/``std``: the normalisation the model expects but does not do itself, per channel
    or one for all; None (both) where the model takes images in [0, 1] as they are.
    ``gradcam_layer``: a name in ``dict(model.named_modules())`` (e.g. "layer4"), checked to
    give spatial maps; None finds it (see the module's notes). The dry run feeds ``example``,
    by default zeros [2, in_channels, *image_size]. ``source`` (default "python:ClassName")
    and ``record`` (JSON values) go into ``build_args``. ModelError for anything that does not
    fit; the model is otherwise not checked here (``check_fits`` does that).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} is a {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(name, str) or not name:
        raise ModelError(f"name must be a non-empty string, got {name!r}")
    num_classes = _integer(f"model {name!r}: num_classes", num_classes, 2)
    in_channels = _integer(f"model {name!r}: in_channels", in_channels, 1)
    size = _image_size(image_size)
    if source is None:
        source = f"python:{type(model).__qualname__}"
    classifier = UserClassifier(model, name=name, num_classes=num_classes,
                                in_channels=in_channels, mean=mean, std=std, input_size=size,
                                source=source, options=record)
    if example is None:
        example = torch.zeros(2, in_channels, *size)
    scripted = not classifier.supports_hooks
    if gradcam_layer is not None:
        layers = [n for n, _ in model.named_modules() if n]
        if not isinstance(gradcam_layer, str) or gradcam_layer not in layers:
            raise ModelError(f"model {name!r} has no layer {gradcam_layer!r} for Grad-CAM"
                             f"{did_you_mean(gradcam_layer, layers)}; name one of "
                             "dict(model.named_modules()), or leave it out to find the last "
                             "layer with spatial maps")
        if scripted:
            raise ModelError(f"model {name!r} is TorchScript: forward hooks, which Grad-CAM "
                             "reads a layer with, cannot be registered inside it; leave "
                             "gradcam_layer out (Grad-CAM is then not available for it), or "
                             "give the model as a factory and checkpoints")
        spatial = dict(_spatial_outputs(classifier, model, example))
        if gradcam_layer not in spatial:
            found = list(spatial)
            hint = f" (the last one that does is {found[-1]!r})" if found else ""
            raise ModelError(f"model {name!r}: layer {gradcam_layer!r} gives no spatial maps "
                             f"[N, C, h, w] with h*w > 1 for images {list(example.shape)}, "
                             f"which Grad-CAM needs; name another layer{hint}")
        classifier.gradcam_layer = f"features.{gradcam_layer}"
    elif not scripted:
        spatial_layers = _spatial_outputs(classifier, model, example)
        if spatial_layers:
            classifier.gradcam_layer = f"features.{spatial_layers[-1][0]}"
    return classifier


def check_fits(classifier: nn.Module, image_shape: tuple[int, int, int],
               num_classes: int) -> None:
    """ModelError unless ``classifier`` maps a batch of 2 black images ``image_shape``
    [C, H, W] to finite logits [2, num_classes] (eval mode, no gradients; the mode is put
    back afterwards)."""
    name = getattr(classifier, "name", type(classifier).__name__)
    shape = [int(v) for v in image_shape]
    parameter = next(classifier.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    x = torch.zeros(2, *shape, device=device)
    was_training = classifier.training
    try:
        classifier.eval()
        with torch.no_grad():
            logits = classifier(x)
    except Exception as error:  # the user's model
        raise ModelError(f"model {name!r} does not take images [N, {', '.join(map(str, shape))}]"
                         f" of the data: {type(error).__name__}: {error}") from None
    finally:
        classifier.train(was_training)
    if not isinstance(logits, torch.Tensor):
        raise ModelError(f"model {name!r} returns a {type(logits).__name__}, not a tensor of "
                         f"logits; wrap it so that forward returns logits [N, {num_classes}]")
    if tuple(logits.shape) != (2, num_classes):
        raise ModelError(f"model {name!r} returns {list(logits.shape)} for 2 images, but the "
                         f"data has {num_classes} classes and needs logits [2, {num_classes}]; "
                         f"build the model with num_classes={num_classes}")
    if not torch.isfinite(logits).all():
        raise ModelError(f"model {name!r} returns NaN or inf logits for black images "
                         f"[2, {', '.join(map(str, shape))}]; its weights are damaged or it "
                         "diverged")


def _paths(what: str, value: object) -> list[Path]:
    items = [value] if isinstance(value, str | PathLike) else value
    if not isinstance(items, Sequence) or not all(isinstance(v, str | PathLike) for v in items):
        raise ModelError(f"{what} must be a path or a list of paths, got {value!r}")
    paths = [Path(v) for v in items]
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise ModelError(f"{what}: {path} is given twice; an ensemble needs different "
                             "members")
        seen[key] = path
    return paths


def load_members(*, factory: str | None = None, checkpoints: StrPath | Sequence[StrPath] = (),
                 torchscript: StrPath | Sequence[StrPath] | None = None, num_classes: int,
                 in_channels: int, image_size: Sequence[int],
                 mean: float | Sequence[float] | None = None,
                 std: float | Sequence[float] | None = None, gradcam_layer: str | None = None,
                 name: str | None = None) -> list[UserClassifier]:
    """The user's ensemble members, checked, in eval mode on the CPU.

    Either ``factory`` ("package.module:callable") with ``checkpoints`` (one member per file;
    a factory alone is refused: an untrained model cannot be audited), or ``torchscript``
    (one member per file). Every member is checked to take the data's images [N, in_channels,
    *image_size] and return finite logits [N, num_classes]. ``mean``/``std`` are the
    normalisation the model expects but does not do itself (None: it takes [0, 1] images);
    ``gradcam_layer`` a layer name inside the user's model (found when None); ``name`` the
    members' name (default: the factory's callable or the TorchScript file's stem).
    Everything is validated before anything is returned: ModelError or CheckpointError.
    """
    num_classes = _integer("num_classes", num_classes, 2)
    in_channels = _integer("in_channels", in_channels, 1)
    size = _image_size(image_size)
    if factory is not None and torchscript is not None:
        raise ModelError("give either a factory with checkpoints or TorchScript files, not both")
    common = {"num_classes": num_classes, "in_channels": in_channels, "mean": mean, "std": std,
              "gradcam_layer": gradcam_layer, "image_size": size}
    members: list[UserClassifier] = []
    if factory is not None:
        _, attribute = _parse_reference(factory)
        files = _paths("checkpoints", checkpoints)
        if not files:
            raise ModelError(f"model factory {factory!r} is given without checkpoints; an "
                             "untrained model cannot be audited: give the trained weights, "
                             "one .safetensors/.pt/.pth state dict per member")
        for path in files:
            _regular_file(path, "checkpoint")
        for path in files:
            model = from_factory(factory, num_classes, in_channels)
            load_weights(model, path, source=factory)
            members.append(user_classifier(
                model, name=name or attribute.split(".")[-1], source=f"factory:{factory}",
                checkpoint=str(path), **common))
    elif torchscript is not None:
        if checkpoints:
            raise ModelError("checkpoints go with a factory; a TorchScript file carries its "
                             "own weights: give one TorchScript file per member instead")
        files = _paths("torchscript", torchscript)
        if not files:
            raise ModelError("torchscript is an empty list; give one TorchScript file per "
                             "member")
        for path in files:
            _regular_file(path, "TorchScript file")
        for path in files:
            model = load_torchscript(path)
            members.append(user_classifier(
                model, name=name or path.stem, source="torchscript", file=str(path), **common))
    else:
        raise ModelError(f"give the model: a factory ({FACTORY_FORMAT!r}) with checkpoints, "
                         "or TorchScript files")
    for member in members:
        member.to("cpu").eval()
        check_fits(member, (in_channels, *size), num_classes)
    return members
