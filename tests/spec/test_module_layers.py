"""The spec package reads bottom-up: each module imports only modules below it (the order of
``spotd.spec``'s docstring), so there is no import cycle, not even under TYPE_CHECKING, and
``spotd.errors`` imports nothing of spotd at all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "daemon"

# bottom first; a module may import any module of a lower rank
RANKS = {
    "spotd.errors": 0,
    "spotd.spec.errors": 1,
    "spotd.spec.values": 1,
    "spotd.spec.documents": 2,
    "spotd.spec.issues": 3,
    "spotd.spec.fields": 3,
    "spotd.spec.resources": 4,
    "spotd.spec.service": 4,
    "spotd.spec.job_recovery": 4,
    "spotd.spec.pool": 4,
    "spotd.spec.load": 5,
    "spotd.spec.task": 6,
    "spotd.spec.check": 7,
    "spotd.spec": 8,
}


def _file(module: str) -> Path:
    parts = module.split(".")[1:]
    if module == "spotd.spec":
        return ROOT / "spec" / "__init__.py"
    return ROOT.joinpath(*parts).with_suffix(".py")


def _spotd_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):  # every import, TYPE_CHECKING included
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m == "spotd" or m.startswith("spotd.")}


def test_every_spec_module_has_a_rank() -> None:
    on_disk = {f"spotd.spec.{p.stem}" for p in (ROOT / "spec").glob("*.py")}
    on_disk = {m.removesuffix(".__init__") for m in on_disk}
    assert on_disk | {"spotd.errors"} == set(RANKS)


@pytest.mark.parametrize("module", sorted(RANKS))
def test_imports_only_lower_modules(module: str) -> None:
    rank = RANKS[module]
    for imported in _spotd_imports(_file(module)):
        if imported in RANKS:
            assert RANKS[imported] < rank, f"{module} imports {imported}"
        else:  # outside the spec: only the shared types, and nothing at all for the root
            assert module != "spotd.errors", f"spotd.errors imports {imported}"
            assert imported == "spotd.types", f"{module} imports {imported}"
