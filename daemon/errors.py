"""The roots of the exceptions spotd raises to a caller, kept in a leaf module.

They live here, not in the SDK, because the core raises one of them itself: a task file that
does not validate raises ``spotd.spec.errors.SpecError``, which *is* an ``InvalidTaskError``.
That way ``except spotd.InvalidTaskError`` catches a bad task wherever it is found: in
``Task.from_yaml`` on the caller's machine, or by the daemon when it refuses a launch.
The rest of the SDK's errors (mapped from the API's answers) are in ``spotd.sdk.errors``.

Stdlib only: ``spotd.spec.errors`` is imported by the API and the CLI for its cheapness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spotd.spec.errors import SpecIssue


class SpotdError(Exception):
    """Base of every error the spotd SDK raises on purpose."""


class InvalidTaskError(SpotdError):
    """A task spotd will not run.

    ``issues`` lists each problem with its key path and (when it came from a file) its line;
    it is empty when the daemon refused the task as a whole (``run`` missing, a ``workdir``
    that is not a directory).
    """

    issues: Sequence[SpecIssue] = ()
