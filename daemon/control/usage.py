"""What was run, as the cost report counts it: every attempt of every job and every replica of
every service, read in three queries whatever their number (the API's ``GET /v1/cost`` and the
dashboard's cost page both read it here)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from spotd.pricing import cost as costs
from spotd.store import AsyncStore, AttemptRow
from spotd.types import CatalogEntry

__all__ = ["usages"]


async def usages(
    store: AsyncStore,
    catalog: Sequence[CatalogEntry],
    *,
    project: str | None = None,
    since: float | None = None,
) -> list[costs.Usage]:
    """The usage of ``project``'s jobs and services (everyone's when None); ``since``: jobs
    that ended before it are left out (they cannot count in a window that starts later)."""
    index = costs.CatalogIndex(catalog)
    by_job: defaultdict[int, list[AttemptRow]] = defaultdict(list)
    for a in await store.every_attempt(project=project):
        by_job[a.job_id].append(a)
    out: list[costs.Usage] = []
    for job in await store.list_jobs():
        if project is not None and job.project != project:
            continue
        if since is not None and job.ended_at is not None and job.ended_at < since:
            continue
        out += [costs.usage_from_attempt(a, job=job, index=index) for a in by_job[job.id]]
    services = {
        s.id: s for s in await store.list_services() if project is None or s.project == project
    }
    for r in await store.replicas():
        svc = services.get(r.service_id)
        if svc is not None:
            out.append(
                costs.usage_from_replica(r, service=svc.name, project=svc.project, index=index)
            )
    return out
