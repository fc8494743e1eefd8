"""A cancel, asked for from anywhere (the API, the dashboard, a pool going down): the job moves
to CANCELLING and its worker is woken; the worker terminates the instances and ends the job."""

from __future__ import annotations

from collections.abc import Callable

from spotd.store import AsyncStore, JobRow, StaleTransition
from spotd.types import JobStatus

__all__ = ["CANCELLABLE", "request_cancel"]

CANCELLABLE = frozenset(s for s in JobStatus if not s.is_terminal and s != JobStatus.CANCELLING)


async def request_cancel(
    store: AsyncStore, wake: Callable[[int], None], job_id: int, *, reason: str, now: float
) -> JobRow:
    """Move the job to CANCELLING (``reason`` in its event) and wake its worker. A job already
    cancelling or ended is left as it is (someone else moved it first). Returns the job as it
    is now; :class:`~spotd.store.NotFound` when there is none."""
    try:
        job = await store.transition_job(
            job_id, from_=CANCELLABLE, to=JobStatus.CANCELLING, reason=reason, now=now
        )
    except StaleTransition:
        job = await store.require_job(job_id)
    wake(job_id)
    return job
