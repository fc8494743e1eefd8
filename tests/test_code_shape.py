"""The shape issue 13 asked of the package, kept true: no product module over 600 lines, and no
module-level mutable state (a dict, list or set bound at module level can be mutated by anyone
who imports it, and tests that must reset it are the smell STYLE.md warns about; constant
tables are MappingProxyType, frozenset or tuple)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("daemon", "recovery", "serve", "lb")
MAX_LINES = 600
MUTABLE_CALLS = frozenset(
    {"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter", "bytearray"}
)

MODULES = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def mutable_bindings(source: str) -> list[tuple[int, str]]:
    """(line, name) of every module-level binding of a mutable container."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if names == ["__all__"]:
            continue  # read by import machinery and tools, never mutated
        literal = isinstance(
            value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp
        )
        call = (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id in MUTABLE_CALLS
        )
        if literal or call:
            found += [(node.lineno, n) for n in names]
    return found


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("X = {}\n", [(1, "X")]),
        ("X: dict[str, int] = {'a': 1}\n", [(1, "X")]),
        ("X = [1]\nY = {1}\nZ = dict()\n", [(1, "X"), (2, "Y"), (3, "Z")]),
        ("X = {k: 1 for k in 'ab'}\n", [(1, "X")]),
        ("X = MappingProxyType({})\nY = frozenset({1})\nZ = (1, 2)\n", []),
        ("__all__ = ['a']\n", []),
        ("def f():\n    x = {}\n    return x\n", []),  # function locals are not module state
        ("class C:\n    x = 1\n", []),
    ],
)
def test_mutable_bindings_are_found(source: str, found: list[tuple[int, str]]) -> None:
    assert mutable_bindings(source) == found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_holds_no_mutable_state(path: Path) -> None:
    assert mutable_bindings(path.read_text()) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"
