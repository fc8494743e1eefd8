"""A placement and a start, each one transaction (``start_attempt``, ``attempt_running``).

The job controller once wrote a placement as two transactions (the attempt's intent, then the
job to STARTING) and an attempt's start as four (SETTING_UP, RUNNING, the job RUNNING, the
zone's LAUNCHED event). Each is now one: here, that each writes everything a user sees (the
statuses, the events, the zone history) or, when a cancel came first, nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from spotd.store import StaleTransition, Store
from spotd.types import AttemptStatus, EndReason, JobStatus
from tests.factories import intent


def place(store: Store, job_id: int, now: float, *, nodes: int = 2) -> Any:
    return store.start_attempt(
        intent(
            job_id,
            nodes=nodes,
            now=now,
            provider="fleet",
            instance_type="cpu-1",
            price_per_hour=0.1,
        ),
        from_=[JobStatus.PENDING, JobStatus.RECOVERING],
        reason="attempt 1: fleet/r/z cpu-1 spot",
    )


def test_a_placement_writes_the_intent_and_moves_the_job(
    store: Store, make_job: Any, clock: Any
) -> None:
    job = make_job()
    moved, attempt, rows = place(store, job.id, clock.tick())
    assert moved.status == JobStatus.STARTING and moved.current_attempt == 1
    assert moved.message == "attempt 1: fleet/r/z cpu-1 spot"
    assert attempt.status == AttemptStatus.PROVISIONING and attempt.id == f"j{job.id}-a1"
    assert [(r.key, r.instance_id) for r in rows] == [
        (f"j{job.id}-a1-n0", None),
        (f"j{job.id}-a1-n1", None),
    ]
    assert store.instances(attempt_id=attempt.id) == rows
    kinds = [e.kind for e in store.events(job_id=job.id)]
    assert kinds == ["job.status", "job.status", "attempt.status"]


def test_a_placement_after_a_cancel_writes_nothing(store: Store, make_job: Any, clock: Any) -> None:
    job = make_job()
    store.transition_job(
        job.id, from_=[JobStatus.PENDING], to=JobStatus.CANCELLING, reason="cancel", now=clock()
    )
    with pytest.raises(StaleTransition):
        place(store, job.id, clock.tick())
    assert store.attempts(job.id) == [] and store.instances(job_id=job.id) == []
    assert store.require_job(job.id).status == JobStatus.CANCELLING


def test_running_moves_attempt_job_and_zone_history_at_once(
    store: Store, make_job: Any, clock: Any
) -> None:
    job = make_job()
    place(store, job.id, clock())
    at = clock.tick(3.0)
    running = store.attempt_running(
        job.id, f"j{job.id}-a1", now=at, reason="running in r/z (spot)", started_at=at
    )
    assert running.status == JobStatus.RUNNING and running.started_at == at
    attempt = store.require_attempt(f"j{job.id}-a1")
    assert attempt.status == AttemptStatus.RUNNING and attempt.started_at == at
    moves = [
        e.message.split(":")[0] for e in store.events(job_id=job.id) if e.kind.endswith(".status")
    ]
    assert moves[-3:] == [
        "PROVISIONING → SETTING_UP",
        "SETTING_UP → RUNNING",
        "STARTING → RUNNING",
    ]
    launched = [z for z in store.zone_events(since=0.0) if z.kind == "LAUNCHED"]
    assert [(z.zone, z.at, z.detail) for z in launched] == [("z", at, "spot")]


def test_running_after_a_cancel_writes_nothing(store: Store, make_job: Any, clock: Any) -> None:
    job = make_job()
    place(store, job.id, clock())
    store.transition_job(
        job.id, from_=[JobStatus.STARTING], to=JobStatus.CANCELLING, reason="cancel", now=clock()
    )
    with pytest.raises(StaleTransition):
        store.attempt_running(job.id, f"j{job.id}-a1", now=clock.tick(), reason="running")
    assert store.require_attempt(f"j{job.id}-a1").status == AttemptStatus.PROVISIONING
    assert store.zone_events(since=0.0) == []


def test_the_workers_one_read_has_the_attempt_only_while_it_is_watched(
    store: Store, make_job: Any, clock: Any
) -> None:
    """``job_state``: the job, and its current attempt with every node while STARTING or
    RUNNING (what the job's worker looks at); nothing more while it waits or after it ends."""
    assert store.job_state(999) == (None, None)
    job = make_job()
    assert store.job_state(job.id) == (store.require_job(job.id), None)  # PENDING: no attempt
    _, attempt, rows = place(store, job.id, clock.tick())
    seen, watched = store.job_state(job.id)
    assert seen is not None and seen.status == JobStatus.STARTING
    assert watched == (attempt, rows)
    store.attempt_running(job.id, attempt.id, now=clock.tick(), reason="running")
    seen, watched = store.job_state(job.id)
    assert seen is not None and seen.status == JobStatus.RUNNING
    assert watched is not None and watched[0].status == AttemptStatus.RUNNING
    store.transition_job(
        job.id, from_=[JobStatus.RUNNING], to=JobStatus.CANCELLING, reason="x", now=clock()
    )
    assert store.job_state(job.id)[1] is None  # the cancel path reads what it needs itself


def _running_on_demand(store: Store, make_job: Any, clock: Any) -> Any:
    job = make_job()
    place(store, job.id, clock.tick())
    store.attempt_running(job.id, f"j{job.id}-a1", now=clock.tick(), reason="running")
    store.create_attempt(intent(job.id, 2, now=clock.tick()))  # the spot one, beside it
    return job


def _hand_over(store: Store, job: Any, clock: Any) -> Any:
    return store.hand_over(
        job.id,
        old_attempt_id=f"j{job.id}-a1",
        new_attempt=2,
        reason="back to spot",
        now=clock.tick(),
        recoveries=1,
    )


def test_a_hand_over_moves_the_job_and_ends_the_old_attempt_at_once(
    store: Store, make_job: Any, clock: Any
) -> None:
    """Make before break (``spotd.control.deadline``): once the spot attempt launched, the job
    moves to it and the on-demand attempt ends, in one transaction."""
    job = _running_on_demand(store, make_job, clock)
    moved = _hand_over(store, job, clock)
    assert (moved.status, moved.current_attempt, moved.recoveries) == (JobStatus.STARTING, 2, 1)
    old, new = store.attempts(job.id)
    assert old.status == AttemptStatus.ENDED and old.end_reason == "MIGRATED"
    assert new.status == AttemptStatus.PROVISIONING


def test_a_hand_over_from_an_attempt_whose_run_exited_writes_nothing(
    store: Store, make_job: Any, clock: Any
) -> None:
    """The on-demand run exited (its agent reported it) while spot was being launched beside
    it: its result decides the job (a success is kept, not rerun from a checkpoint on spot),
    so the move is refused and nothing is written; the caller ends the spot attempt."""
    job = _running_on_demand(store, make_job, clock)
    head, _ = store.instances(attempt_id=f"j{job.id}-a1")  # one node of two said so
    store.record_heartbeat(
        head.key, now=clock.tick(), phase="exited", exit_code=0, notice_deadline=None
    )
    with pytest.raises(StaleTransition):
        _hand_over(store, job, clock)
    after = store.require_job(job.id)
    assert (after.status, after.current_attempt) == (JobStatus.RUNNING, 1)
    assert store.attempts(job.id)[0].status == AttemptStatus.RUNNING


def test_a_hand_over_after_a_cancel_writes_nothing(store: Store, make_job: Any, clock: Any) -> None:
    job = _running_on_demand(store, make_job, clock)
    store.transition_job(
        job.id, from_=[JobStatus.RUNNING], to=JobStatus.CANCELLING, reason="cancel", now=clock()
    )
    with pytest.raises(StaleTransition):
        _hand_over(store, job, clock)
    after = store.require_job(job.id)
    assert (after.status, after.current_attempt) == (JobStatus.CANCELLING, 1)
    assert store.attempts(job.id)[0].status == AttemptStatus.RUNNING


def test_a_hand_over_from_an_attempt_already_ended_writes_nothing(
    store: Store, make_job: Any, clock: Any
) -> None:
    """The job's half of the transaction is rolled back when the attempt's half fails."""
    job = _running_on_demand(store, make_job, clock)
    store.transition_attempt(
        f"j{job.id}-a1",
        from_=[AttemptStatus.RUNNING],
        to=AttemptStatus.ENDED,
        reason="lost",
        now=clock.tick(),
        end_reason=EndReason.LOST,
    )
    with pytest.raises(StaleTransition):
        _hand_over(store, job, clock)
    after = store.require_job(job.id)
    assert (after.status, after.current_attempt) == (JobStatus.RUNNING, 1)
