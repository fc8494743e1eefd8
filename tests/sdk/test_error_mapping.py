"""API refusals become exceptions by type, with the text spotctl prints after `error:`."""

from __future__ import annotations

import pytest

import spotd
from spotd.sdk import errors
from spotd.sdk.client import ApiError as ClientApiError


@pytest.mark.parametrize(
    ("status", "message", "details", "expected"),
    [
        (
            400,
            "invalid task YAML",
            [{"path": "resources.acclerators", "line": 3, "message": "unknown key"}],
            errors.TaskRejectedError,
        ),
        (400, "`run` is required for a managed job", None, errors.TaskRejectedError),
        (400, "workdir: /nope is not a directory", None, errors.TaskRejectedError),
        (
            400,
            "this task has a `service:` section: use `spotctl serve up`",
            None,
            errors.TaskRejectedError,
        ),
        (
            400,
            "no feasible placement: no instance type offers A100:16",
            None,
            errors.NoFeasiblePlacementError,
        ),
        (429, "too many jobs for project ml", None, errors.QuotaExceededError),
        (400, "quota of 4 GPUs for project ml reached", None, errors.QuotaExceededError),
        (404, "no job 7", None, errors.NotFoundError),
        (409, "job 7 is already SUCCEEDED", None, errors.ConflictError),
        (400, "invalid request body", [{"field": "bogus", "message": "extra"}], errors.ApiError),
        (500, "internal error in spotd; see the daemon log", None, errors.ApiError),
    ],
)
def test_status_and_message_pick_the_type(status, message, details, expected) -> None:
    raw = ClientApiError(status, message, details)
    got = errors.from_api(raw)
    assert type(got) is expected
    assert str(got) == str(raw)  # what spotctl prints
    assert (got.status, got.message, got.details) == (status, message, details)
    assert isinstance(got, spotd.SpotdError)


def test_rejected_task_is_an_invalid_task_with_its_issues() -> None:
    raw = ClientApiError(
        400,
        "invalid task YAML",
        [{"path": "resources.acclerators", "line": 3, "message": "unknown key"}],
    )
    got = errors.from_api(raw)
    assert isinstance(got, spotd.InvalidTaskError)
    [issue] = got.issues
    assert (issue.path, issue.line, issue.message) == ("resources.acclerators", 3, "unknown key")
    assert str(got) == "invalid task YAML\n  line 3: resources.acclerators: unknown key"


def test_timeouts_and_sync_misuse_are_also_builtin_types() -> None:
    assert issubclass(errors.WaitTimeoutError, TimeoutError)
    assert issubclass(errors.SyncCallInEventLoopError, RuntimeError)


@pytest.mark.parametrize(
    ("status", "message", "unavailable"),
    [
        (404, "Not Found", True),
        (503, "services are not enabled in this daemon", True),
        (404, "no service 'x'", False),
    ],
)
def test_missing_services_api_is_told_apart_from_a_missing_service(
    status, message, unavailable
) -> None:
    from spotd.sdk.aio.serve import _unavailable

    got = _unavailable(errors.from_api(ClientApiError(status, message)))
    assert isinstance(got, errors.ServicesUnavailableError) is unavailable
