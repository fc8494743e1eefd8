"""Which queued pool job goes to which free worker: a pure decision, table-tested.

A pool (``spotctl jobs pool apply``) keeps N workers up; ``spotctl jobs launch --pool`` queues
jobs on it without provisioning anything. Workers pull: an idle worker's agent asks the daemon
for its next job (``POST /agent/v1/pool/next``), and the daemon pairs the queue with the
workers free at that moment (``assign``) and hands the asking worker its own pairing, if any.

The rules, in order:

- a job with a live attempt is never handed out again: it is back in the queue only once
  the daemon has seen its worker's instance gone (so no job runs twice at once);
- a worker with a preemption notice is not free: its instance is about to go;
- jobs go out oldest first, ties by id; a job sent back by a preemption keeps its place
  (it was submitted before the jobs queued behind it), so it is the next one out;
- workers are served longest idle first, ties by id, so no worker starves.

Example: queue j1 (submitted at 1), j2 (2), j3 (3); free workers w7 (idle since 5), w3 (idle
since 9), w4 (idle since 4, with a notice) → (j1, w7), (j2, w3); j3 waits for the next free
worker, and w4 gets nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Assignment", "FreeWorker", "QueuedJob", "assign", "pick_for"]


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A pool job waiting for a worker."""

    id: int
    submitted_at: float
    live: bool = False  # an attempt of it is still open somewhere


@dataclass(frozen=True, slots=True)
class FreeWorker:
    """A worker with nothing to run (its id is its managed job's)."""

    id: int
    idle_since: float
    noticed: bool = False  # its instance has a preemption notice


@dataclass(frozen=True, slots=True)
class Assignment:
    job: int
    worker: int


def assign(queue: Sequence[QueuedJob], free: Sequence[FreeWorker]) -> list[Assignment]:
    """Pair the oldest waiting jobs with the longest idle workers (see the module docstring)."""
    jobs = sorted((j for j in queue if not j.live), key=lambda j: (j.submitted_at, j.id))
    workers = sorted((w for w in free if not w.noticed), key=lambda w: (w.idle_since, w.id))
    return [Assignment(job=j.id, worker=w.id) for j, w in zip(jobs, workers, strict=False)]


def pick_for(worker: int, queue: Sequence[QueuedJob], free: Sequence[FreeWorker]) -> int | None:
    """The job ``assign`` gives ``worker`` (one of ``free``), or None: nothing for it now."""
    for a in assign(queue, free):
        if a.worker == worker:
            return a.job
    return None
