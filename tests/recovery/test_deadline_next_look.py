"""When a RUNNING DEADLINE job's worker must look again for a market move, without news
(``spotd.control.deadline.next_look``, read by ``spotd.control.recheck``).

A job 1000 s of work long, due 3000 s from now, 60 s restarts and a 30 s margin: on spot the
switch to on-demand is due when ``slack - 60 < 30``; the bound on the slack comes from the job
row alone (the checkpointed work, else the current attempt's run time)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

from spotd.control.attempts import job_view
from spotd.control.deadline import next_look
from spotd.recovery import strategies
from spotd.spec import Task
from spotd.types import JobStatus

NOW = 100_000.0
TASK = Task.model_validate(
    {
        "run": "python train.py",
        "resources": {"use_spot": True},
        "job_recovery": {
            "strategy": "DEADLINE",
            "deadline": "1h",
            "expected_duration": "1000s",
            "restart_overhead": "60s",
            "safety_margin": "30s",
        },
    }
)
EAGER = Task.model_validate({"run": "python train.py"})


@dataclass(frozen=True)
class Job:
    """The fields of a JobRow that ``next_look`` reads (through ``job_view``)."""

    status: JobStatus = JobStatus.RUNNING
    deadline: float | None = NOW + 3000.0
    work_done_seconds: float = 0.0
    submitted_at: float = NOW - 600.0  # what job_view reads besides
    failed_launches: int = 0
    first_failure_at: float | None = None
    current_attempt: int = 1


@dataclass(frozen=True)
class Attempt:
    """The fields of an AttemptRow that ``next_look`` reads (through ``job_view``)."""

    market: str = "spot"
    attempt: int = 1
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    provider: str = "local"
    region: str = "local-east"
    zone: str = "local-east-a"
    instance_type: str = "cpu-1"
    price_per_hour: float = 0.0144


def look(
    job: Job,
    attempt: Attempt,
    *,
    task: Task = TASK,
    known: tuple[float, float] | None = None,
) -> Any:
    return next_look(job, task, attempt, NOW, known=known)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("job", "attempt", "expected"),
    [
        # 400 s checkpointed: 600 left, slack 2400, the switch due in 2400 - 60 - 30
        (Job(work_done_seconds=400.0), Attempt(), 2310.0),
        # no checkpoint: at least the 500 s the attempt has run
        (Job(), Attempt(started_at=NOW - 500.0), 2410.0),
        # no checkpoint and not started: nothing done, slack 2000
        (Job(), Attempt(), 1910.0),
        # 50 s of slack: within a restart and the margin, due now
        (Job(deadline=NOW + 1050.0), Attempt(), 0.0),
        # on-demand: a return turns due, and a decided one moves, only at a checkpoint, which
        # wakes the worker
        (Job(work_done_seconds=400.0), Attempt(market="on-demand"), None),
        # not running (starting, recovering): no move rule
        (Job(status=JobStatus.STARTING), Attempt(), None),
    ],
)
def test_next_look(job: Job, attempt: Attempt, expected: float | None) -> None:
    assert look(job, attempt) == expected


@pytest.mark.parametrize(
    ("known", "expected"),
    [
        # the last full view, 100 s ago, found 2950 s of slack (earlier attempts ran 450 s
        # more than this one): at least 2850 now, the switch due in 2850 - 90
        ((NOW - 100.0, 2950.0), 2760.0),
        # a view that found less than the row's bound does not lower it
        ((NOW - 100.0, 1000.0), 2410.0),
        # long ago: what is left of it is below the row's bound
        ((NOW - 2000.0, 2950.0), 2410.0),
    ],
)
def test_the_last_full_view_tightens_the_bound_of_a_job_without_checkpoints(
    known: tuple[float, float], expected: float
) -> None:
    assert look(Job(), Attempt(started_at=NOW - 500.0), known=known) == expected


def test_with_the_last_view_the_switch_is_still_not_due_before_the_look() -> None:
    """A job without checkpoints, its earlier attempts 450 s of run time: the bound from the
    last full view (the controller's, ``Deadline.known_slack``) still never passes the moment
    the switch is due, and ends 0.5 s looks as soon as the row alone is loose."""
    row: Any = Job(deadline=NOW + 550.0, submitted_at=NOW - 2100.0)
    earlier = Attempt(started_at=NOW - 2000.0, ended_at=NOW - 1550.0, end_reason="PREEMPTED")
    current = Attempt(attempt=2, started_at=NOW - 500.0)
    row = dataclasses.replace(row, current_attempt=2)

    def slack_at(t: float) -> float:
        return strategies.slack_seconds(job_view(row, TASK, [earlier, current], t), t)

    assert look(row, current) == 0.0  # the row alone: 550 - (1000 - 500) < 90, so due now
    due = look(row, current, known=(NOW, slack_at(NOW)))
    assert slack_at(NOW) == pytest.approx(550.0 - (1000.0 - 950.0))
    assert due == pytest.approx(slack_at(NOW) - 90.0)

    def switch_at(t: float) -> bool:
        view = job_view(row, TASK, [earlier, current], t)
        return strategies.should_switch_to_ondemand(view, now=t)

    assert not switch_at(NOW + due - 1.0)


def test_a_job_without_a_deadline_strategy_has_no_market_rule() -> None:
    assert look(Job(deadline=None), Attempt()) is None
    assert look(Job(), Attempt(), task=EAGER) is None


def test_the_switch_is_not_due_before_the_look() -> None:
    """The bound holds: the rule the controller asks (``should_switch_to_ondemand``) is false
    until the moment ``next_look`` names, and true just after it (checkpointed work stays)."""
    row: Any = Job(work_done_seconds=400.0)
    due = look(row, Attempt())

    def switch_at(t: float) -> bool:
        view = job_view(row, TASK, [], t)
        return strategies.should_switch_to_ondemand(view, now=t)

    assert not switch_at(NOW + due - 1.0)
    assert switch_at(NOW + due + 1.0)
