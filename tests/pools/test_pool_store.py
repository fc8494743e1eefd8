"""The pool rows: one claim per queued job, exits recorded once, lost attempts queued again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spotd.store import Store
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


def test_an_exit_is_recorded_once_and_only_from_its_instance(store: Store) -> None:
    pid = _pool(store)
    w = _worker(store)
    [job] = store.add_pool_jobs(
        pool_id=pid, name="j", run="echo", envs={}, secret_names=[], num_jobs=1, now=T0
    )
    att = store.claim_pool_job(job.id, worker_job_id=w, instance_key="k1", now=T0 + 1)
    assert att is not None
    assert store.finish_pool_attempt(att.id, instance_key="k9", exit_code=0, now=T0 + 2) is None
    done = store.finish_pool_attempt(att.id, instance_key="k1", exit_code=0, now=T0 + 2)
    assert done is not None and done.status == PoolJobStatus.SUCCEEDED
    assert store.finish_pool_attempt(att.id, instance_key="k1", exit_code=1, now=T0 + 3) is None
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
    back = store.requeue_pool_attempt(a1.id, reason="worker preempted", now=T0 + 5)
    assert back is not None and back.status == PoolJobStatus.QUEUED
    assert store.requeue_pool_attempt(a1.id, reason="again", now=T0 + 6) is None
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
