"""What was spent: ``GET /v1/cost?by=job|service|project|region&since=...``.

Every attempt of every job and every replica of every service becomes a ``Usage``
(``spotd.pricing.cost``), priced against the catalog the controller holds now; the report
groups them. A project token sees only its project's jobs and services.
"""

from __future__ import annotations

import math

from aiohttp import web

from spotd.api.common import CONTROLLER, STORE, ApiError, scope
from spotd.api.params import QueryChoice, QueryText
from spotd.api.routes import TENANT, Route
from spotd.clock import wall
from spotd.control import usage
from spotd.pricing import cost as costs

__all__ = ["ROUTES"]


BY = QueryChoice("by", "how to group the spend", tuple(str(b) for b in costs.CostBy), "job")
SINCE = QueryText(
    "since", "only spend after this: a date, a datetime, epoch seconds or a duration back (7d)"
)


async def cost(request: web.Request) -> web.Response:
    """What was spent, grouped ``?by=``, ``?since=`` a moment."""
    by = costs.CostBy(BY.parse(request))
    now = wall()
    since = None
    raw_since = SINCE.parse(request)
    if raw_since is not None:
        try:
            since = costs.parse_since(raw_since, now=now)
        except (ValueError, OverflowError) as exc:
            raise ApiError(400, str(exc)) from exc
        if not math.isfinite(since):
            raise ApiError(400, f"since must be a finite moment, got {raw_since!r}")
    catalog = request.app[CONTROLLER].catalog
    usages = await usage.usages(request.app[STORE], catalog, project=scope(request), since=since)
    rows, total = costs.cost_report(usages, by=by, since=since, now=now)
    return web.json_response(costs.report_json(rows, total, by=by, since=since, now=now))


ROUTES = (
    Route("GET", "/v1/cost", cost, "What was spent", "cost", params=(BY, SINCE), callers=TENANT),
)
