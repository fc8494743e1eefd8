"""The pool rows: one claim per queued job, exits recorded once, lost attempts queued again
(up to the cap), failed runs restarted (up to max_restarts_on_errors), one job cancelled."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from spotd.control.pool_jobs import decide
from spotd.control.pool_queue import MAX_REQUEUES
from spotd.store import OverQuota, Store, migrations
from spotd.store.pools import PoolEnd, PoolExists, PoolJobStatus

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        yield s
    finally:
        s.close()


def _worker(store: Store) -> int:
    return store.create_job(
        name="pool-p-w0",
        task_id_prefix="spotd-t-j",
        spec_json='{"run": "x"}',
        spec_redacted_json='{"run": "x"}',
        resources="",
        submitted_at=T0,
    ).id


def _pool(store: Store, name: str = "p") -> int:
    return store.create_pool(
        name=name, project="default", workers=2, spec_json="{}", spec_redacted_json="{}", now=T0
    ).id


def test_a_name_is_taken_while_the_pool_is_up(store: Store) -> None:
    pid = _pool(store)
    with pytest.raises(PoolExists):
        _pool(store)
    store.pool_down(pid, now=T0 + 1)
    assert store.pool_by_name("p") is None
    assert _pool(store) != pid


def test_copies_get_their_ranks_and_one_claim_each(store: Store) -> None:
    pid = _pool(store)
    w1, w2 = _worker(store), _worker(store)
    jobs = store.add_pool_jobs(
        pool_id=pid, name="j", run="echo", envs={"A": "1"}, secret_names=[], num_jobs=3, now=T0
    )
    assert [(j.rank, j.num_jobs, j.status) for j in jobs] == [
        (r, 3, PoolJobStatus.QUEUED) for r in range(3)
    ]
    first = store.claim_pool_job(jobs[0].id, worker_job_id=w1, instance_key="k1", now=T0 + 1)
    again = store.claim_pool_job(jobs[0].id, worker_job_id=w2, instance_key="k2", now=T0 + 1)
    assert first is not None and first.attempt == 1
    assert again is None  # the job is no longer queued: never two workers on one job
    assert store.open_pool_attempt("k1") == first
    assert store.open_pool_attempt("k2") is None


def test_a_pool_holds_a_bounded_number_of_active_jobs(store: Store) -> None:
    pid = _pool(store)
    w = _worker(store)

    def add(n: int) -> list[int]:
        jobs = store.add_pool_jobs(
            pool_id=pid,
            name="j",
            run="x",
            envs={},
            secret_names=[],
            num_jobs=n,
            now=T0,
            max_active=3,
        )
        return [j.id for j in jobs]

    first = add(2)
    with pytest.raises(OverQuota, match="2 queued or running jobs; 2 more") as refused:
        add(2)
    assert refused.value.details == {"active": 2, "asked": 2, "limit": 3}
    assert len(store.pool_jobs(pid)) == 2, "nothing was written"
    store.claim_pool_job(first[0], worker_job_id=w, instance_key="k", now=T0 + 1)
    add(1)  # a running job still counts: 3 active
    store.cancel_pool_job(first[1], reason="x", now=T0 + 2)
    assert len(add(1)) == 1  # an ended job frees its place


def test_an_exit_is_recorded_once_and_only_from_its_instance(store: Store) -> None:
    pid = _pool(store)
    w = _worker(store)
    [job] = store.add_pool_jobs(
        pool_id=pid, name="j", run="echo", envs={}, secret_names=[], num_jobs=1, now=T0
    )
    att = store.claim_pool_job(job.id, worker_job_id=w, instance_key="k1", now=T0 + 1)
    assert att is not None
    assert (
        store.finish_pool_attempt(att.id, instance_key="k9", exit_code=0, now=T0 + 2, decide=decide)
        is None
    )
    done = store.finish_pool_attempt(
        att.id, instance_key="k1", exit_code=0, now=T0 + 2, decide=decide
    )
    assert done is not None and done.status == PoolJobStatus.SUCCEEDED
    assert (
        store.finish_pool_attempt(att.id, instance_key="k1", exit_code=1, now=T0 + 3, decide=decide)
        is None
    )
    assert store.get_pool_job(job.id).status == PoolJobStatus.SUCCEEDED  # type: ignore[union-attr]


def test_a_lost_attempt_sends_the_job_back_and_the_next_claim_is_attempt_two(
    store: Store,
) -> None:
    pid = _pool(store)
    w1, w2 = _worker(store), _worker(store)
    [job] = store.add_pool_jobs(
        pool_id=pid, name="j", run="echo", envs={}, secret_names=[], num_jobs=1, now=T0
    )
    a1 = store.claim_pool_job(job.id, worker_job_id=w1, instance_key="k1", now=T0 + 1)
    assert a1 is not None
    back = store.requeue_pool_attempt(a1.id, reason="worker preempted", now=T0 + 5, decide=decide)
    assert back is not None and back.status == PoolJobStatus.QUEUED
    assert store.requeue_pool_attempt(a1.id, reason="again", now=T0 + 6, decide=decide) is None
    a2 = store.claim_pool_job(job.id, worker_job_id=w2, instance_key="k2", now=T0 + 7)
    assert a2 is not None and a2.attempt == 2
    [first, second] = store.pool_attempts(pid)
    assert first.end_reason == PoolEnd.PREEMPTED and first.ended_at == T0 + 5
    assert second.started_at >= first.ended_at


def test_down_cancels_what_is_queued_and_running(store: Store) -> None:
    pid = _pool(store)
    w = _worker(store)
    store.add_pool_worker(job_id=w, pool_id=pid, slot=0)
    jobs = store.add_pool_jobs(
        pool_id=pid, name="j", run="echo", envs={}, secret_names=[], num_jobs=2, now=T0
    )
    store.claim_pool_job(jobs[0].id, worker_job_id=w, instance_key="k1", now=T0 + 1)
    workers = store.pool_down(pid, now=T0 + 2)
    assert [x.job_id for x in workers] == [w]
    assert {j.status for j in store.pool_jobs(pid)} == {PoolJobStatus.CANCELLED}
    assert [a.end_reason for a in store.pool_attempts(pid)] == [PoolEnd.CANCELLED]
    assert store.pool_down(pid, now=T0 + 3) == []


def test_a_failed_run_is_restarted_while_restarts_are_left(store: Store) -> None:
    pid = _pool(store)
    w = _worker(store)
    [job] = store.add_pool_jobs(
        pool_id=pid,
        name="j",
        run="x",
        envs={},
        secret_names=[],
        num_jobs=1,
        now=T0,
        max_restarts_on_errors=1,
    )
    ends = []
    for n in (1, 2):
        att = store.claim_pool_job(job.id, worker_job_id=w, instance_key="k1", now=T0 + n)
        assert att is not None and att.attempt == n
        row = store.finish_pool_attempt(
            att.id, instance_key="k1", exit_code=3, now=T0 + n + 0.5, decide=decide
        )
        assert row is not None
        ends.append((row.status, row.message, row.ended_at))
    assert ends[0][0] == PoolJobStatus.QUEUED and "restart 1 of 1" in ends[0][1]
    assert ends[0][2] is None
    assert ends[1][0] == PoolJobStatus.FAILED and "after 1 restarts" in ends[1][1]
    assert ends[1][2] == T0 + 2.5
    assert store.get_pool_job(job.id).exit_code == 3  # type: ignore[union-attr]


def test_a_job_lost_too_often_fails_saying_why(store: Store) -> None:
    pid = _pool(store)
    w = _worker(store)
    [job] = store.add_pool_jobs(
        pool_id=pid, name="j", run="x", envs={}, secret_names=[], num_jobs=1, now=T0
    )
    statuses = []
    for n in range(1, MAX_REQUEUES + 2):
        att = store.claim_pool_job(job.id, worker_job_id=w, instance_key=f"k{n}", now=T0 + n)
        assert att is not None
        row = store.requeue_pool_attempt(att.id, reason="gone", now=T0 + n + 0.5, decide=decide)
        assert row is not None
        statuses.append(row.status)
    assert statuses == [PoolJobStatus.QUEUED] * MAX_REQUEUES + [PoolJobStatus.FAILED]
    final = store.get_pool_job(job.id)
    assert final is not None and f"lost with its worker {MAX_REQUEUES + 1} times" in final.message


def test_cancel_ends_a_queued_or_running_job_once(store: Store) -> None:
    pid = _pool(store)
    w = _worker(store)
    queued, running = store.add_pool_jobs(
        pool_id=pid, name="j", run="x", envs={}, secret_names=[], num_jobs=2, now=T0
    )
    att = store.claim_pool_job(running.id, worker_job_id=w, instance_key="k1", now=T0 + 1)
    assert att is not None
    for job in (queued, running):
        row = store.cancel_pool_job(job.id, reason="cancel requested", now=T0 + 2)
        assert row is not None and row.status == PoolJobStatus.CANCELLED
        assert store.cancel_pool_job(job.id, reason="again", now=T0 + 3) is None
    ended = store.pool_attempt(att.id)
    assert ended is not None and ended.end_reason == PoolEnd.CANCELLED
    assert store.open_pool_attempt("k1") is None
    # the worker's late report of the cancelled run changes nothing
    assert (
        store.finish_pool_attempt(
            att.id, instance_key="k1", exit_code=143, now=T0 + 4, decide=decide
        )
        is None
    )


def test_version_9_gives_older_pool_jobs_no_restarts(tmp_path: Path) -> None:
    """Pool jobs queued before version 9 (no column) read as no restarts after it runs."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    s = Store.open(url)
    pid = _pool(s)
    [old] = s.add_pool_jobs(
        pool_id=pid, name="j", run="x", envs={}, secret_names=[], num_jobs=1, now=T0
    )
    s.close()
    con = sqlite3.connect(tmp_path / "old.db")
    con.execute("ALTER TABLE pool_job DROP COLUMN max_restarts_on_errors")
    con.commit()
    con.close()
    engine = create_engine(url)
    with engine.begin() as conn:
        migrations._v9_pool_job_restarts(conn)
    engine.dispose()
    s = Store.open(url)
    try:
        assert s.get_pool_job(old.id).max_restarts_on_errors == 0  # type: ignore[union-attr]
    finally:
        s.close()
