"""A pool job's output (cut from its workers' logs, or followed while it runs) and what an
attempt's end does to it (``decide``, over ``spotd.control.pool_queue.after_attempt``).

A pool job has no log of its own: its worker's agent writes a ``pool job <id> rank <r>
attempt <n>: started`` line into the worker's log before the job's output and an
``exited``/``stopped``/``cancelled`` line after it; ``job_output`` cuts one attempt out.
``follow`` yields the job's output as it grows, until the job has ended and its last attempt's
closing line has arrived (or ``SETTLE_SECONDS`` after the end, for a worker lost mid-job).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from spotd.control.pool_queue import after_attempt
from spotd.store import AsyncStore
from spotd.store.pools import PoolAttemptRow, PoolJobRow, PoolJobStatus

__all__ = ["decide", "follow", "job_output", "output"]

FOLLOW_POLL_SECONDS = 0.5
SETTLE_SECONDS = 10.0  # after the job ended, how long to wait for its last lines to arrive


def decide(
    job: PoolJobRow, failures: int, preemptions: int, exit_code: int | None
) -> tuple[PoolJobStatus, str]:
    """The store's ``Decide``: where the job goes once an attempt ended."""
    v = after_attempt(
        exit_code,
        failures=failures,
        preemptions=preemptions,
        max_restarts_on_errors=job.max_restarts_on_errors,
    )
    return PoolJobStatus(v.to.value), v.reason  # Next's values are PoolJobStatus values


def _marker(job_id: int) -> str:
    return f"[spotd-agent] pool job {job_id} rank "


def job_output(worker_log: str, job_id: int, attempt: int) -> str:
    """One attempt's output cut from its worker's log: from the agent's ``pool job <id> ...
    attempt <n>: started`` line to its ``exited``/``stopped``/``cancelled`` line (or the log's
    end, while it runs or when the worker was lost). "" if the log does not hold it."""
    mark = _marker(job_id)
    out: list[str] = []
    for line in worker_log.splitlines(keepends=True):
        ours = line.startswith(mark) and f" attempt {attempt}: " in line
        if not out:
            if ours and line.rstrip().endswith(": started"):
                out.append(line)
            continue
        out.append(line)
        if ours:
            break
    return "".join(out)


def _closed(text: str, job_id: int, attempt: int) -> bool:
    """Whether an attempt's cut output holds its closing line."""
    lines = text.rstrip("\n").splitlines()
    return (
        len(lines) > 1
        and lines[-1].startswith(_marker(job_id))
        and (f" attempt {attempt}: " in lines[-1])
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def _attempt_text(logs_dir: Path, att: PoolAttemptRow) -> str:
    aid = att.instance_key.rsplit("-n", 1)[0]
    text = await asyncio.to_thread(_read, logs_dir / aid / "node-0.log")
    return (
        f"=== pool job {att.pool_job_id} attempt {att.attempt} on worker job "
        f"{att.worker_job_id} ({att.instance_key}) ===\n"
        + job_output(text, att.pool_job_id, att.attempt)
    )


async def output(store: AsyncStore, logs_dir: Path, job: PoolJobRow) -> str:
    """A pool job's output, every attempt's, each cut from its worker's log."""
    parts = [
        await _attempt_text(logs_dir, att)
        for att in await store.pool_attempts(job.pool_id)
        if att.pool_job_id == job.id
    ]
    return "".join(parts)


async def follow(
    store: AsyncStore,
    logs_dir: Path,
    job: PoolJobRow,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[str]:
    """The job's output as it grows, attempt after attempt, until it has ended (see the
    module docstring)."""
    sent: dict[int, int] = {}  # attempt -> characters of its text already yielded
    ended_at: float | None = None
    while True:
        fresh = await store.get_pool_job(job.id)
        ended = fresh is None or fresh.status.is_terminal
        attempts = [a for a in await store.pool_attempts(job.pool_id) if a.pool_job_id == job.id]
        closed = True
        for att in attempts:
            text = await _attempt_text(logs_dir, att)
            done = sent.get(att.attempt, 0)
            if len(text) > done:
                yield text[done:]
                sent[att.attempt] = len(text)
            closed = _closed(text, job.id, att.attempt)
        if ended:
            ended_at = clock() if ended_at is None else ended_at
            if closed or clock() - ended_at > SETTLE_SECONDS:
                return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
