"""YAML documents with a line number for every key path.

PyYAML's ``safe_load`` throws the positions away, and pydantic only knows key paths, so a
message like "resources.accelerators: bad syntax" would leave the user hunting through the
file. Here each document is composed into nodes first; the nodes give every key its line, and
the same nodes are then constructed into plain Python data for validation. Paths are tuples of
keys (``str``) and list indices (``int``), exactly the shape of a pydantic error ``loc`` (and
of ``SyntaxProblem.at``, hence one ``Path`` for both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from spotd.spec.errors import SpecError, SpecIssue
from spotd.spec.values import Path


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document: its data, the line of each key path, and problems seen on the way.

    ``lines[()]`` is the document's first line. ``duplicates`` lists the paths of keys written
    twice in one mapping (YAML keeps the last silently; a task file doing that is a mistake).
    """

    data: Any
    lines: Mapping[Path, int]
    duplicates: tuple[Path, ...] = ()

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return None


def key_text(node: yaml.Node) -> str:
    """A mapping key as the user wrote it (``on`` stays ``on``, not ``True``)."""
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "<complex key>"


def _walk(
    node: yaml.Node,
    path: Path,
    lines: dict[Path, int],
    duplicates: list[Path],
    active: set[int],
) -> None:
    # `active` guards against recursive aliases (&a [*a]); a plain shared anchor is walked
    # once per place it is used, which is what a user reading the file expects.
    if id(node) in active:
        return
    active.add(id(node))
    try:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_text(key_node)
                child = (*path, key)
                if key in seen:
                    duplicates.append(child)
                else:
                    seen.add(key)
                # a key's line is where the key is written; its value may start below it
                lines[child] = key_node.start_mark.line + 1
                _walk(value_node, child, lines, duplicates, active)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = (*path, i)
                lines[child] = item.start_mark.line + 1
                _walk(item, child, lines, duplicates, active)
    finally:
        active.discard(id(node))


def _yaml_issue(exc: yaml.YAMLError, file: str) -> SpecIssue:
    line: int | None = None
    text = str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        parts = [p for p in (exc.context, exc.problem) if p]
        text = ", ".join(parts) or text
        start = exc.context_mark
        if start is not None and line is not None and start.line + 1 != line:
            text += f" (the construct began on line {start.line + 1})"
    return SpecIssue("", line, f"malformed YAML: {text}", file)


def compose_documents(text: str, *, file: str) -> list[Document]:
    """Every document of ``text`` with its lines; raises ``SpecError`` on malformed YAML."""
    loader = yaml.SafeLoader(text)
    docs: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            # construct_document flattens merge keys (<<: *base) in the node itself, so the
            # walk below sees the merged keys and their lines
            data = loader.construct_document(node)
            lines: dict[Path, int] = {(): node.start_mark.line + 1}
            duplicates: list[Path] = []
            _walk(node, (), lines, duplicates, set())
            docs.append(Document(data, lines, tuple(duplicates)))
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_issue(exc, file)]) from exc
    finally:
        loader.dispose()
    return docs
