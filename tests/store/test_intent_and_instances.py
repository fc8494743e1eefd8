"""The launch intent (attempt + instance rows) is atomic; instance bookkeeping is idempotent."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

import spotd.store.job_inserts as job_inserts
from spotd.store import NotFound, Store, StoreError
from spotd.types import EndReason


def test_create_attempt_writes_the_intent_before_any_provider_id(
    store: Store, make_job: Any, make_attempt: Any
) -> None:
    job = make_job()
    a = make_attempt(job.id, nodes=3)
    rows = store.instances(attempt_id=a.id)
    assert [r.key for r in rows] == [f"j{job.id}-a1-n{i}" for i in range(3)]
    assert [r.node_rank for r in rows] == [0, 1, 2]
    assert all(r.instance_id is None and not r.terminated and r.state == "PENDING" for r in rows)
    assert all(
        (r.provider, r.region, r.zone) == ("local", "local-east", "local-east-a") for r in rows
    )
    assert all(r.job_id == job.id and r.created_at == a.created_at for r in rows)
    ev = store.events(job_id=job.id)[-1]
    assert ev.kind == "attempt.status" and ev.attempt_id == a.id
    assert "PROVISIONING" in ev.message and "local-east-a" in ev.message


def test_create_attempt_is_all_or_nothing(store: Store, make_job: Any, make_attempt: Any) -> None:
    job = make_job()
    n_events = len(store.events())
    dup = [
        {"key": "same", "node_rank": 0, "token": "t0"},
        {"key": "same", "node_rank": 1, "token": "t1"},
    ]
    with pytest.raises(IntegrityError):
        make_attempt(job.id, instances=dup)
    assert store.get_attempt(f"j{job.id}-a1") is None
    assert store.instances() == []
    assert len(store.events()) == n_events
    # and the same attempt can then be written cleanly
    a = make_attempt(job.id)
    assert len(store.instances(attempt_id=a.id)) == 2


def test_create_attempt_rolls_back_when_its_event_fails(
    store: Store, make_job: Any, make_attempt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job()

    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(job_inserts, "write_event", broken)  # where create_attempt finds it
    with pytest.raises(RuntimeError):
        make_attempt(job.id)
    monkeypatch.undo()
    assert store.attempts(job.id) == [] and store.instances() == []


def test_attempt_of_unknown_job_is_refused(store: Store, make_attempt: Any) -> None:
    with pytest.raises(IntegrityError):
        make_attempt(4242)  # foreign keys are on (SQLite too)
    assert store.instances() == []


def test_attempts_in_order(store: Store, make_job: Any, make_attempt: Any) -> None:
    job, other = make_job(), make_job("other")
    for n in (1, 2, 3):
        make_attempt(job.id, n, nodes=1, market="on-demand" if n == 3 else "spot")
    make_attempt(other.id, 1, nodes=1)
    got = store.attempts(job.id)
    assert [a.attempt for a in got] == [1, 2, 3]
    assert [str(a.market) for a in got] == ["spot", "spot", "on-demand"]
    assert store.attempts(999) == []
    assert store.get_attempt("j999-a1") is None


def test_set_instance_id_is_idempotent_and_a_different_id_is_loud(
    store: Store, make_job: Any, make_attempt: Any
) -> None:
    a = make_attempt(make_job().id)
    key = store.instances(attempt_id=a.id)[0].key
    row = store.set_instance_id(key, "i-0abc", state="RUNNING")
    assert row.instance_id == "i-0abc" and row.state == "RUNNING"
    assert store.set_instance_id(key, "i-0abc").instance_id == "i-0abc"
    with pytest.raises(StoreError, match="i-0abc"):
        store.set_instance_id(key, "i-other")
    with pytest.raises(NotFound):
        store.set_instance_id("j1-a9-n9", "i-x")


def test_heartbeat_updates_and_never_unreports(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    a = make_attempt(make_job().id)
    key = store.instances(attempt_id=a.id)[1].key
    r = store.record_heartbeat(
        key, now=clock.tick(), phase="setup", exit_code=None, notice_deadline=None
    )
    assert (r.last_heartbeat_at, r.phase, r.exit_code) == (clock(), "setup", None)
    deadline = clock() + 120
    r = store.record_heartbeat(
        key, now=clock.tick(), phase="run", exit_code=None, notice_deadline=deadline
    )
    assert r.phase == "run" and r.notice_deadline == deadline
    r = store.record_heartbeat(
        key, now=clock.tick(), phase="exited", exit_code=3, notice_deadline=None
    )
    assert (r.phase, r.exit_code, r.notice_deadline) == ("exited", 3, deadline)
    r = store.record_heartbeat(
        key, now=clock.tick(), phase=None, exit_code=None, notice_deadline=None
    )
    assert (r.phase, r.exit_code, r.last_heartbeat_at) == ("exited", 3, clock())
    assert store.get_instance(key) == r
    with pytest.raises(NotFound):
        store.record_heartbeat(
            "nope", now=clock(), phase="run", exit_code=None, notice_deadline=None
        )


def test_log_offset(store: Store, make_job: Any, make_attempt: Any) -> None:
    a = make_attempt(make_job().id)
    key = store.instances(attempt_id=a.id)[0].key
    assert store.set_log_offset(key, 4096).log_offset == 4096
    assert store.get_instance(key).log_offset == 4096  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.set_log_offset("nope", 1)


def test_token_lookup(store: Store, make_job: Any, make_attempt: Any) -> None:
    a = make_attempt(make_job().id)
    rows = store.instances(attempt_id=a.id)
    assert store.instance_by_token(rows[1].token) == rows[1]
    assert store.instance_by_token("not-a-token") is None
    assert store.instance_by_token("") is None


def test_terminated_instances_leave_the_live_set(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    j1, j2 = make_job(), make_job()
    a1, a2 = make_attempt(j1.id), make_attempt(j2.id, nodes=1)
    assert len(store.instances(live_only=True)) == 3
    k = store.instances(attempt_id=a1.id)[0].key
    t = clock.tick()
    r = store.mark_instance_terminated(k, now=t)
    assert r.terminated and r.terminated_at == t and r.state == "TERMINATED"
    assert store.mark_instance_terminated(k, now=clock.tick()).terminated_at == t  # idempotent
    live = store.instances(live_only=True)
    assert k not in {r.key for r in live} and len(live) == 2
    assert len(store.instances()) == 3
    assert [r.key for r in store.instances(job_id=j2.id)] == [f"j{j2.id}-a1-n0"]
    assert {r.attempt_id for r in store.instances(attempt_id=a2.id, live_only=True)} == {a2.id}
    with pytest.raises(NotFound):
        store.mark_instance_terminated("nope", now=t)


def test_rows_are_frozen_snapshots(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    job = make_job()
    a = make_attempt(job.id)
    with pytest.raises(AttributeError):
        job.status = "RUNNING"
    with pytest.raises(AttributeError):
        a.end_reason = EndReason.LOST
    store.close()
    # a snapshot is plain data: readable after its store is gone
    assert job.name == "train" and a.num_nodes == 2
    with pytest.raises(StoreError, match="closed"):
        store.get_job(job.id)
