"""The roots of the exceptions spotd raises to a caller, and the issue record they carry.

They live here, not in the SDK, because the core raises one of them itself: a task file that
does not validate raises ``spotd.spec.errors.SpecError``, which *is* an ``InvalidTaskError``.
That way ``except spotd.InvalidTaskError`` catches a bad task wherever it is found: in
``Task.from_yaml`` on the caller's machine, or by the daemon when it refuses a launch.
The rest of the SDK's errors (mapped from the API's answers) are in ``spotd.sdk.errors``.

``SpecIssue`` is defined here too, because ``InvalidTaskError.issues`` holds them whether the
spec found the problems (``spotd.spec``) or the daemon's answer listed them (the SDK). This
module is the leaf: stdlib only, importing nothing of spotd, so that everything else may
import it and it imports nothing back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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


class SpotdError(Exception):
    """Base of every error the spotd SDK raises on purpose."""


class InvalidTaskError(SpotdError):
    """A task spotd will not run.

    ``issues`` lists each problem with its key path and (when it came from a file) its line;
    it is empty when the daemon refused the task as a whole (``run`` missing, a ``workdir``
    that is not a directory).
    """

    issues: Sequence[SpecIssue] = ()
