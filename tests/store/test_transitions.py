"""Status changes are compare-and-set, and each writes its event in the same transaction."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.store import NotFound, StaleTransition, Store, cas
from spotd.types import AttemptStatus, EndReason, JobStatus, Market


def test_new_job_is_pending_with_a_stable_task_id_and_an_event(store: Store, make_job: Any) -> None:
    job = make_job()
    assert job.status is JobStatus.PENDING
    assert job.task_id == f"spotd-abcd-j{job.id}"
    assert job.current_attempt == 0 and job.recoveries == 0 and job.project == "default"
    assert '"hf_secret"' in job.spec_json and "hf_secret" not in job.spec_redacted_json
    [ev] = store.events(job_id=job.id)
    assert (ev.kind, ev.data["to"]) == ("job.status", "PENDING")
    assert store.get_job(job.id) == job


def test_transition_sets_status_fields_message_and_writes_the_event(
    store: Store, make_job: Any, clock: Any
) -> None:
    job = make_job()
    now = clock.tick(5)
    moved = store.transition_job(
        job.id,
        from_=[JobStatus.PENDING, JobStatus.RECOVERING],
        to=JobStatus.STARTING,
        reason="attempt 1: local/local-east/local-east-a",
        now=now,
        current_attempt=1,
        next_try_at=None,
    )
    assert moved.status is JobStatus.STARTING
    assert moved.current_attempt == 1
    assert moved.message == "attempt 1: local/local-east/local-east-a"  # message defaults to reason
    assert store.get_job(job.id) == moved
    ev = store.events(job_id=job.id)[-1]
    assert ev.kind == "job.status" and ev.at == now
    assert ev.message == "PENDING → STARTING: attempt 1: local/local-east/local-east-a"
    assert ev.data["from"] == "PENDING" and ev.data["to"] == "STARTING"
    assert ev.data["fields"]["current_attempt"] == 1


def test_transition_from_a_wrong_state_fails_loudly_and_writes_nothing(
    store: Store, make_job: Any, clock: Any
) -> None:
    job = make_job()
    store.transition_job(
        job.id,
        from_=[JobStatus.PENDING],
        to=JobStatus.CANCELLING,
        reason="cancel requested",
        now=clock.tick(),
    )
    before = store.events(job_id=job.id)
    with pytest.raises(StaleTransition) as err:
        store.transition_job(
            job.id,
            from_=[JobStatus.PENDING, JobStatus.RECOVERING],
            to=JobStatus.STARTING,
            reason="attempt 1",
            now=clock.tick(),
            current_attempt=1,
        )
    assert "it is CANCELLING" in str(err.value)
    assert err.value.current == "CANCELLING" and err.value.to == "STARTING"
    after = store.get_job(job.id)
    assert after is not None
    assert after.status is JobStatus.CANCELLING and after.current_attempt == 0
    assert store.events(job_id=job.id) == before  # no event for a transition that did not happen


def test_event_and_update_share_one_transaction(
    store: Store, make_job: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the event cannot be written, the status change is rolled back with it."""
    job = make_job()

    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("disk full while writing the event")

    monkeypatch.setattr(cas, "write_event", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        store.transition_job(
            job.id,
            from_=[JobStatus.PENDING],
            to=JobStatus.STARTING,
            reason="attempt 1",
            now=clock.tick(),
            current_attempt=1,
        )
    monkeypatch.undo()
    again = store.get_job(job.id)
    assert again is not None
    assert again.status is JobStatus.PENDING and again.current_attempt == 0


def test_unknown_job_and_forbidden_fields(store: Store, make_job: Any, clock: Any) -> None:
    with pytest.raises(NotFound):
        store.transition_job(
            999, from_=[JobStatus.PENDING], to=JobStatus.STARTING, reason="x", now=clock()
        )
    job = make_job()
    with pytest.raises(TypeError, match="transition_job"):
        store.update_job_fields(job.id, now=clock(), status=JobStatus.RUNNING)
    with pytest.raises(TypeError, match="no_such_column"):
        store.transition_job(
            job.id,
            from_=[JobStatus.PENDING],
            to=JobStatus.STARTING,
            reason="x",
            now=clock(),
            no_such_column=1,
        )
    assert store.get_job(job.id).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_update_job_fields_logs_only_when_asked(store: Store, make_job: Any, clock: Any) -> None:
    job = make_job()
    n = len(store.events(job_id=job.id))
    row = store.update_job_fields(job.id, now=clock(), failed_launches=2, first_failure_at=clock())
    assert row.failed_launches == 2 and row.first_failure_at == clock()
    assert len(store.events(job_id=job.id)) == n
    row = store.update_job_fields(
        job.id,
        now=clock.tick(),
        next_try_at=clock() + 30,
        message="stockout everywhere",
        event="waiting 30.0s: stockout",
    )
    assert row.next_try_at == clock() + 30 and row.message == "stockout everywhere"
    ev = store.events(job_id=job.id)[-1]
    assert (ev.kind, ev.message) == ("job.update", "waiting 30.0s: stockout")
    with pytest.raises(NotFound):
        store.update_job_fields(12345, now=clock(), recoveries=1)


def test_a_whole_job_life_of_counters(store: Store, make_job: Any, clock: Any) -> None:
    job = make_job()
    S = JobStatus
    steps: list[tuple[list[JobStatus], JobStatus, dict[str, Any]]] = [
        ([S.PENDING], S.STARTING, {"current_attempt": 1}),
        ([S.STARTING], S.RUNNING, {"started_at": clock() + 2}),
        ([S.STARTING, S.RUNNING], S.RECOVERING, {"preemptions": 1, "recoveries": 1}),
        ([S.RECOVERING], S.STARTING, {"current_attempt": 2}),
        ([S.STARTING], S.RUNNING, {}),
        ([S.STARTING, S.RUNNING], S.SUCCEEDED, {"ended_at": clock() + 9}),
    ]
    for from_, to, fields in steps:
        job = store.transition_job(
            job.id, from_=from_, to=to, reason=f"to {to}", now=clock.tick(), **fields
        )
    assert job.status is JobStatus.SUCCEEDED and job.is_terminal
    assert (job.preemptions, job.recoveries, job.current_attempt) == (1, 1, 2)
    assert job.started_at == 1_700_000_002.0 and job.ended_at == 1_700_000_009.0
    kinds = [e.message.split(":")[0] for e in store.events(job_id=job.id)]
    assert kinds == [
        "→ PENDING",
        "PENDING → STARTING",
        "STARTING → RUNNING",
        "RUNNING → RECOVERING",
        "RECOVERING → STARTING",
        "STARTING → RUNNING",
        "RUNNING → SUCCEEDED",
    ]


def test_attempt_cas_sets_start_and_end(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    job = make_job()
    a = make_attempt(job.id)
    assert a.status is AttemptStatus.PROVISIONING and a.market is Market.SPOT
    assert a.id == f"j{job.id}-a1" and a.started_at is None
    a = store.transition_attempt(
        a.id,
        from_=[AttemptStatus.PROVISIONING],
        to=AttemptStatus.SETTING_UP,
        reason="every agent reported",
        now=clock.tick(),
    )
    t_run = clock.tick()
    a = store.transition_attempt(
        a.id,
        from_=[AttemptStatus.PROVISIONING, AttemptStatus.SETTING_UP],
        to=AttemptStatus.RUNNING,
        reason="run started",
        now=t_run,
    )
    assert a.status is AttemptStatus.RUNNING and a.started_at == t_run
    t_end = clock.tick(100)
    a = store.transition_attempt(
        a.id,
        from_=[AttemptStatus.RUNNING],
        to=AttemptStatus.ENDED,
        reason="PREEMPTED: notice",
        now=t_end,
        end_reason=EndReason.PREEMPTED,
        end_detail="spot notice, deadline in 120s",
    )
    assert a.status is AttemptStatus.ENDED and a.ended_at == t_end
    assert a.end_reason is EndReason.PREEMPTED and a.end_detail == "spot notice, deadline in 120s"
    assert store.get_attempt(a.id) == a
    ev = store.events(job_id=job.id)[-1]
    assert ev.attempt_id == a.id and ev.kind == "attempt.status"
    assert ev.message == "RUNNING → ENDED: PREEMPTED: notice"
    assert ev.data["end_reason"] == "PREEMPTED"


def test_attempt_ends_once_the_first_reason_stands(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    job = make_job()
    a = make_attempt(job.id)
    live = [AttemptStatus.PROVISIONING, AttemptStatus.SETTING_UP, AttemptStatus.RUNNING]
    store.transition_attempt(
        a.id,
        from_=live,
        to=AttemptStatus.ENDED,
        reason="cancel",
        now=clock.tick(),
        end_reason=EndReason.CANCELLED,
    )
    n = len(store.events(job_id=job.id))
    with pytest.raises(StaleTransition, match="it is ENDED"):
        store.transition_attempt(
            a.id,
            from_=live,
            to=AttemptStatus.ENDED,
            reason="preempted",
            now=clock.tick(),
            end_reason=EndReason.PREEMPTED,
        )
    again = store.get_attempt(a.id)
    assert again is not None and again.end_reason is EndReason.CANCELLED
    assert len(store.events(job_id=job.id)) == n


def test_an_attempt_never_ends_without_a_reason(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    a = make_attempt(make_job().id)
    with pytest.raises(ValueError, match="end_reason"):
        store.transition_attempt(
            a.id,
            from_=[AttemptStatus.PROVISIONING],
            to=AttemptStatus.ENDED,
            reason="?",
            now=clock(),
        )
    with pytest.raises(ValueError, match="end_reason"):
        store.transition_attempt(
            a.id,
            from_=[AttemptStatus.PROVISIONING],
            to=AttemptStatus.RUNNING,
            reason="?",
            now=clock(),
            end_reason=EndReason.SUCCEEDED,
        )
    with pytest.raises(NotFound):
        store.transition_attempt(
            "j9-a9",
            from_=[AttemptStatus.PROVISIONING],
            to=AttemptStatus.RUNNING,
            reason="?",
            now=clock(),
        )
