"""Managed jobs from Python, async: the one implementation (``spotd.jobs`` wraps it).

::

    task = spotd.Task(name="train", run="python train.py", workdir=".")
    task.set_resources(
        {spotd.Resources(accelerators="A100:8"), spotd.Resources(accelerators="H100:8")}
    )
    handle = await spotd.aio.jobs.launch(task)
    async for line in spotd.aio.jobs.logs(handle.id, follow=True):
        print(line)
    job = await spotd.aio.jobs.wait(handle.id)

Every function takes ``connection=`` (``spotd.Connection``; default: what ``spotctl`` finds)
and raises the exceptions of ``spotd.sdk.errors``.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from spotd.sdk.connection import Connection, resolve
from spotd.sdk.errors import JobFailedError, WaitTimeoutError
from spotd.sdk.types import Job, JobHandle
from spotd.spec import Task

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = ["cancel", "get", "launch", "lines_of", "logs", "queue", "wait"]

DEFAULT_POLL = 0.5  # seconds between status reads in wait(); the API has no push for jobs yet


def task_yaml(task: Task) -> str:
    """What the daemon is sent: the task's own YAML (secrets included: the daemon needs them)."""
    if not isinstance(task, Task):
        raise TypeError(
            f"expected a spotd.Task, got {type(task).__name__}; "
            f"load a file with spotd.Task.from_yaml(path)"
        )
    return task.to_yaml()


async def launch(
    task: Task,
    name: str | None = None,
    detach: bool = True,
    *,
    env: Mapping[str, str] | None = None,
    deadline: str | None = None,
    poll: float = DEFAULT_POLL,
    connection: Connection | None = None,
) -> JobHandle:
    """Submit ``task`` as a managed job.

    ``name`` overrides the task's name; ``env`` fills/overrides envs and secrets like
    ``--env K=V``; ``deadline`` is ISO-8601 or a duration (``6h``). A relative ``workdir``
    is resolved against this process's working directory.

    ``detach=True`` returns as soon as the job is stored. ``detach=False`` waits for it to
    end: the handle then holds the final state, and a job that failed raises
    ``JobFailedError`` (a cancelled one is returned). Raises ``InvalidTaskError``,
    ``NoFeasiblePlacementError`` before anything is launched.
    """
    text = task_yaml(task)
    async with resolve(connection).client() as c:
        data = await c.launch(
            text,
            filename=f"<sdk:{task.name or 'task'}>",
            name=name,
            env=dict(env or {}),
            deadline=deadline,
        )
        job = Job.from_json(data)
        if not detach:
            job = await _wait(c, job.id, timeout=None, poll=poll)
    return JobHandle(id=job.id, name=job.name, job=job)


async def queue(*, connection: Connection | None = None) -> list[Job]:
    """Every managed job, newest state of each."""
    async with resolve(connection).client() as c:
        rows: list[dict[str, Any]] = await c.jobs()
    return [Job.from_json(r) for r in rows]


async def get(job_id: int, *, connection: Connection | None = None) -> Job:
    """One job; ``NotFoundError`` if there is no such job."""
    async with resolve(connection).client() as c:
        return Job.from_json(await c.job(job_id))


async def cancel(job_id: int, *, connection: Connection | None = None) -> Job:
    """Ask for a cancel; returns the job (CANCELLING until its instances are gone).
    ``ConflictError`` if it already ended, ``NotFoundError`` if there is no such job."""
    async with resolve(connection).client() as c:
        return Job.from_json(await c.cancel(job_id))


async def wait(
    job_id: int,
    timeout: float | None = None,
    *,
    poll: float = DEFAULT_POLL,
    connection: Connection | None = None,
) -> Job:
    """Wait for the job to end and return its final state.

    Raises ``JobFailedError`` if it ended FAILED* (the job is on the exception), and
    ``WaitTimeoutError`` (a ``TimeoutError``) after ``timeout`` seconds; the job keeps
    running then. A cancelled job is returned, not raised.
    """
    async with resolve(connection).client() as c:
        return await _wait(c, job_id, timeout=timeout, poll=poll)


async def _wait(client: Client, job_id: int, *, timeout: float | None, poll: float) -> Job:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = Job.from_json(await client.job(job_id))
        if job.is_terminal:
            if job.failed:
                raise JobFailedError(job)
            return job
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeoutError(job, timeout or 0.0)
            await asyncio.sleep(min(poll, left))
        else:
            await asyncio.sleep(poll)


async def logs(
    job_id: int,
    follow: bool = False,
    attempt: int | None = None,
    *,
    connection: Connection | None = None,
) -> AsyncIterator[str]:
    """The job's log lines (without their newline), every attempt in order, each attempt
    headed by a ``=== attempt N: provider/region/zone type market ===`` line.

    ``attempt=N`` gives only that attempt; ``follow=True`` keeps streaming until the job
    ends. Breaking out of the loop closes the stream.
    """
    async with resolve(connection).client() as c:
        async for line in lines_of(c.logs(job_id, follow=follow, attempt=attempt)):
            yield line


async def lines_of(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Text lines (without newlines) of a byte stream split anywhere, even inside a UTF-8
    character; the stream is closed when the caller stops early, not at garbage collection."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    try:
        async for chunk in chunks:
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending
