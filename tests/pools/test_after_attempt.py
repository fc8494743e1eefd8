"""What an attempt's end does to its pool job (``spotd.control.pool_queue.after_attempt``):
retries on errors up to ``max_restarts_on_errors``, requeues after a lost worker up to a cap."""

from __future__ import annotations

import pytest

from spotd.control.pool_queue import MAX_REQUEUES, Next, after_attempt


@pytest.mark.parametrize(
    ("exit_code", "failures", "preemptions", "max_restarts", "to", "says"),
    [
        pytest.param(0, 0, 0, 0, Next.SUCCEEDED, "exited with 0", id="success"),
        pytest.param(0, 2, 3, 2, Next.SUCCEEDED, "exited with 0", id="success-after-retries"),
        pytest.param(3, 1, 0, 0, Next.FAILED, "exited with 3", id="no-restarts-by-default"),
        pytest.param(3, 1, 0, 1, Next.QUEUED, "restart 1 of 1", id="first-failure-retried"),
        pytest.param(3, 2, 0, 1, Next.FAILED, "after 1 restarts", id="second-failure-final"),
        pytest.param(1, 3, 0, 5, Next.QUEUED, "restart 3 of 5", id="within-budget"),
        pytest.param(None, 0, 1, 0, Next.QUEUED, "requeue 1 of 10", id="preempted-requeued"),
        pytest.param(None, 5, 10, 0, Next.QUEUED, "requeue 10 of 10", id="last-requeue"),
        pytest.param(None, 0, 11, 0, Next.FAILED, "lost with its worker 11 times", id="capped"),
        pytest.param(9, 1, 10, 0, Next.FAILED, "exited with 9", id="preemptions-dont-retry"),
    ],
)
def test_after_attempt(
    exit_code: int | None, failures: int, preemptions: int, max_restarts: int, to: Next, says: str
) -> None:
    v = after_attempt(
        exit_code,
        failures=failures,
        preemptions=preemptions,
        max_restarts_on_errors=max_restarts,
    )
    assert v.to == to
    assert says in v.reason


def test_the_requeue_cap_is_a_parameter() -> None:
    assert (
        after_attempt(None, failures=0, preemptions=MAX_REQUEUES, max_restarts_on_errors=0).to
        == Next.QUEUED
    )
    assert (
        after_attempt(None, failures=0, preemptions=2, max_restarts_on_errors=0, max_requeues=1).to
        == Next.FAILED
    )
