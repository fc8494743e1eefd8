"""What the reaper must finish off (``Store.reapable_nodes``): the live nodes of ended
attempts, and of attempts not ended whose job ended — a return to spot written beside
on-demand by a daemon that stopped before the hand-over, in a job that then finished or was
cancelled. Nothing else: a job still running keeps the attempt it is being handed."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.store import Store
from spotd.types import AttemptStatus, EndReason, JobStatus

LIVE = [AttemptStatus.PROVISIONING, AttemptStatus.SETTING_UP, AttemptStatus.RUNNING]


@pytest.mark.parametrize(
    ("job_status", "beside", "want"),
    [
        # (the job's status once its on-demand attempt 1 ended, attempt 2's status: the spot
        # attempt launched beside it, whose attempt the reaper must end and reap)
        (JobStatus.SUCCEEDED, AttemptStatus.PROVISIONING, ["a1-n0", "a2-n0"]),
        (JobStatus.CANCELLED, AttemptStatus.RUNNING, ["a1-n0", "a2-n0"]),
        (JobStatus.FAILED, AttemptStatus.SETTING_UP, ["a1-n0", "a2-n0"]),
        # the job runs on: attempt 2 is the return being made, not an orphan
        (JobStatus.RUNNING, AttemptStatus.PROVISIONING, ["a1-n0"]),
        # attempt 2 ended already: reaped as any ended attempt is
        (JobStatus.SUCCEEDED, AttemptStatus.ENDED, ["a1-n0", "a2-n0"]),
    ],
)
def test_the_nodes_no_attempt_needs(
    store: Store,
    make_job: Any,
    make_attempt: Any,
    clock: Any,
    job_status: JobStatus,
    beside: AttemptStatus,
    want: list[str],
) -> None:
    job = make_job()
    other = make_job()  # a running job's live attempt is never reapable
    make_attempt(other.id, nodes=1)
    od = make_attempt(job.id, 1, nodes=1, market="on-demand")
    spot = make_attempt(job.id, 2, nodes=1)
    if beside == AttemptStatus.ENDED:
        _end(store, spot.id, EndReason.LAUNCH_FAILED, clock.tick())
    elif beside != AttemptStatus.PROVISIONING:
        store.transition_attempt(spot.id, from_=LIVE, to=beside, reason="up", now=clock.tick())
    _end(store, od.id, EndReason.SUCCEEDED, clock.tick())
    store.transition_job(
        job.id, from_=[JobStatus.PENDING], to=job_status, reason="x", now=clock.tick()
    )
    got = [(a.id, n.key) for a, n in store.reapable_nodes("local")]
    assert got == [(f"j{job.id}-{k[:2]}", f"j{job.id}-{k}") for k in want]
    assert store.reapable_nodes("aws") == []
    for _, n in store.reapable_nodes("local"):
        store.mark_instance_terminated(n.key, now=clock.tick())
    assert store.reapable_nodes("local") == []


def _end(store: Store, aid: str, why: EndReason, now: float) -> None:
    store.transition_attempt(
        aid, from_=LIVE, to=AttemptStatus.ENDED, reason=str(why), now=now, end_reason=why
    )
