"""What was spent: ``GET /v1/cost?by=job|service|project|region&since=...``.

Every attempt of every job and every replica of every service becomes a ``Usage``
(``spotd.pricing.cost``), priced against the catalog the controller holds now; the report
groups them. A project token sees only its project's jobs (and the services, which belong to
``default``, only when that is its project).
"""

from __future__ import annotations

import time

from aiohttp import web

from spotd.api.common import CONTROLLER, STORE, ApiError, scope
from spotd.control import quota
from spotd.pricing import cost as costs

__all__ = ["add_routes"]


async def cost(request: web.Request) -> web.Response:
    try:
        by = costs.CostBy(request.query.get("by", "job"))
    except ValueError as exc:
        raise ApiError(400, f"by must be one of {', '.join(costs.CostBy)}") from exc
    now = time.time()
    since = None
    if request.query.get("since"):
        try:
            since = costs.parse_since(request.query["since"], now=now)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
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
    if limit in (None, quota.DEFAULT_PROJECT):  # services belong to the default project
        for svc in await store.list_services():
            usages += [
                costs.usage_from_replica(r, service=svc.name, index=index)
                for r in await store.replicas(service_id=svc.id)
            ]
    rows, total = costs.cost_report(usages, by=by, since=since, now=now)
    return web.json_response(costs.report_json(rows, total, by=by, since=since, now=now))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/cost", cost)
