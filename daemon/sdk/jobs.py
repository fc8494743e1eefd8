"""Managed jobs from Python, blocking: ``spotd.jobs.launch/queue/get/logs/cancel/wait``.

A thin wrapper: each function runs its twin in ``spotd.aio.jobs`` on a private event loop
(``spotd.sdk._sync``), so there is one implementation. Called inside a running event loop,
these raise ``SyncCallInEventLoopError``: await ``spotd.aio.jobs`` there instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from spotd.sdk import _sync
from spotd.sdk.aio import jobs as _aio
from spotd.sdk.connection import Connection
from spotd.sdk.types import Job, JobHandle
from spotd.spec import Task

__all__ = ["cancel", "get", "launch", "logs", "queue", "wait"]


def launch(
    task: Task,
    name: str | None = None,
    detach: bool = True,
    *,
    env: Mapping[str, str] | None = None,
    deadline: str | None = None,
    poll: float = _aio.DEFAULT_POLL,
    connection: Connection | None = None,
) -> JobHandle:
    """Submit ``task`` as a managed job; see ``spotd.aio.jobs.launch``."""
    return _sync.run(
        "jobs.launch",
        lambda: _aio.launch(
            task, name, detach, env=env, deadline=deadline, poll=poll, connection=connection
        ),
    )


def queue(*, connection: Connection | None = None) -> list[Job]:
    """Every managed job."""
    return _sync.run("jobs.queue", lambda: _aio.queue(connection=connection))


def get(job_id: int, *, connection: Connection | None = None) -> Job:
    """One job; ``NotFoundError`` if there is none with this id."""
    return _sync.run("jobs.get", lambda: _aio.get(job_id, connection=connection))


def cancel(job_id: int, *, connection: Connection | None = None) -> Job:
    """Ask for a cancel; see ``spotd.aio.jobs.cancel``."""
    return _sync.run("jobs.cancel", lambda: _aio.cancel(job_id, connection=connection))


def wait(
    job_id: int,
    timeout: float | None = None,
    *,
    poll: float = _aio.DEFAULT_POLL,
    connection: Connection | None = None,
) -> Job:
    """Block until the job ends; see ``spotd.aio.jobs.wait`` for what it raises."""
    return _sync.run(
        "jobs.wait", lambda: _aio.wait(job_id, timeout, poll=poll, connection=connection)
    )


def logs(
    job_id: int,
    follow: bool = False,
    attempt: int | None = None,
    *,
    connection: Connection | None = None,
) -> Iterator[str]:
    """The job's log lines, without newlines; see ``spotd.aio.jobs.logs``."""
    return _sync.iterate(
        "jobs.logs", lambda: _aio.logs(job_id, follow, attempt, connection=connection)
    )
