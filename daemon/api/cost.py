"""What was spent: ``GET /v1/cost?by=job|service|project|region&since=...``.

Every attempt of every job and every replica of every service becomes a ``Usage``
(``spotd.pricing.cost``), priced against the catalog the controller holds now; the report
groups them. A project token sees only its project's jobs and services.
"""

from __future__ import annotations

import math
import time

from aiohttp import web

from spotd.api.common import CONTROLLER, STORE, ApiError, scope
from spotd.api.params import QueryChoice, QueryText
from spotd.api.routes import TENANT, Route
from spotd.pricing import cost as costs

__all__ = ["ROUTES"]


BY = QueryChoice("by", "how to group the spend", tuple(str(b) for b in costs.CostBy), "job")
SINCE = QueryText(
    "since", "only spend after this: a date, a datetime, epoch seconds or a duration back (7d)"
)


async def cost(request: web.Request) -> web.Response:
    """What was spent, grouped ``?by=``, ``?since=`` a moment."""
    by = costs.CostBy(BY.parse(request))
    now = time.time()
    since = None
    raw_since = SINCE.parse(request)
    if raw_since is not None:
        try:
            since = costs.parse_since(raw_since, now=now)
        except (ValueError, OverflowError) as exc:
            raise ApiError(400, str(exc)) from exc
        if not math.isfinite(since):
            raise ApiError(400, f"since must be a finite moment, got {raw_since!r}")
    store = request.app[STORE]
    index = costs.CatalogIndex(request.app[CONTROLLER].catalog)
    limit = scope(request)
    usages: list[costs.Usage] = []
    for job in await store.list_jobs():
        if limit is not None and job.project != limit:
            continue
        if since is not None and job.ended_at is not None and job.ended_at < since:
            continue
        usages += [
            costs.usage_from_attempt(a, job=job, index=index) for a in await store.attempts(job.id)
        ]
    for svc in await store.list_services():
        if limit is not None and svc.project != limit:
            continue
        usages += [
            costs.usage_from_replica(r, service=svc.name, project=svc.project, index=index)
            for r in await store.replicas(service_id=svc.id)
        ]
    rows, total = costs.cost_report(usages, by=by, since=since, now=now)
    return web.json_response(costs.report_json(rows, total, by=by, since=since, now=now))


ROUTES = (
    Route("GET", "/v1/cost", cost, "What was spent", "cost", params=(BY, SINCE), callers=TENANT),
)
