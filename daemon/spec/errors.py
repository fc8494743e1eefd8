"""What a bad task YAML produces: every problem, each with its key path and line.

A ``SpecError`` always carries *all* the problems found in a file (not just the first),
because fixing a YAML one error per launch is the slowest possible feedback loop. It sits at
the bottom of the package, so that every step of reading a file (YAML composition, the
models' validation, ``set_resources``) raises the same error. ``SpecIssue`` itself lives in
``spotd.errors`` (the SDK also builds issues, from the daemon's answers); it is re-exported
here.
"""

from __future__ import annotations

from collections.abc import Iterable

from spotd.errors import InvalidTaskError, SpecIssue

__all__ = ["SpecError", "SpecIssue"]


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
