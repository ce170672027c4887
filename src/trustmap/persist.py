"""Results that save and load themselves: tensors in safetensors, everything else in JSON.

A study's results are a dataclass of tensors, DataFrames, plain values and nested results;
``save`` writes them as ``NAME.safetensors`` + ``NAME.json`` (atomically, tensors by dotted
field path, DataFrames as parquet in base64, so every float bit and dtype comes back) and
``load`` rebuilds the dataclass, so a page can be drawn again from a finished run without
computing anything. Dict keys that are tuples, such as (architecture, predictive, measure),
are kept as tuples.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch
from pyarrow import ArrowException
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trustmap.atomic import write_atomic
from trustmap.errors import CheckpointError

T = TypeVar("T")
TENSOR, FRAME, TUPLE = "__tensor__", "__frame__", "__tuple__"


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {TENSOR: path}
    if isinstance(value, pd.DataFrame):
        buffer = io.BytesIO()  # parquet keeps every float bit and every dtype
        value.to_parquet(buffer, index=False)
        return {FRAME: base64.b64encode(buffer.getvalue()).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _encode(getattr(value, field.name), f"{path}.{field.name}", tensors)
                for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {"__items__": [[_encode(key, "", tensors),
                               _encode(item, f"{path}[{index}]", tensors)]
                              for index, (key, item) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {TUPLE: [_encode(item, f"{path}[{i}]", tensors) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{path}[{i}]", tensors) for i, item in enumerate(value)]
    return value


def _decode(value: Any, tensors: dict[str, torch.Tensor], kind: Any) -> Any:
    if isinstance(value, dict):
        if TENSOR in value:
            return tensors[value[TENSOR]]
        if FRAME in value:
            return pd.read_parquet(io.BytesIO(base64.b64decode(value[FRAME])))
        if TUPLE in value:
            return tuple(_decode(item, tensors, None) for item in value[TUPLE])
        if "__items__" in value:
            return {_decode(key, tensors, None): _decode(item, tensors, None)
                    for key, item in value["__items__"]}
        if dataclasses.is_dataclass(kind):
            hints = typing.get_type_hints(kind)
            return kind(**{name: _decode(item, tensors, _dataclass_in(hints[name]))
                           for name, item in value.items()})
    if isinstance(value, list):
        return [_decode(item, tensors, None) for item in value]
    return value


def _dataclass_in(hint: Any) -> Any:
    """The dataclass a field holds (``X`` or ``X | None``), if any."""
    candidates = typing.get_args(hint) or (hint,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def save(results: Any, directory: Path, name: str) -> None:
    """Write ``results`` to ``directory/name.json`` and ``directory/name.safetensors``."""
    tensors: dict[str, torch.Tensor] = {}
    payload = {"type": type(results).__name__, "fields": _encode(results, name, tensors)}
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    write_atomic(directory / f"{name}.json",
                 lambda tmp: tmp.write_text(json.dumps(payload, default=str), "utf-8"))


def load(kind: type[T], directory: Path, name: str) -> T:
    """The ``kind`` results saved as ``name`` in ``directory``; CheckpointError naming the file
    and what to do if either file is missing, damaged or of another layout."""
    path = directory / f"{name}.json"
    advice = "run the command that made them again (`trustmap run` or `trustmap study NAME`)"
    try:
        payload = json.loads(path.read_text("utf-8"))
        tensors = load_file(str(directory / f"{name}.safetensors"))
    except (OSError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"{directory}: the saved {name} results cannot be read ({error}); "
                              f"{advice}") from None
    if not isinstance(payload, dict) or payload.get("type") != kind.__name__:
        found = payload.get("type") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} holds {found!r}, not saved {kind.__name__} results; "
                              f"{advice}")
    try:
        results = _decode(payload.get("fields"), tensors, kind)
    except (KeyError, TypeError, ValueError, AttributeError, ArrowException) as error:
        # binascii.Error (bad base64) is a ValueError; a field renamed by an upgrade is a TypeError
        raise CheckpointError(f"{path} is damaged or of another trustmap version "
                              f"({type(error).__name__}: {error}); {advice}") from None
    if not isinstance(results, kind):
        raise CheckpointError(f"{path} holds no {kind.__name__} fields; {advice}")
    return results
