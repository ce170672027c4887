"""Whether a model has the module structure a method relies on: an audit of one forward pass.

Guided backprop and deconvnet change the backward pass of ``nn.ReLU`` modules; LRP changes
that of Linear and Conv modules. Both work through module hooks, so whatever a model computes
outside such modules keeps its plain gradient: a relu applied as a function (``F.relu``,
``torch.relu``, ``x.relu()``), a linear map computed with ``F.linear``, ``F.conv2d`` or a
matmul, or a TorchScript forward, which runs where no Python hook reaches. The method would
then return a mix of what it claims and the plain gradient, and nothing would show it. So these
methods audit the model first and refuse, saying where and what to change.

The audit is exact, not a guess from names: it runs the model once on (at most two of) the
inputs under a ``torch.overrides.TorchFunctionMode`` that sees every torch function the forward
calls, while forward pre- and post-hooks on every module keep the stack of modules running. A
relu-like call whose innermost running module is not an ``nn.ReLU``, or a linear-map call whose
innermost running module is not a Linear or Conv layer, is recorded with the module it happened
in. (A mode sees only the outermost call of a composite function: ``F.relu`` inside an
``nn.ReLU`` is one call there, and whatever ``F.multi_head_attention_forward`` calls inside is
not seen, which is why that function itself counts as a linear map.) The pass leaves no trace:
no gradients, the random numbers dropout draws are given back (an MC dropout stream continues
as if it had not run) and buffers (BatchNorm statistics in training mode) are restored.

The verdict is cached per model object (weakly: it goes with the model) together with the
identity and type of every submodule, so a model whose modules are replaced is audited again;
the cached path costs one walk over ``model.modules()``. A model whose forward takes another
path for other inputs (other sizes, other modes) is judged by the path of its first audit.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from trustmap.errors import ModelError
from trustmap.explain.core import kept_buffers

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers LRP rules apply to; every other layer passes relevance with its gradient."""

RELU_MODULES = (nn.ReLU,)
"""The modules whose backward guided backprop and deconvnet replace."""


def _named(pairs: Iterable[tuple[Callable[..., Any], str]]) -> dict[Callable[..., Any], str]:
    return {function: name for function, name in pairs}


_RELU: dict[Callable[..., Any], str] = _named([
    (torch.relu, "torch.relu"), (torch.relu_, "torch.relu_"),
    (torch.Tensor.relu, "Tensor.relu"), (torch.Tensor.relu_, "Tensor.relu_"),
    (F.relu, "F.relu"), (F.relu_, "F.relu_"), (F.relu6, "F.relu6"),
])
"""Functions that are a relu whatever their arguments."""

_BOUNDED: dict[Callable[..., Any], str] = _named([
    (torch.clamp, "torch.clamp"), (torch.clamp_, "torch.clamp_"),
    (torch.clip, "torch.clip"), (torch.clamp_min, "torch.clamp_min"),
    (torch.Tensor.clamp, "Tensor.clamp"), (torch.Tensor.clamp_, "Tensor.clamp_"),
    (torch.Tensor.clip, "Tensor.clip"), (torch.Tensor.clip_, "Tensor.clip_"),
    (torch.Tensor.clamp_min, "Tensor.clamp_min"), (torch.Tensor.clamp_min_, "Tensor.clamp_min_"),
    (F.hardtanh, "F.hardtanh"), (F.hardtanh_, "F.hardtanh_"),
    (F.threshold, "F.threshold"), (F.threshold_, "F.threshold_"),
])
"""Functions that are a relu when their lower bound is 0 (clamp(min=0), hardtanh(0, 6) as in
ReLU6, threshold(0, 0)); with another lower bound they are something else."""

_LINEAR: dict[Callable[..., Any], str] = _named([
    (F.linear, "F.linear"), (F.bilinear, "F.bilinear"),
    (F.conv1d, "F.conv1d"), (F.conv2d, "F.conv2d"), (F.conv3d, "F.conv3d"),
    (F.conv_transpose1d, "F.conv_transpose1d"), (F.conv_transpose2d, "F.conv_transpose2d"),
    (F.conv_transpose3d, "F.conv_transpose3d"), (torch.convolution, "torch.convolution"),
    (F.conv_tbc, "F.conv_tbc"),
    (torch.matmul, "torch.matmul"), (torch.mm, "torch.mm"), (torch.bmm, "torch.bmm"),
    (torch.mv, "torch.mv"), (torch.dot, "torch.dot"), (torch.inner, "torch.inner"),
    (torch.outer, "torch.outer"), (torch.addmm, "torch.addmm"), (torch.addmv, "torch.addmv"),
    (torch.addbmm, "torch.addbmm"), (torch.baddbmm, "torch.baddbmm"),
    (torch.einsum, "torch.einsum"), (torch.tensordot, "torch.tensordot"),
    (torch.chain_matmul, "torch.chain_matmul"), (torch.linalg.matmul, "torch.linalg.matmul"),
    (torch.linalg.multi_dot, "torch.linalg.multi_dot"),
    (torch.Tensor.matmul, "Tensor.matmul"), (torch.Tensor.__matmul__, "Tensor.__matmul__"),
    (torch.Tensor.__rmatmul__, "Tensor.__rmatmul__"), (torch.Tensor.mm, "Tensor.mm"),
    (torch.Tensor.bmm, "Tensor.bmm"), (torch.Tensor.mv, "Tensor.mv"),
    (torch.Tensor.dot, "Tensor.dot"), (torch.Tensor.inner, "Tensor.inner"),
    (torch.Tensor.outer, "Tensor.outer"), (torch.Tensor.addmm, "Tensor.addmm"),
    (torch.Tensor.addmm_, "Tensor.addmm_"), (torch.Tensor.addmv, "Tensor.addmv"),
    (torch.Tensor.baddbmm, "Tensor.baddbmm"), (torch.Tensor.addbmm, "Tensor.addbmm"),
    (F.multi_head_attention_forward, "F.multi_head_attention_forward"),
    (F.scaled_dot_product_attention, "F.scaled_dot_product_attention"),
    (torch.lstm, "torch.lstm"), (torch.gru, "torch.gru"), (torch.rnn_tanh, "torch.rnn_tanh"),
    (torch.rnn_relu, "torch.rnn_relu"), (torch.lstm_cell, "torch.lstm_cell"),
    (torch.gru_cell, "torch.gru_cell"), (torch.rnn_tanh_cell, "torch.rnn_tanh_cell"),
    (torch.rnn_relu_cell, "torch.rnn_relu_cell"),
])
"""Functions that compute a linear map (or a product of activations) of their input."""

_LOWER_BOUND = {"min": 1, "min_val": 1, "threshold": 1}
"""Name and position of the lower bound of the _BOUNDED functions."""


def _relu_like(function: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> str | None:
    """The display name of a relu-like call, or None."""
    if function in _RELU:
        return _RELU[function]
    if function not in _BOUNDED:
        return None
    name = _BOUNDED[function]
    if function in (F.hardtanh, F.hardtanh_):
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
    elif function in (F.threshold, F.threshold_):
        low = kwargs.get("threshold", args[1] if len(args) > 1 else None)
        value = kwargs.get("value", args[2] if len(args) > 2 else None)
        return name if _is_zero(low) and _is_zero(value) else None
    else:
        low = kwargs.get("min", args[1] if len(args) > 1 else None)
        high = kwargs.get("max", args[2] if len(args) > 2 else None)
        if high is not None:
            return None  # clamp(0, 1) bounds an image; clamp(min=0) is a relu
    return name if _is_zero(low) else None


def _is_zero(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and float(value) == 0.0
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


Place = tuple[str, str]
"""(where: a module description or the model's forward, function name)."""


@dataclass(frozen=True)
class Audit:
    """What one forward pass of a model computed outside the modules methods hook."""

    model: str
    """The model, described for messages."""
    scripted: tuple[str, ...] = ()
    """TorchScript modules in the model, by name ("" for the model itself); when there are any,
    no pass was run and the counts below are empty."""
    relu_modules: int = 0
    """Calls of nn.ReLU modules."""
    functional_relu: dict[Place, int] = field(default_factory=dict)
    """Relu-like calls outside nn.ReLU modules, per place."""
    functional_linear: dict[Place, int] = field(default_factory=dict)
    """Linear-map calls outside Linear and Conv modules, per place."""


class _Recorder(TorchFunctionMode):
    """Counts relu-like and linear-map calls by the innermost module running them."""

    def __init__(self, stack: list[nn.Module], describe: Callable[[nn.Module | None], str]
                 ) -> None:
        super().__init__()
        self.stack = stack
        self.describe = describe
        self.relu: Counter[Place] = Counter()
        self.linear: Counter[Place] = Counter()

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        inner = self.stack[-1] if self.stack else None
        try:
            relu = _relu_like(func, args, kwargs)
        except (TypeError, ValueError, RuntimeError):  # an odd argument: not ours to judge
            relu = None
        if relu is not None and not isinstance(inner, RELU_MODULES):
            self.relu[(self.describe(inner), relu)] += 1
        linear = _LINEAR.get(func)
        if linear is not None and not isinstance(inner, WEIGHTED):
            self.linear[(self.describe(inner), linear)] += 1
        return func(*args, **kwargs)


def describe_model(model: nn.Module) -> str:
    """``Net`` or, for a named trustmap classifier, ``lenet (Classifier)``."""
    name = getattr(model, "name", None)
    kind = type(model).__name__
    if isinstance(model, torch.jit.ScriptModule):
        kind = getattr(model, "original_name", None) or kind  # the scripted class's name
    return f"{name} ({kind})" if isinstance(name, str) and name else kind


def _scripted(model: nn.Module) -> tuple[str, ...]:
    if isinstance(model, torch.jit.ScriptModule):
        return ("",)
    names = [name for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    return tuple(n for n in names if not any(n.startswith(f"{o}.") for o in names))


def _forward_pass(model: nn.Module, x: torch.Tensor) -> Audit:
    names = {module: name for name, module in model.named_modules()}
    stack: list[nn.Module] = []
    relu_calls = [0]

    def describe(module: nn.Module | None) -> str:
        if module is None or module is model:
            return f"the forward of {type(model).__name__}"
        return f"module {names.get(module, '?')!r} ({type(module).__name__})"

    def enter(module: nn.Module, args: object) -> None:
        stack.append(module)
        if isinstance(module, RELU_MODULES):
            relu_calls[0] += 1

    def leave(module: nn.Module, args: object, output: object) -> None:
        if stack and stack[-1] is module:
            stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names]
    handles += [m.register_forward_hook(leave, always_call=True) for m in names]
    devices = []
    if x.device.type == "cuda":
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    recorder = _Recorder(stack, describe)
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), kept_buffers(model):
            with recorder:
                model(x[:2])
    finally:
        for handle in handles:
            handle.remove()
    return Audit(describe_model(model), (), relu_calls[0], dict(recorder.relu),
                 dict(recorder.linear))


_AUDITS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], Audit]] = \
    weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    return tuple((id(m), type(m)) for m in model.modules())


def audit(model: nn.Module, x: torch.Tensor) -> Audit:
    """The audit of the model's forward on x[:2], cached per model (see the module's text)."""
    fingerprint = _fingerprint(model)
    cached = _AUDITS.get(model)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    scripted = _scripted(model)
    found = (Audit(describe_model(model), scripted) if scripted else _forward_pass(model, x))
    _AUDITS[model] = (fingerprint, found)
    return found


def _places(places: dict[Place, int]) -> str:
    shown = [f"{function} in {where} ({count} call{'s' if count > 1 else ''})"
             for (where, function), count in list(places.items())[:4]]
    more = len(places) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _refuse_scripted(found: Audit, method: str, hooked: str) -> None:
    if found.scripted:
        what = ("is TorchScript" if "" in found.scripted else "contains TorchScript modules "
                f"({', '.join(map(repr, found.scripted[:3]))})")
        raise ModelError(f"{method} cannot explain model {found.model}: it {what}, whose forward "
                         f"runs outside Python where the hooks {method} puts on {hooked} never "
                         "run, so it would silently return something else; pass the Python "
                         "nn.Module (e.g. a factory and its checkpoints: models.external), or use "
                         "a method that needs no module structure (gradient, "
                         "integrated-gradients, smoothgrad, occlusion)")


def require_relu_modules(model: nn.Module, x: torch.Tensor, method: str) -> None:
    """Raise ModelError unless every relu of the model's forward is an nn.ReLU module (so
    `method`, guided backprop or deconvnet, modifies every one) and it has at least one."""
    found = audit(model, x)
    _refuse_scripted(found, method, "its nn.ReLU modules")
    if found.functional_relu:
        raise ModelError(
            f"{method} cannot explain model {found.model}: it applies relu as a function in "
            f"{len(found.functional_relu)} place(s) (not through nn.ReLU modules): "
            f"{_places(found.functional_relu)}. {method} replaces the backward pass of nn.ReLU "
            "modules only, so these would keep their plain gradient and the map would silently "
            "mix both; replace F.relu (torch.relu, x.relu(), clamp(min=0)) by nn.ReLU modules, "
            "one per use, or use another method")
    if not found.relu_modules:
        raise ModelError(
            f"{method} cannot explain model {found.model}: its forward calls no nn.ReLU module, "
            f"so {method}, which replaces the backward pass of ReLUs, would change nothing and "
            "return the plain gradient; it is defined for ReLU networks: use 'gradient' (or "
            "another method) for this model")


def require_weighted_modules(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ModelError unless every linear map of the model's forward is a Linear or Conv
    module, the layers LRP has rules for.

    Activations applied as functions (F.relu, torch.tanh, pooling) are fine: LRP's rules sit on
    the weighted layers, and elementwise activations and pooling keep the invariant that a
    layer input's relevance is ``a * grad`` with their ordinary gradient (``lrp``'s module
    text), so it does not matter whether they are modules. A linear map computed as a function
    would get its plain gradient, LRP-0 at best and wrong for a product of two activations,
    instead of the composite's rule, with no sign of it.
    """
    found = audit(model, x)
    _refuse_scripted(found, "LRP", "its Linear and Conv layers")
    if found.functional_linear:
        kinds = ", ".join(t.__name__ for t in WEIGHTED)
        raise ModelError(
            f"LRP cannot explain model {found.model}: it computes linear maps outside the "
            f"layers LRP has rules for ({kinds} modules) in {len(found.functional_linear)} "
            f"place(s): {_places(found.functional_linear)}. Relevance would pass them with "
            "their plain gradient instead of the composite's rules, silently; compute them "
            f"with {kinds} modules, or use another method")
