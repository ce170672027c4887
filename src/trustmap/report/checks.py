"""One check of a results object against its own dataclass fields, before a page draws anything.

Each field is checked against its type annotation (nested results, lists, tuple keys, dicts of
tensors); a page adds only what the annotations cannot say: the shapes of its tensors, written
once as dimension names (``"int M"``, ``"P C H W"``, ``"bool H W"``: a name binds to the first
size it meets and must match everywhere after, ``_`` is any size), the columns and keys of its
tables, and the lists that must not be empty. Anything wrong is a ``DataError`` naming the
field, what it holds and what was expected, so a page refuses bad results before writing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NoReturn

import pandas as pd
import torch

from trustmap.errors import DataError

NONE: Mapping[str, Any] = types.MappingProxyType({})
KINDS = ("float", "int", "bool")
"""Tensor dtypes a shape spec may start with; float (finite values) when it names none."""


def fail(results: Any, message: str) -> NoReturn:
    """A DataError about ``results``: ``message`` starts with the field's name."""
    raise DataError(f"{type(results).__name__}.{message}")


def check(results: Any, shapes: Mapping[str, str] = NONE,
          columns: Mapping[str, Sequence[str]] = NONE, keys: Mapping[str, Sequence[str]] = NONE,
          nonempty: Sequence[str] = (), dims: Mapping[str, int] = NONE) -> dict[str, int]:
    """Check every field of ``results`` (and of nested results, as ``"outer.inner"``); return
    the sizes the dimension names were bound to.

    ``shapes`` maps a tensor field, or a dict of tensors (every value), to its spec; ``columns``
    a table to the columns it must have; ``keys`` a table to the columns that name one row;
    ``nonempty`` lists fields that must hold something; ``dims`` binds names in advance.
    """
    owner = type(results).__name__
    bound = dict(dims)
    for path, value, hint in _fields(results):
        where = f"{owner}.{path}"
        _conform(value, hint, where)
        if path in nonempty and not len(value):
            raise DataError(f"{where} is empty; the study must fill it before writing a report")
        if path in columns:
            missing = [c for c in columns[path] if c not in value.columns]
            if missing:
                raise DataError(f"{where} lacks the columns {missing}; see "
                                "trustmap.report.results for the columns each table has")
        if path in keys and len(value) and value.duplicated(list(keys[path])).any():
            raise DataError(f"{where} has more than one row per {list(keys[path])}; aggregate it "
                            "first")
        if path in shapes and value is not None:
            entries = value.items() if isinstance(value, dict) else [(None, value)]
            for key, tensor in entries:
                _shape(tensor, shapes[path], where if key is None else f"{where}[{key!r}]", bound)
    return bound


def _fields(results: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(type(results))
    for item in dataclasses.fields(results):
        value = getattr(results, item.name)
        yield prefix + item.name, value, hints[item.name]
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{item.name}.")


def _conform(value: Any, hint: Any, where: str) -> None:
    """``value`` is what ``hint`` says, down to dict keys and values and list items."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        _conform(value, next(a for a in args if a is not type(None)), where)
        return
    if origin is dict and isinstance(value, dict):
        for key, item in value.items():
            if not _is(key, args[0]):
                raise DataError(f"{where} has the key {key!r}; expected keys {_name(args[0])}")
            _conform(item, args[1], f"{where}[{key!r}]")
        return
    if origin is list and isinstance(value, list):
        for index, item in enumerate(value):
            _conform(item, args[0], f"{where}[{index}]")
        return
    if not _is(value, hint):
        raise DataError(f"{where} is {_describe(value)}; expected {_name(hint)}")


def _is(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return isinstance(value, tuple) and (len(args) == 2 and args[1] is Ellipsis
                                             or len(value) == len(args)) and all(
            _is(item, args[0] if args[-1] is Ellipsis else arg)
            for item, arg in zip(value, args, strict=False))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None:
        return getattr(hint, "__name__", str(hint))
    return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _name(a) for a in args)}]"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor | pd.DataFrame):
        return f"a {type(value).__name__} of shape {list(value.shape)}"
    return f"{value!r}" if isinstance(value, str | int | float) else f"a {type(value).__name__}"


def _shape(tensor: torch.Tensor, spec: str, where: str, bound: dict[str, int]) -> None:
    """``tensor`` has the dims of ``spec`` (binding new names in ``bound``) and its dtype."""
    words = spec.split()
    kind, dims = (words[0], words[1:]) if words[0] in KINDS else ("float", words)
    got = list(tensor.shape)
    expected = [d if d == "_" else f"{d}={bound[d]}" if d in bound else d for d in dims]
    if len(got) != len(dims) or any(
            int(d) != g if d.isdigit() else bound.setdefault(d, g) != g
            for d, g in zip(dims, got, strict=True) if d != "_"):
        raise DataError(f"{where} has shape {got}; expected [{', '.join(expected)}] (the same "
                        "size wherever a name recurs, _ any; see trustmap.report.results)")
    if kind == "bool" and tensor.dtype != torch.bool:
        raise DataError(f"{where} is {tensor.dtype}; expected a bool tensor")
    if kind == "int" and (tensor.is_floating_point() or tensor.dtype == torch.bool):
        raise DataError(f"{where} is {tensor.dtype}; expected an integer tensor")
    if kind == "float" and not tensor.is_floating_point():
        raise DataError(f"{where} is {tensor.dtype}; expected a float tensor")
    if kind == "float" and not bool(torch.isfinite(tensor).all()):
        raise DataError(f"{where} holds NaN or infinite values; fix the computation that made it")
