"""The Jobs pages: the list (filters, recoveries, cost so far, paginated) and one job (its
timeline of attempts, preemptions, events, log tail, cost against all-on-demand, cancel).

The list stays cheap at any number of jobs: one query for the jobs, one for the instances when
filtering by provider, and one per job on the page (its attempts: placement and cost), so a
page of 50 costs about 52 queries whether the daemon holds 100 jobs or 100,000.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spotd.control.cancel import request_cancel
from spotd.control.deadline import pace_of
from spotd.dashboard.render import View, render_part
from spotd.dashboard.state import Dashboard, Viewer
from spotd.dashboard.timeline import timeline
from spotd.pricing import cost as costs
from spotd.store import AttemptRow, JobRow, current_attempt_of
from spotd.telemetry import gpu
from spotd.types import JobStatus

__all__ = ["PAGE_SIZE", "JobFilters", "cancel_job", "job_page", "jobs_page"]

PAGE_SIZE = 50
LOG_TAIL_BYTES = 12_000


@dataclass(frozen=True, slots=True)
class JobFilters:
    status: str = ""
    project: str = ""
    provider: str = ""
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> JobFilters:
        """From the query string; what does not parse is treated as absent (a filter page
        should not answer a typo with an error)."""
        status = query.get("status", "")
        if status not in {str(s) for s in JobStatus}:
            status = ""
        try:
            page = max(1, min(int(query.get("page", "1")), 1_000_000))
        except ValueError:
            page = 1
        return cls(
            status=status,
            project=query.get("project", "")[:64],
            provider=query.get("provider", "")[:64],
            page=page,
        )

    def query(self, **change: Any) -> str:
        values = {
            "status": self.status,
            "project": self.project,
            "provider": self.provider,
            "page": self.page,
            **change,
        }
        return "&".join(f"{k}={v}" for k, v in values.items() if v not in ("", 1, None))


def job_cost(
    job: JobRow, attempts: list[AttemptRow], index: costs.CatalogIndex, now: float
) -> costs.CostRow:
    """What the job cost so far, and what the same hours would have cost on demand."""
    usages = [costs.usage_from_attempt(a, job=job, index=index) for a in attempts]
    _, total = costs.cost_report(usages, by=costs.CostBy.JOB, since=None, now=now)
    return total


async def jobs_page(d: Dashboard, viewer: Viewer, f: JobFilters) -> View:
    now = d.clock()
    statuses = [JobStatus(f.status)] if f.status else None
    jobs = await d.store.list_jobs(statuses=statuses)
    jobs = [j for j in jobs if viewer.sees(j.project)]
    projects = sorted({j.project for j in jobs})
    if f.project:
        jobs = [j for j in jobs if j.project == f.project]
    if f.provider:
        on = {i.job_id for i in await d.store.instances() if i.provider == f.provider}
        jobs = [j for j in jobs if j.id in on]
    pages = max(1, math.ceil(len(jobs) / PAGE_SIZE))
    page = min(f.page, pages)
    shown = jobs[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    index = costs.CatalogIndex(d.controller.catalog)
    rows = []
    for j in shown:
        attempts = await d.store.attempts(j.id)
        cur = current_attempt_of(j, attempts)
        total = job_cost(j, attempts, index, now)
        rows.append(
            {
                "job": j,
                "where": f"{cur.provider}/{cur.region}/{cur.zone}" if cur else "-",
                "market": str(cur.market) if cur else "-",
                "cost": total.dollars,
                "saving": total.saving_dollars,
                "age": now - j.submitted_at,
            }
        )
    context = {
        "rows": rows,
        "filters": f,
        "page": page,
        "pages": pages,
        "total": len(jobs),
        "statuses": [str(s) for s in JobStatus],
        "projects": projects,
        "providers": sorted(d.controller.providers),
    }
    return View(
        title="Jobs",
        template="jobs.html",
        parts={"jobs": render_part(d.env, "jobs", **context)},
        context=context,
    )


def _tail(path: str, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log, from a line start; "" when there is none yet."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - limit))
            data = fh.read(limit)
    except OSError:
        return ""
    if size > limit and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]
    return data.decode("utf-8", errors="replace")


async def job_page(d: Dashboard, viewer: Viewer, job_id: int) -> View | None:
    """The job's page; None when there is no such job (or it is another project's)."""
    job = await d.store.get_job(job_id)
    if job is None or not viewer.sees(job.project):
        return None
    now = d.clock()
    attempts = await d.store.attempts(job.id)
    instances = await d.store.instances(job_id=job.id)
    events = await d.store.events(job_id=job.id)
    tl = timeline(attempts, instances, now=now)
    total = job_cost(job, attempts, costs.CatalogIndex(d.controller.catalog), now)
    cur = current_attempt_of(job, attempts)
    log = ""
    if cur is not None:
        log = _tail(str(d.settings.logs_dir / f"j{job.id}-a{cur.attempt}" / "node-0.log"))
    gpus = []
    for inst in instances:
        if cur is None or inst.attempt_id != cur.id or inst.gpus_json is None:
            continue
        for s in gpu.parse_samples(json.loads(inst.gpus_json)):
            gpus.append({"node": inst.node_rank, "sample": s})
    context: dict[str, Any] = {
        "job": job,
        "attempts": attempts,
        "tl": tl,
        "cost": total,
        "events": events[-200:],
        "events_total": len(events),
        "log": log,
        "gpus": gpus,
        "pace": pace_of(job, attempts, now),
        "idle_threshold": d.settings.idle_gpu_threshold,
        "terminal": job.is_terminal,
        "now": now,
        "csrf": viewer.csrf,
    }
    return View(
        title=f"Job {job.id} · {job.name}",
        template="job.html",
        parts={
            name: render_part(d.env, name, **context)
            for name in ("job_actions", "job_summary", "timeline", "preemptions", "events", "log")
        },
        context=context,
    )


async def cancel_job(d: Dashboard, viewer: Viewer, job_id: int) -> str:
    """Ask the job's worker to cancel it (as ``POST /v1/jobs/{id}/cancel`` does); what
    happened, as a sentence for the page."""
    job = await d.store.get_job(job_id)
    if job is None or not viewer.sees(job.project):
        return f"no job {job_id}"
    if job.is_terminal:
        return f"job {job.id} is already {job.status}"
    reason = f"cancel requested from the dashboard ({viewer.who.label})"
    await request_cancel(d.store, d.controller.wake, job.id, reason=reason, now=d.clock())
    return f"cancelling job {job.id}"
