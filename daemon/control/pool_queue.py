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

What an attempt's end does to its job is ``after_attempt`` (pure too):

- exit 0: SUCCEEDED;
- a non-zero exit: QUEUED again while the job has failed no more than its
  ``max_restarts_on_errors`` (SkyPilot's ``job_recovery`` key, default 0) times, else FAILED;
- its worker lost (a preemption): QUEUED again, at most ``MAX_REQUEUES`` times; the next loss
  makes it FAILED, saying so (a job that takes its workers down with it must not cycle forever).

Example: max_restarts_on_errors 1: exit 3 → QUEUED ("restart 1 of 1"); exit 3 again → FAILED.

Which slots of a pool get a new worker, and which workers go, is ``fill_slots`` (pure too): a
slot whose newest worker ended gets a new one (not when that worker failed its setup, unless
an apply asks: the next would fail the same way); a worker in a slot past the count goes; and
a slot with two live workers keeps its oldest (the smallest job id) and the others go. Two
live workers in one slot come from two daemons filling it at once (an apply through one
daemon while another keeps the pools up); every daemon keeps the same one, so the extra is
cancelled within one round of the pool loop instead of running, and billing, for ever.

Example: 2 workers; slot 0: j4 RUNNING, j9 PENDING; slot 1: j5 CANCELLED; slot 2: j6 RUNNING
→ fill slot 1; cancel j6 (past the count) and j9 (a second worker in slot 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MAX_REQUEUES",
    "Assignment",
    "FreeWorker",
    "Next",
    "QueuedJob",
    "SlotPlan",
    "SlotWorker",
    "Verdict",
    "after_attempt",
    "assign",
    "fill_slots",
    "pick_for",
]

MAX_REQUEUES = 10  # a pool job lost with its worker this many times is queued again; then FAILED


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


class Next(StrEnum):
    """Where a pool job goes when an attempt of it ends."""

    SUCCEEDED = "SUCCEEDED"
    QUEUED = "QUEUED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class Verdict:
    to: Next
    reason: str


def after_attempt(
    exit_code: int | None,
    *,
    failures: int,
    preemptions: int,
    max_restarts_on_errors: int,
    max_requeues: int = MAX_REQUEUES,
) -> Verdict:
    """The job's next status once an attempt ended with ``exit_code`` (None: its worker was
    lost). ``failures``/``preemptions``: the job's attempts that ended so, this one included."""
    if exit_code is None:
        if preemptions > max_requeues:
            return Verdict(
                Next.FAILED,
                f"lost with its worker {preemptions} times (at most {max_requeues} requeues)",
            )
        return Verdict(
            Next.QUEUED, f"lost with its worker (requeue {preemptions} of {max_requeues})"
        )
    if exit_code == 0:
        return Verdict(Next.SUCCEEDED, "run exited with 0")
    if failures <= max_restarts_on_errors:
        return Verdict(
            Next.QUEUED,
            f"run exited with {exit_code}: restart {failures} of {max_restarts_on_errors}",
        )
    if max_restarts_on_errors:
        return Verdict(
            Next.FAILED,
            f"run exited with {exit_code} after {max_restarts_on_errors} restarts on errors",
        )
    return Verdict(Next.FAILED, f"run exited with {exit_code}")


@dataclass(frozen=True, slots=True)
class SlotWorker:
    """A worker job of a pool, as the slots see it."""

    slot: int
    job_id: int
    live: bool  # not terminal
    failed_setup: bool = False


@dataclass(frozen=True, slots=True)
class SlotPlan:
    fill: tuple[int, ...]  # slots that get a new worker
    cancel: tuple[tuple[int, str], ...]  # (job id, why) of live workers that go


def fill_slots(workers: Sequence[SlotWorker], count: int, *, retry_setup: bool) -> SlotPlan:
    """What keeps a pool at ``count`` workers, one per slot (module docstring)."""
    newest: dict[int, SlotWorker] = {}
    kept: dict[int, SlotWorker] = {}
    cancel: list[tuple[int, str]] = []
    for w in sorted(workers, key=lambda w: w.job_id):
        newest[w.slot] = w
        if not w.live:
            continue
        if w.slot >= count:
            cancel.append((w.job_id, f"{count} workers"))
        elif w.slot in kept:
            first = kept[w.slot].job_id
            cancel.append((w.job_id, f"slot {w.slot} has a worker already (job {first})"))
        else:
            kept[w.slot] = w
    fill = tuple(
        slot
        for slot in range(count)
        if slot not in kept
        and not (slot in newest and newest[slot].failed_setup and not retry_setup)
    )
    return SlotPlan(fill=fill, cancel=tuple(cancel))
