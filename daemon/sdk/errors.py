"""Exceptions an SDK caller catches by type, mapped from the daemon API's answers.

The daemon answers every refusal with an HTTP status and a JSON body ``{"error", "details"}``;
``from_api`` turns that into one of the classes below. Their text is exactly what ``spotctl``
prints after ``error:``, so a message seen in a terminal and one caught in Python read the same.

The mapping keys on the status first and on the leading words of the message second (the API
has no machine-readable error code yet; the table in ``from_api`` is the one place that would
change if it grew one)::

    400 "invalid task YAML"           -> InvalidTaskError (issues with key path and line)
    400 "invalid service YAML"        -> InvalidTaskError (the same, from ``serve up``)
    400 "`run` is required", "workdir: ...", "... `service:` section ...", "expected one
        task", "a service replica runs on one node", "service name ..."
                                      -> InvalidTaskError (no issues: the task as a whole)
    400 "no feasible placement..."    -> NoFeasiblePlacementError
    403/429, or "quota" in the text   -> QuotaExceededError
    404                               -> NotFoundError
    409                               -> ConflictError (cancel a job that already ended,
                                         a service name that is taken)
    anything else                     -> ApiError

``SpotdError`` and ``InvalidTaskError`` come from ``spotd.errors`` because the core's own
``SpecError`` (a bad YAML file, raised by ``Task.from_yaml``) is an ``InvalidTaskError`` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spotd.errors import InvalidTaskError, SpotdError
from spotd.spec.errors import SpecIssue

if TYPE_CHECKING:
    from spotd.sdk.client import ApiError as ClientApiError
    from spotd.sdk.types import Job

__all__ = [
    "ApiError",
    "ConflictError",
    "DaemonUnreachableError",
    "InvalidTaskError",
    "JobFailedError",
    "NoFeasiblePlacementError",
    "NotFoundError",
    "QuotaExceededError",
    "ServicesUnavailableError",
    "SpotdError",
    "SyncCallInEventLoopError",
    "TaskRejectedError",
    "WaitTimeoutError",
    "from_api",
]


class ApiError(SpotdError):
    """The daemon refused a request. ``status`` is the HTTP code, ``message`` the first
    line, ``details`` the API's details as sent; ``str()`` is what ``spotctl`` prints."""

    def __init__(self, status: int, message: str, details: Any = None, *, text: str = "") -> None:
        super().__init__(text or message)
        self.status = status
        self.message = message
        self.details = details
        self._text = text or message

    def __str__(self) -> str:
        return self._text


class TaskRejectedError(ApiError, InvalidTaskError):
    """The daemon refused the task itself (an ``InvalidTaskError`` that also has a status)."""

    def __init__(self, status: int, message: str, details: Any = None, *, text: str = "") -> None:
        super().__init__(status, message, details, text=text)
        self.issues = [
            SpecIssue(str(d["path"]), d.get("line"), str(d["message"]), "<task>")
            for d in (details if isinstance(details, list) else [])
            if isinstance(d, dict) and "path" in d and "message" in d
        ]


class NoFeasiblePlacementError(ApiError):
    """No provider, region and instance type in the catalog can satisfy the resources
    (``accelerators: A100:16`` where the largest machine has 8)."""


class QuotaExceededError(ApiError):
    """A provider's quota (or the daemon's) does not allow this request."""


class NotFoundError(ApiError):
    """No such job, attempt or service."""


class ConflictError(ApiError):
    """The request does not fit the object's state (cancelling a job that already ended)."""


class ServicesUnavailableError(ApiError):
    """The daemon has no services API (an older daemon, or services disabled in it)."""


class DaemonUnreachableError(SpotdError):
    """No daemon answered, and none was started (``autostart=False``, or it failed to start)."""


class JobFailedError(SpotdError):
    """A job ended without succeeding (FAILED, FAILED_SETUP, FAILED_NO_RESOURCE,
    FAILED_CONTROLLER). ``job`` is its final state, message and attempts included."""

    def __init__(self, job: Job) -> None:
        detail = f": {job.message}" if job.message else ""
        super().__init__(f"job {job.id} ({job.name}) ended {job.status}{detail}")
        self.job = job


class WaitTimeoutError(SpotdError, TimeoutError):
    """``wait(..., timeout=...)`` ran out before the job ended; ``job`` is its last state.
    Also a ``TimeoutError``. The job keeps running."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} is still {job.status} after {timeout:g}s")
        self.job = job
        self.timeout = timeout


class SyncCallInEventLoopError(SpotdError, RuntimeError):
    """A blocking SDK function was called from inside a running event loop."""


_TASK_REFUSALS = (
    "invalid task YAML",
    "invalid service YAML",
    "`run` is required",
    "workdir:",
    "expected one task",
    "this task has a `service:` section",
    "the task has no `service:` section",
    "a service replica runs on one node",
    "the service needs a name",
    "service name ",
)


def from_api(exc: ClientApiError) -> ApiError:
    """The SDK exception for a refusal the client received (see the module docstring)."""
    status, message, details = exc.status, exc.message, exc.details
    text = str(exc)  # the client formats details the way spotctl prints them
    cls: type[ApiError] = ApiError
    if status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status in (403, 429) or "quota" in message.lower():
        cls = QuotaExceededError
    elif status == 400 and message.startswith("no feasible placement"):
        cls = NoFeasiblePlacementError
    elif status == 400 and message.startswith(_TASK_REFUSALS):
        cls = TaskRejectedError
    return cls(status, message, details, text=text)
