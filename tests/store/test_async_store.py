"""AsyncStore: the same API from the event loop, on one dedicated store thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from spotd.store import AsyncStore, StaleTransition, Store
from spotd.types import AttemptStatus, EndReason, JobStatus
from tests.factories import intent


async def test_async_store_runs_a_job_from_the_loop(db_url: str, clock: Any) -> None:
    store = await AsyncStore.open(db_url)
    try:
        job = await store.create_job(
            name="a",
            task_id_prefix="spotd-h-j",
            spec_json="{}",
            spec_redacted_json="{}",
            resources="cpu",
            submitted_at=clock(),
        )
        a = await store.create_attempt(
            intent(job.id, now=clock(), instances=[{"key": "k", "node_rank": 0, "token": "tok"}])
        )
        await store.transition_job(
            job.id,
            from_=[JobStatus.PENDING],
            to=JobStatus.STARTING,
            reason="attempt 1",
            now=clock.tick(),
            current_attempt=1,
        )
        await store.set_instance_id("k", "pid-1")
        await store.record_heartbeat(
            "k", now=clock.tick(), phase="run", exit_code=None, notice_deadline=None
        )
        await store.set_log_offset("k", 10)
        assert (await store.instance_by_token("tok")).log_offset == 10  # type: ignore[union-attr]
        await store.transition_attempt(
            a.id,
            from_=[AttemptStatus.PROVISIONING],
            to=AttemptStatus.ENDED,
            reason="x",
            now=clock.tick(),
            end_reason=EndReason.SUCCEEDED,
        )
        await store.mark_instance_terminated("k", now=clock())
        assert await store.instances(live_only=True) == []
        await store.update_job_fields(job.id, now=clock(), work_done_seconds=12.5)
        await store.add_event(kind="note", message="hello", now=clock(), job_id=job.id)
        await store.add_zone_event(
            provider="local", region="r", zone="z", kind="PREEMPTED", at=clock()
        )
        assert len(await store.zone_events(since=0)) == 1
        assert (await store.get_attempt(a.id)).end_reason is EndReason.SUCCEEDED  # type: ignore[union-attr]
        assert [x.attempt for x in await store.attempts(job.id)] == [1]
        assert (await store.get_instance("k")).instance_id == "pid-1"  # type: ignore[union-attr]
        assert [j.id for j in await store.active_jobs()] == [job.id]
        assert [j.id for j in await store.list_jobs(statuses=[JobStatus.STARTING])] == [job.id]
        got = await store.get_job(job.id)
        assert got is not None and got.work_done_seconds == 12.5
        assert (await store.events(job_id=job.id))[-1].message == "hello"
        with pytest.raises(StaleTransition):
            await store.transition_job(
                job.id,
                from_=[JobStatus.PENDING],
                to=JobStatus.STARTING,
                reason="again",
                now=clock(),
            )
    finally:
        await store.close()


async def test_calls_run_one_at_a_time_on_one_thread_off_the_loop(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: set[str] = set()
    active = 0
    overlap = False
    real = Store.get_job

    def spy(self: Store, job_id: int) -> Any:
        nonlocal active, overlap
        seen.add(threading.current_thread().name)
        active += 1
        overlap |= active > 1
        try:
            return real(self, job_id)
        finally:
            active -= 1

    monkeypatch.setattr(Store, "get_job", spy)
    astore = AsyncStore(store)
    try:
        job = await astore.create_job(
            name="a",
            task_id_prefix="p-j",
            spec_json="{}",
            spec_redacted_json="{}",
            resources="cpu",
            submitted_at=clock(),
        )
        rows = await asyncio.gather(*(astore.get_job(job.id) for _ in range(20)))
    finally:
        await astore.close()
    assert all(r == job for r in rows)
    assert len(seen) == 1 and next(iter(seen)).startswith("spotd-store")
    assert threading.main_thread().name not in seen
    assert not overlap


async def test_racing_transitions_from_the_loop_one_wins(db_url: str, clock: Any) -> None:
    store = await AsyncStore.open(db_url)
    try:
        job = await store.create_job(
            name="a",
            task_id_prefix="p-j",
            spec_json="{}",
            spec_redacted_json="{}",
            resources="cpu",
            submitted_at=clock(),
        )
        # the controller places the job while the API cancels it
        results = await asyncio.gather(
            store.transition_job(
                job.id,
                from_=[JobStatus.PENDING],
                to=JobStatus.STARTING,
                reason="attempt 1",
                now=clock(),
            ),
            store.transition_job(
                job.id,
                from_=[JobStatus.PENDING, JobStatus.STARTING],
                to=JobStatus.CANCELLING,
                reason="cancel",
                now=clock(),
            ),
            store.transition_job(
                job.id,
                from_=[JobStatus.PENDING],
                to=JobStatus.STARTING,
                reason="attempt 1 (dup)",
                now=clock(),
            ),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == ["JobRow", "JobRow", "StaleTransition"]
        final = await store.get_job(job.id)
        assert final is not None and final.status is JobStatus.CANCELLING
    finally:
        await store.close()
