"""What a bad task YAML produces: every problem, each with its key path and line.

Kept apart from ``spotd.spec`` so that the API and the CLI can catch ``SpecError`` and print
its issues without importing the models. A ``SpecError`` always carries *all* the problems
found in a file (not just the first), because fixing a YAML one error per launch is the
slowest possible feedback loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from spotd.errors import InvalidTaskError


@dataclass(frozen=True, slots=True)
class SpecIssue:
    """One problem in a task YAML.

    ``path`` is the key path as a user would write it (``resources.accelerators``,
    ``resources.any_of[1].cpus``, ``file_mounts["/data"].mode``), empty for the whole file.
    ``line`` is 1-based, None when the problem has no place in the text (a missing file).
    The message never contains a secret's value.
    """

    path: str
    line: int | None
    message: str
    file: str = "<string>"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(InvalidTaskError):
    """A task YAML that cannot be used; ``issues`` lists every problem, in file order.

    It is an ``InvalidTaskError`` (``spotd.errors``), the one type SDK callers catch.
    """

    def __init__(self, issues: Iterable[SpecIssue]) -> None:
        self.issues: list[SpecIssue] = sorted(
            issues, key=lambda i: (i.file, i.line if i.line is not None else 0)
        )
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)
