"""A job's logs: ``GET /v1/jobs/{job_id}/logs`` (``?attempt=N``, ``?follow=1``), plain text.

The agents' heartbeats append each node's output to ``logs/j<job>-a<attempt>/node-<rank>.log``
(``spotd.api.agents``); this route reads those files. Every attempt gets a header line naming
where it ran, so a preempted job's log reads as one story: attempt 1 in one zone, attempt 2
in the next, each node's lines prefixed by the node when there are several.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from spotd.api.common import SETTINGS, STORE, ApiError
from spotd.api.jobs import JOB_ID, requested_job
from spotd.api.params import QueryFlag, QueryInt
from spotd.api.routes import TENANT, Route
from spotd.config import Settings
from spotd.types import JobStatus

__all__ = ["ROUTES"]


def _log_files(settings: Settings, job_id: int, attempt: int) -> list[Path]:
    d = settings.logs_dir / f"j{job_id}-a{attempt}"
    return sorted(d.glob("node-*.log")) if d.exists() else []


def _drain(files: list[Path], offsets: dict[Path, int]) -> bytes:
    """New bytes of every node log since the last call (lines prefixed by node if several)."""
    out = []
    for f in files:
        with open(f, "rb") as fh:
            fh.seek(offsets.get(f, 0))
            data = fh.read()
        offsets[f] = offsets.get(f, 0) + len(data)
        if data and len(files) > 1:
            prefix = f"({f.stem}) ".encode()
            data = b"".join(prefix + line for line in data.splitlines(keepends=True))
        out.append(data)
    return b"".join(out)


async def job_logs(request: web.Request) -> web.StreamResponse:
    """Logs of every attempt in order (or of ``?attempt=N``); ``?follow=1`` streams to the end."""
    follow = FOLLOW.parse(request)
    only = ATTEMPT.parse(request)
    job = await requested_job(request)
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    attempts = await store.attempts(job.id)
    if only is not None and not only <= len(attempts):
        raise ApiError(404, f"job {job.id} has no attempt {only} (it has {len(attempts)})")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    attempt = only or 1
    offsets: dict[Path, int] = {}
    headed: set[int] = set()
    while True:
        attempts = await store.attempts(job.id)
        fresh = await store.get_job(job.id)
        ended = fresh is None or JobStatus(fresh.status).is_terminal
        if attempt <= len(attempts):
            a = attempts[attempt - 1]
            if attempt not in headed:
                headed.add(attempt)
                await resp.write(
                    f"=== attempt {a.attempt}: {a.provider}/{a.region}/{a.zone} "
                    f"{a.instance_type} {a.market} ===\n".encode()
                )
            data = await asyncio.to_thread(_drain, _log_files(settings, job.id, attempt), offsets)
            if data:
                await resp.write(data)
                continue
            if attempt < len(attempts) and only is None and (a.ended_at or not follow):
                attempt += 1
                continue
            done = only is not None and a.ended_at is not None
        else:
            done = only is not None
        if not follow or done or ended:
            break
        await asyncio.sleep(0.2)
    await resp.write_eof()
    return resp


FOLLOW = QueryFlag("follow", "keep streaming until the job (or the attempt) ends")
ATTEMPT = QueryInt("attempt", "only this attempt's log (1 is the first)")

ROUTES = (
    Route(
        "GET",
        "/v1/jobs/{job_id}/logs",
        job_logs,
        "A job's logs, every attempt in order (text)",
        "logs",
        params=(JOB_ID, FOLLOW, ATTEMPT),
        callers=TENANT,
        errors=(404,),
        text=True,
    ),
)
