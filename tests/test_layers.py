"""The import contracts of ``.importlinter``, checked on every test run.

``.importlinter`` is the one statement of the package's layering (docs/architecture.md draws
it): the layers from the entry points down to the shared types, the decision packages
(recovery, serve) and the LB importing only ``spotd.types``, the agent and the SDK standing
apart from the daemon, each cloud SDK only in its adapter, no cycles.

Two checks read it:

- ``lint-imports`` itself, through ``scripts/lint.sh imports`` (the shadow tree that script
  builds is how import-linter sees a package assembled by setuptools' package-dir mapping).
  It follows indirect imports too. It needs the ``dev`` extra, which ``make`` installs; where
  import-linter is missing that one test skips and says so;
- a reading of every module's own import statements (``ast``) against the same contracts,
  which needs nothing installed and names the offending line's module. It sees direct
  imports only, so it is the quick half, not a replacement; the table of
  ``test_the_checker_finds_what_breaks_a_contract`` shows what it catches.
"""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# the folders that make the package, and the dotted name each one has (pyproject's package-dir)
FOLDERS = {
    "daemon": "spotd",
    "recovery": "spotd.recovery",
    "serve": "spotd.serve",
    "lb": "spotd.lb",
}

Graph = Mapping[str, frozenset[str]]  # module -> the modules it imports directly


# -- reading the package -----------------------------------------------------------------------


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, dotted in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([dotted, *parts])] = path
    return out


def imports_of(path: Path, module: str, known: Iterable[str]) -> frozenset[str]:
    """Every module ``path`` imports, at any depth of the file (functions, TYPE_CHECKING)."""
    known = set(known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # `from spotd.telemetry import gpu` imports the module spotd.telemetry.gpu (and, as
            # import-linter counts it, not the package); `from spotd.telemetry.gpu import X` the
            # module itself
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found |= subs
            if len(subs) < len(node.names):
                found.add(target)
    return frozenset(found)


def package_graph() -> Graph:
    files = module_files()
    return {m: imports_of(p, m, files) for m, p in files.items()}


# -- reading the contracts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contract:
    id: str
    type: str
    options: Mapping[str, tuple[str, ...]]

    def get(self, key: str) -> tuple[str, ...]:
        return self.options.get(key, ())


def read_contracts(text: str) -> list[Contract]:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    out = []
    for section in parser.sections():
        if not section.startswith("importlinter:contract:"):
            continue
        opts = {
            k: tuple(line.strip() for line in v.splitlines() if line.strip())
            for k, v in parser[section].items()
        }
        out.append(Contract(section.split(":", 2)[2], opts["type"][0], opts))
    return out


CONTRACTS = read_contracts((ROOT / ".importlinter").read_text())


# -- the checker -------------------------------------------------------------------------------


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _owner(module: str, packages: Iterable[str]) -> str | None:
    """The package of ``packages`` that holds ``module`` (the most specific one)."""
    hits = [p for p in packages if within(module, p)]
    return max(hits, key=len) if hits else None


def violations(contract: Contract, graph: Graph) -> list[str]:
    """The direct imports of ``graph`` that break ``contract`` ("importer -> imported")."""
    ignored = {
        tuple(x.strip() for x in line.split("->")) for line in contract.get("ignore_imports")
    }
    edges = [
        (a, b) for a, targets in graph.items() for b in sorted(targets) if (a, b) not in ignored
    ]
    bad: list[str] = []
    if contract.type == "forbidden":
        sources, forbidden = contract.get("source_modules"), contract.get("forbidden_modules")
        bad = [
            f"{a} -> {b}"
            for a, b in edges
            if _owner(a, sources) and _owner(b, forbidden) and not _owner(a, forbidden)
        ]
    elif contract.type == "independence":
        mods = contract.get("modules")
        bad = [
            f"{a} -> {b}"
            for a, b in edges
            if _owner(a, mods) and _owner(b, mods) and _owner(a, mods) != _owner(b, mods)
        ]
    elif contract.type == "protected":
        protected, allowed = contract.get("protected_modules"), contract.get("allowed_importers")
        bad = [
            f"{a} -> {b}"
            for a, b in edges
            if _owner(b, protected) and not _owner(a, allowed) and not _owner(a, protected)
        ]
    elif contract.type == "layers":
        bad = _layer_violations(contract, edges)
    return bad


def _layer_violations(contract: Contract, edges: list[tuple[str, str]]) -> list[str]:
    containers = contract.get("containers") or ("",)
    layers: list[tuple[list[str], bool]] = []  # (members, independent), highest first
    for line in contract.get("layers"):
        sep = "|" if "|" in line else ":"
        names = [n.strip().strip("()") for n in line.split(sep)]
        layers.append(
            (
                [f"{c}.{n}" if c else n for c in containers for n in names],
                sep == "|" or len(names) == 1,
            )
        )
    index = {m: i for i, (members, _) in enumerate(layers) for m in members}
    bad = []
    for a, b in edges:
        la, lb = _owner(a, index), _owner(b, index)
        if la is None or lb is None or la == lb:
            continue
        if index[lb] < index[la] or (index[lb] == index[la] and layers[index[la]][1]):
            bad.append(f"{a} -> {b}")
    return bad


# -- the tests ---------------------------------------------------------------------------------

CHECKED = [c for c in CONTRACTS if c.type in ("forbidden", "independence", "protected", "layers")]


@pytest.mark.parametrize("contract", CHECKED, ids=lambda c: c.id)
def test_direct_imports_keep_the_contract(contract: Contract) -> None:
    assert violations(contract, package_graph()) == [], contract.id


def _contract(cid: str) -> Contract:
    return next(c for c in CONTRACTS if c.id == cid)


@pytest.mark.parametrize(
    ("contract", "importer", "imported", "broken"),
    [
        ("decisions-import-only-types", "spotd.serve.hedge", "spotd.types", False),
        ("decisions-import-only-types", "spotd.serve.hedge", "spotd.serve.autoscaler", False),
        ("decisions-import-only-types", "spotd.serve", "spotd.sdk.serve", False),  # ignored
        ("decisions-import-only-types", "spotd.serve.hedge", "spotd.sdk.serve", True),
        ("decisions-import-only-types", "spotd.lb.proxy", "spotd.aiokit", True),
        ("decisions-independent", "spotd.recovery.watch", "spotd.serve.hedge", True),
        ("agent-stands-alone", "spotd.agent.main", "spotd.telemetry.gpu", False),
        ("agent-stands-alone", "spotd.agent.main", "spotd.store", True),
        ("sdk-is-a-client", "spotd.sdk.client", "spotd.server", True),
        ("providers-are-adapters", "spotd.providers.aws", "spotd.pricing.catalog", False),
        ("providers-are-adapters", "spotd.providers.local", "spotd.control.jobs", True),
        ("nvml", "spotd.telemetry.gpu", "pynvml", False),
        ("nvml", "spotd.agent.main", "pynvml", True),
        ("aws-sdk", "spotd.files.checkpoint_s3", "aioboto3", False),
        ("aws-sdk", "spotd.control.jobs", "botocore.exceptions", True),
        ("kubernetes-sdk", "spotd.providers.kubernetes.watch", "kubernetes_asyncio", False),
        ("layers", "spotd.api.jobs", "spotd.control.submit", False),
        ("layers", "spotd.control.jobs", "spotd.api.common", True),  # upwards
        ("layers", "spotd.store.jobs", "spotd.providers.base", True),  # independent siblings
        ("layers", "spotd.server", "spotd.sdk", True),
        ("layers", "spotd.spec", "spotd.pricing", True),
        ("layers", "spotd.cli.main", "spotd.sdk.client", False),
    ],
)
def test_the_checker_finds_what_breaks_a_contract(
    contract: str, importer: str, imported: str, broken: bool
) -> None:
    graph = {importer: frozenset({imported})}
    assert bool(violations(_contract(contract), graph)) is broken


def test_every_part_of_the_package_is_in_a_layer() -> None:
    """The layers contract is exhaustive: a new top-level module must be placed in it (the
    layers contract of import-linter says so too, with ``exhaustive = True``)."""
    layered = {
        n.strip().strip("()")
        for line in _contract("layers").get("layers")
        for n in line.replace(":", "|").split("|")
    }
    tops = {m.split(".")[1] for m in module_files() if m.count(".") >= 1}
    assert tops - layered == set()


def test_every_package_folder_is_in_pyproject() -> None:
    """setuptools installs only the packages pyproject lists (a wheel without one would fail at
    import time on a user's machine, not here, where the install is editable)."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {m for m, p in module_files().items() if p.name == "__init__.py"}
    assert found - listed == set()


def test_lint_imports_keeps_every_contract(tmp_path: Path) -> None:
    """import-linter on the real graph, indirect imports included (what `make lint` runs)."""
    if not (ROOT / ".venv/bin/lint-imports").exists() or shutil.which("bash") is None:
        pytest.skip("import-linter is not installed here (pip install -e '.[dev]')")
    run = subprocess.run(
        ["bash", "scripts/lint.sh", "imports"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "LINT_DIR": str(tmp_path)},
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
