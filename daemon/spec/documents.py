"""YAML documents with a line number for every key path, composed within limits.

PyYAML's ``safe_load`` throws the positions away, and pydantic only knows key paths, so a
message like "resources.accelerators: bad syntax" would leave the user hunting through the
file. Here each document is composed into nodes first; the nodes give every key its line, and
the same nodes are then constructed into plain Python data for validation. Paths are tuples of
keys (``str``) and list indices (``int``), exactly the shape of a pydantic error ``loc`` (and
of ``SyntaxProblem.at``, hence one ``Path`` for both).

A task file comes from whoever may call the API, so reading it must be finite and small even
when the file is hostile. An alias (``*a``) costs one event to parse but stands for its whole
anchored value, and everything after composition (the line walk, pydantic) works on the
expanded data: nine lines of nested aliases ("billion laughs") stand for a billion values.
The composer therefore counts, *before* anything is expanded, what the file will cost:
its size, its documents, its alias uses, its nesting depth and the number of values it stands
for once its aliases are expanded (the one bound that covers a chain of a few aliases per
level; the alias count alone does not). ``YamlLimits`` holds the bounds; going past one is a
``SpecError`` naming the limit and the line, like any other problem of a task file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


@dataclass(frozen=True, slots=True, kw_only=True)
class YamlLimits:
    """How much one task file may ask of the parser; going past any bound is a ``SpecError``.

    The defaults are far above any real task file (a few KiB, a handful of anchors for shared
    envs) and far below what would stall the daemon. ``max_values`` counts every value
    (mapping, list, scalar, key) the file stands for with each alias use counted as the whole
    value it refers to: it is what bounds the work after composition.
    """

    max_bytes: int = 1 << 20
    max_documents: int = 100
    max_depth: int = 64
    max_aliases: int = 100
    max_values: int = 50_000


DEFAULT_LIMITS = YamlLimits()
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(Exception):
    """A limit crossed while composing; ``compose_documents`` makes it a ``SpecIssue``."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


if TYPE_CHECKING:  # what the mixin is used with (the loaders below), for the type checker
    _CountingBase = yaml.SafeLoader
else:
    _CountingBase = yaml.composer.Composer
# libyaml's parser (the PyPI wheels are built with it); never constructed without it
_CParser: Any = getattr(yaml.cyaml, "CParser", yaml.parser.Parser)


class _Counting(_CountingBase):
    """PyYAML's composer keeping count of what the file will cost (mixed into the loaders below).

    Every node is composed through ``compose_node``, an alias included (the alias returns the
    anchored node itself), so counting there sees the file exactly as PyYAML does. For each
    finished node the composer records its expanded size and height; an alias then adds its
    target's size to the running total and its height to the current depth: arithmetic on
    numbers, never a walk of the expansion. A node still being composed has no record, so an
    alias to it is an alias inside its own value (``&a [*a]``), refused: no task is recursive,
    and a cycle would break the line walk, pydantic and the JSON dump alike.
    """

    def _start_counting(self, limits: YamlLimits) -> None:
        self.limits = limits
        self.aliases = 0
        self.values = 0
        self.depth = 0
        self.shape: dict[yaml.Node, tuple[int, int]] = {}  # node -> (values, height)

    def next_line(self) -> int | None:
        """The line where the next event (node, alias, document) begins."""
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        return None if mark is None else mark.line + 1

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            return self._compose_alias(parent, index)
        limits = self.limits
        line = self.next_line()
        self.depth += 1
        if self.depth > limits.max_depth:
            raise _Refused(line, f"nested deeper than the limit of {limits.max_depth} levels")
        before = self.values
        self._add_values(1, line)
        node = super().compose_node(parent, index)
        self.depth -= 1
        if node is not None:
            self.shape[node] = (self.values - before, 1 + _children_height(node, self.shape))
        return node

    def _compose_alias(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        limits = self.limits
        line = self.next_line()
        self.aliases += 1
        if self.aliases > limits.max_aliases:
            raise _Refused(
                line, f"more than the limit of {limits.max_aliases} alias uses (*name) in a file"
            )
        node = super().compose_node(parent, index)  # the anchored node, or "undefined alias"
        shape = self.shape.get(node) if node is not None else None
        if shape is None:
            raise _Refused(line, "an alias inside the value it refers to (a recursive alias)")
        size, height = shape
        if self.depth + height > limits.max_depth:
            raise _Refused(
                line,
                f"nested deeper than the limit of {limits.max_depth} levels once the alias "
                "is expanded",
            )
        self._add_values(size, line)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # a scalar that resolves to a type but does not convert (an int past Python's 4300
        # digits, the date 2001-13-45, `!!int abc`) raises ValueError, not a YAML error;
        # made one here, with the scalar's line, it is a SpecError and not a traceback
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this {kind} value: {exc}", node.start_mark
            ) from exc

    def construct_scalar(self, node: yaml.ScalarNode | yaml.MappingNode) -> Any:
        # "\uDCFF" escapes to a lone surrogate, which is no character: no message, file or
        # environment can hold it (encoding it fails), so it is refused here, with its line
        value = super().construct_scalar(node)
        if isinstance(value, str) and not value.isascii() and _SURROGATE.search(value):
            raise yaml.constructor.ConstructorError(
                None, None, "a \\u escape of a lone surrogate is not a character", node.start_mark
            )
        return value

    def _add_values(self, n: int, line: int | None) -> None:
        self.values += n
        if self.values > self.limits.max_values:
            raise _Refused(
                line,
                f"the file stands for more than the limit of {self.limits.max_values} values "
                "(each alias counts as the whole value it refers to)",
            )


class _BoundedLoader(_Counting, yaml.SafeLoader):
    """PyYAML's safe loader, all in Python: its error messages are the ones users see."""

    def __init__(self, text: str, limits: YamlLimits) -> None:
        yaml.SafeLoader.__init__(self, text)
        self._start_counting(limits)


class _FastBoundedLoader(
    _Counting,
    _CParser,  # type: ignore[misc]
    yaml.constructor.SafeConstructor,
    yaml.resolver.Resolver,
):
    """The same with libyaml's parser (scanning and parsing in C: most of a load's time in
    Python); the composer, the constructor and the resolver stay PyYAML's, so what is counted
    and built is the same. Its error messages differ, so a file it refuses is read again by
    :class:`_BoundedLoader` for PyYAML's (``compose_documents``)."""

    def __init__(self, text: str, limits: YamlLimits) -> None:
        _CParser.__init__(self, text)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._start_counting(limits)


def _children_height(node: yaml.Node, shape: Mapping[yaml.Node, tuple[int, int]]) -> int:
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        return 0
    return max((shape[c][1] for c in children if c in shape), default=0)


def key_text(node: yaml.Node) -> str:
    """A mapping key as the user wrote it (``on`` stays ``on``, not ``True``)."""
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "<complex key>"


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], duplicates: list[Path]) -> None:
    # a shared anchor is walked once per place it is used, which is what a user reading the
    # file expects; the composer's limits keep that finite (no cycles, bounded expansion)
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
            _walk(value_node, child, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines, duplicates)


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


def _size_issue(text: str, limits: YamlLimits, file: str) -> SpecIssue | None:
    if len(text) <= limits.max_bytes // 4:  # four UTF-8 bytes a character at most
        return None
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limits.max_bytes:
        return None
    line = data[: limits.max_bytes].count(b"\n") + 1
    return SpecIssue(
        "",
        line,
        f"the file is larger than the limit of {limits.max_bytes} bytes (the limit falls on "
        "this line)",
        file,
    )


def compose_documents(
    text: str, *, file: str, limits: YamlLimits = DEFAULT_LIMITS
) -> list[Document]:
    """Every document of ``text`` with its lines; raises ``SpecError`` on malformed YAML or
    on a file that goes past ``limits``."""
    too_big = _size_issue(text, limits, file)
    if too_big is not None:
        raise SpecError([too_big])
    if yaml.__with_libyaml__:
        try:
            return _compose(text, file, limits, _FastBoundedLoader)
        except SpecError as exc:  # malformed: read again in Python, whose messages (and
            if not isinstance(exc.__cause__, yaml.YAMLError):  # lines) are the documented ones
                raise  # a limit: counted the same in both
        except UnicodeError:  # text libyaml cannot take as UTF-8 (a lone surrogate from JSON):
            pass  # PyYAML's reader refuses it with a message
    return _compose(text, file, limits, _BoundedLoader)


def _compose(
    text: str, file: str, limits: YamlLimits, loader_type: type[_Counting]
) -> list[Document]:
    try:
        loader = loader_type(text, limits)  # type: ignore[call-arg]
    except yaml.YAMLError as exc:  # the reader refuses control characters before any parsing
        raise SpecError([_yaml_issue(exc, file)]) from exc
    docs: list[Document] = []
    try:
        while loader.check_node():
            if len(docs) >= limits.max_documents:
                raise _Refused(
                    loader.next_line(),
                    f"more than the limit of {limits.max_documents} documents (---) in a file",
                )
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            # construct_document flattens merge keys (<<: *base) in the node itself, so the
            # walk below sees the merged keys and their lines
            data = loader.construct_document(node)
            lines: dict[Path, int] = {(): node.start_mark.line + 1}
            duplicates: list[Path] = []
            _walk(node, (), lines, duplicates)
            docs.append(Document(data, lines, tuple(duplicates)))
    except _Refused as exc:
        raise SpecError([SpecIssue("", exc.line, exc.message, file)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_issue(exc, file)]) from exc
    finally:
        loader.dispose()
    return docs
