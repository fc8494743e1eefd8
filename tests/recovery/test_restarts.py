"""User failures: restart up to max_restarts_on_errors; recover_on_exit_codes always."""

from __future__ import annotations

import pytest

from spotd.recovery.restarts import Fail, Restart, on_job_exit


@pytest.mark.parametrize(
    ("exit_code", "max_restarts", "codes", "so_far", "expected"),
    [
        # the module docstring's rows
        (1, 0, [], 0, Fail),
        (1, 2, [], 1, Restart),
        (1, 2, [], 2, Fail),
        (33, 0, [33], 5, Restart),
        # more
        (1, 2, [], 0, Restart),
        (137, 1, [33, 34], 0, Restart),
        (137, 1, [33, 34], 1, Fail),
        (34, 1, [33, 34], 1, Restart),
        (-9, 0, [], 0, Fail),  # killed by a signal: a failure like any other
    ],
)
def test_on_job_exit(
    exit_code: int, max_restarts: int, codes: list[int], so_far: int, expected: type
) -> None:
    d = on_job_exit(
        exit_code,
        max_restarts_on_errors=max_restarts,
        recover_on_exit_codes=codes,
        user_restarts_so_far=so_far,
    )
    assert isinstance(d, expected), d


@pytest.mark.parametrize(
    ("exit_code", "codes", "counts"),
    [(1, [], True), (33, [33], False), (1, [33], True)],
)
def test_only_ordinary_errors_count_towards_the_limit(
    exit_code: int, codes: list[int], counts: bool
) -> None:
    d = on_job_exit(
        exit_code, max_restarts_on_errors=3, recover_on_exit_codes=codes, user_restarts_so_far=0
    )
    assert isinstance(d, Restart) and d.counts is counts


@pytest.mark.parametrize(
    ("max_restarts", "so_far", "text"),
    [
        (0, 0, "exit code 1; max_restarts_on_errors is 0"),
        (2, 2, "exit code 1; all 2 restart(s) on errors used"),
    ],
)
def test_fail_says_why(max_restarts: int, so_far: int, text: str) -> None:
    d = on_job_exit(
        1,
        max_restarts_on_errors=max_restarts,
        recover_on_exit_codes=[],
        user_restarts_so_far=so_far,
    )
    assert isinstance(d, Fail) and d.reason == text


def test_restart_says_which() -> None:
    d = on_job_exit(1, max_restarts_on_errors=3, recover_on_exit_codes=[], user_restarts_so_far=1)
    assert isinstance(d, Restart) and d.reason == "restart 2 of 3 on errors"


def test_exit_zero_is_not_a_failure() -> None:
    with pytest.raises(ValueError):
        on_job_exit(0, max_restarts_on_errors=1, recover_on_exit_codes=[], user_restarts_so_far=0)
