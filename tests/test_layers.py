"""The layering of DESIGN.md, kept true by a test (in place of an import-linter contract).

- `recovery`, `serve` decide; they import only the shared types (and themselves).
- `lb` is its own process: it imports aiohttp, prometheus_client and the shared types only.
- cloud SDKs (aioboto3/boto3, kubernetes_asyncio, pynvml) are imported only inside their one
  adapter module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# the folders that make the package, and the dotted name each one has
PACKAGES = {"daemon": "spotd", "recovery": "spotd.recovery", "serve": "spotd.serve",
            "lb": "spotd.lb"}

SDK_HOMES = {
    "aioboto3": {"spotd.providers.aws", "spotd.files.checkpoint_s3", "spotd.agent",
                 "spotd.files.workdir", "spotd.files.mounts"},
    "boto3": {"spotd.providers.aws", "spotd.files.checkpoint_s3"},
    "botocore": {"spotd.providers.aws", "spotd.files.checkpoint_s3", "spotd.agent",
                 "spotd.files.workdir", "spotd.files.mounts"},
    "kubernetes_asyncio": {"spotd.providers.kubernetes"},
    "pynvml": {"spotd.agent.gpu"},
}


def modules() -> list[tuple[str, Path]]:
    out = []
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([dotted, *parts]), path))
    return out


def imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else \
                    module.split(".")[: len(module.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module or ""]).rstrip("."))
            elif node.module:
                found.add(node.module)
    return found


ALL = modules()


@pytest.mark.parametrize(("module", "path"), [m for m in ALL if m[0].split(".")[1:2] in (
    ["recovery"], ["serve"])], ids=lambda v: str(v))
def test_decisions_import_only_shared_types(module: str, path: Path) -> None:
    own = module.split(".")[1]
    allowed = {"spotd.serve": {"spotd.sdk"}}.get(module, set())  # the SDK forwarder (lazy)
    bad = {i for i in imports(path, module) if i.split(".")[0] == "spotd"
           and i.split(".")[1:2] not in (["types"], [own]) and i not in allowed}
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize(("module", "path"), [m for m in ALL if m[0].split(".")[1:2] == ["lb"]],
                         ids=lambda v: str(v))
def test_load_balancer_stands_alone(module: str, path: Path) -> None:
    bad = {i for i in imports(path, module) if i.split(".")[0] == "spotd"
           and i.split(".")[1:2] not in (["types"], ["lb"])}
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize(("module", "path"), ALL, ids=lambda v: str(v))
def test_cloud_sdks_stay_in_their_adapter(module: str, path: Path) -> None:
    for imp in imports(path, module):
        root = imp.split(".")[0]
        if root in SDK_HOMES:
            assert module in SDK_HOMES[root], f"{module} imports {root}"
