"""For operators and monitors: ``GET /v1/health``, ``GET /v1/daemons`` (several daemons on one
database) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from aiohttp import web

from spotd.api.common import CONTROLLER, METRICS, SETTINGS, STORE
from spotd.api.routes import ADMIN, TENANT, Route
from spotd.clock import wall
from spotd.control.deadline import pace_of
from spotd.metrics import PacedJob
from spotd.spec import Task
from spotd.store.jobs import JobPage
from spotd.types import JobStatus

__all__ = ["ROUTES"]


async def health(request: web.Request) -> web.Response:
    """Alive, with the daemon's pid, home and the names of its supervised tasks."""
    s = request.app[SETTINGS]
    ctl = request.app[CONTROLLER]
    return web.json_response(
        {"ok": True, "pid": os.getpid(), "home": str(s.home), "tasks": ctl.sup.names()}
    )


async def daemons(request: web.Request) -> web.Response:
    """The daemons sharing this daemon's database, their leases and what each runs (one row,
    or none before HA is on, for a daemon alone)."""
    rows = await request.app[STORE].daemons()
    me = request.app[SETTINGS].daemon_id if request.app[SETTINGS].ha else None
    return web.json_response(
        [
            {
                "id": d.id,
                "epoch": d.epoch,
                "url": d.url,
                "started_at": d.started_at,
                "renewed_at": d.renewed_at,
                "expires_at": d.expires_at,
                "alive": d.alive,
                "ready": d.ready,
                "jobs": d.jobs,
                "services": d.services,
                "this": d.id == me,
            }
            for d in rows
        ]
    )


async def metrics(request: web.Request) -> web.Response:
    """The daemon's metrics, with the job-state gauges counted, and the paces of DEADLINE jobs
    not ended computed, from the store at scrape time."""
    m = request.app[METRICS]
    store = request.app[STORE]
    counts = await store.job_counts()
    for s in JobStatus:
        m.jobs_by_state.labels(str(s)).set(counts.get(s, 0))
    page = await store.job_page(
        statuses=[s for s in JobStatus if not s.is_terminal], deadline_only=True, nodes=False
    )
    # the tasks this daemon's workers parsed already; another daemon's jobs (one database)
    # are parsed for this scrape only (80 us each). Computed off the event loop that answers
    # the agents: at 10,000 DEADLINE jobs the paces take a fraction of a second
    memory = request.app[CONTROLLER].memory
    tasks = {j.id: t for j in page.jobs if (t := memory.known(j.id)) is not None}
    m.set_deadline_paces(await asyncio.to_thread(_paces, page, tasks, wall()))
    # 3 MB of text at 10,000 DEADLINE jobs: rendered off the event loop too
    return web.Response(body=await asyncio.to_thread(m.render), content_type="text/plain")


def _paces(page: JobPage, tasks: Mapping[int, Task], now: float) -> list[PacedJob]:
    return [
        PacedJob(j.id, j.name, j.project, p.slack, p.ahead, p.progress, p.progress_from)
        for j in page.jobs
        if (p := pace_of(j, page.attempts.get(j.id, []), now, tasks.get(j.id))) is not None
    ]


ROUTES = (
    Route("GET", "/v1/health", health, "Is the daemon alive", "ops", callers=TENANT),
    Route(
        "GET",
        "/v1/daemons",
        daemons,
        "The daemons on this database, and their leases",
        "ops",
        callers=ADMIN,
    ),
    Route("GET", "/metrics", metrics, "Prometheus metrics (text)", "ops", text=True),
)
