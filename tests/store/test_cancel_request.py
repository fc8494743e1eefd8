"""``request_cancel``: the one cancel the API, the dashboard and a pool going down share.

It lives in the control layer (``spotd.control.cancel``) but is all store: a real SQLite store
here, the worker's wake-up recorded."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.control.cancel import request_cancel
from spotd.store import AsyncStore, NotFound, Store
from spotd.types import JobStatus


@pytest.mark.parametrize(
    ("moved_to", "expect", "event"),
    [
        (None, JobStatus.CANCELLING, "PENDING → CANCELLING: by test"),
        (JobStatus.STARTING, JobStatus.CANCELLING, "STARTING → CANCELLING: by test"),
        (JobStatus.CANCELLING, JobStatus.CANCELLING, None),  # asked twice: left as it is
        (JobStatus.CANCELLED, JobStatus.CANCELLED, None),  # ended meanwhile: left as it is
    ],
)
async def test_a_cancel_moves_what_can_move_and_always_wakes_the_worker(
    store: Store,
    make_job: Any,
    clock: Any,
    moved_to: JobStatus | None,
    expect: JobStatus,
    event: str | None,
) -> None:
    job = make_job()
    if moved_to is not None:
        path = {
            JobStatus.STARTING: [JobStatus.STARTING],
            JobStatus.CANCELLING: [JobStatus.CANCELLING],
            JobStatus.CANCELLED: [JobStatus.CANCELLING, JobStatus.CANCELLED],
        }[moved_to]
        at = JobStatus.PENDING
        for to in path:
            store.transition_job(job.id, from_=[at], to=to, reason="setup", now=clock())
            at = to
    woken: list[int] = []
    now = clock.tick()
    seen = await request_cancel(AsyncStore(store), woken.append, job.id, reason="by test", now=now)
    assert seen.status == expect and store.require_job(job.id).status == expect
    assert woken == [job.id]
    said = [e.message for e in store.events(job_id=job.id) if e.at == now]
    assert said == ([] if event is None else [event])


async def test_a_cancel_of_no_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await request_cancel(AsyncStore(store), lambda _: None, 404, reason="x", now=1.0)
