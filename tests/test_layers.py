"""Layers import only from layers before them (DESIGN.md: data -> models -> ... -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Shared foundations any layer may use, then the flow in order.
FOUNDATION = {"trustmap", "trustmap.errors", "trustmap.atomic", "trustmap.persist"}
LAYERS = ["data", "models", "training", "predictive", "uncertainty", "per_sample", "explain",
          "evaluate", "report", "studies", "api", "cli"]
LAZY_EXPORT = {"trustmap": {"trustmap.api"}}
"""``trustmap.audit`` is imported from the top layer on first use (a module __getattr__), so
``import trustmap`` stays a leaf."""


def _layer(module: str) -> int:
    if module in FOUNDATION:
        return -1
    top = module.split(".")[1]
    assert top in LAYERS, f"{module} is in no layer; add it to LAYERS in {__file__}"
    return LAYERS.index(top)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "trustmap" or name.startswith("trustmap.")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_from_a_later_layer() -> None:
    violations = []
    for path in sorted((SRC / "trustmap").rglob("*.py")):
        module = _module_name(path)
        if module in FOUNDATION:
            imports = _imports(path) - LAZY_EXPORT.get(module, set())
            assert all(_layer(i) == -1 for i in imports), f"{module} must stay a leaf"
            continue
        for imported in _imports(path):
            if _layer(imported) > _layer(module):
                violations.append(f"{module} imports {imported}")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_a_violation() -> None:
    assert _layer("trustmap.cli") > _layer("trustmap.data.catalog")
    assert _imports(SRC / "trustmap" / "training.py") >= {"trustmap.models",
                                                          "trustmap.data.dataset"}
