"""The daemon's HTTP API (aiohttp): the application, its middlewares, who may call what.

Built the aiohttp way: state on ``web.AppKey``s (``spotd.api.common``), no module-level
singletons, the application separate from where it listens (the unix socket, and TCP with a
bearer token when configured). Each resource is its own module that declares its routes
(``ROUTES``, rows of ``spotd.api.routes.Route``); ``ROUTE_TABLE`` here is all of them, and the
one source of what the API is: ``make_app`` registers it, the auth middleware lets each caller
(admin, project, agent) through by it, and ``GET /v1/openapi.json`` describes it:

- ``jobs``: launch (and its dry run), list, get, events, cancel
- ``logs``: a job's logs, streamed
- ``agents``: the job agents' heartbeat
- ``chaos``: failure injection through providers that have test controls
- ``cost`` and ``projects``: what was spent, and the tenants with their quotas
- ``ops``: health and Prometheus metrics
- ``services``: ``/v1/services...``
- ``pools``: ``/v1/pools...`` and the pool workers' ``/agent/v1/pool/next``
- ``openapi``: the OpenAPI document of this table

Every error a client can cause is a 4xx with a JSON body ``{"error": ..., "details": ...}``;
a 500 means a bug, and it too is JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from spotd.api import (
    agents,
    chaos,
    cost,
    files,
    jobs,
    logs,
    openapi,
    ops,
    pools,
    projects,
    services,
    storage,
)
from spotd.api.common import (
    CONTROLLER,
    METRICS,
    PROJECT_SCOPE,
    SETTINGS,
    STORE,
    TCP_APP,
    ApiError,
    Handler,
    json_error,
)
from spotd.api.routes import Caller, Route
from spotd.config import Settings
from spotd.control import quota
from spotd.control.jobs import Controller
from spotd.control.submit import NotPermitted, Refused, UnknownProject
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore
from spotd.store.errors import Fenced

__all__ = ["ROUTE_TABLE", "MalformedRequests", "make_app", "refusal_status"]

log = structlog.get_logger("spotd.api")

ROUTE_TABLE: tuple[Route, ...] = (
    *ops.ROUTES,
    *openapi.ROUTES,
    *jobs.ROUTES,
    *files.ROUTES,
    *logs.ROUTES,
    *chaos.ROUTES,
    *agents.ROUTES,
    *cost.ROUTES,
    *projects.ROUTES,
    *services.ROUTES,
    *storage.ROUTES,
    *pools.ROUTES,
)
# the table by (method, path), for the auth middleware
ROUTES_BY_KEY = web.AppKey("routes_by_key", Mapping[tuple[str, str], Route])
# whose routes a listener serves (None: everyone's), for the auth middleware
LISTENER_CALLERS: web.AppKey[frozenset[Caller] | None] = web.AppKey("listener_callers")


def refusal_status(exc: Refused) -> int:
    """The HTTP status of a launch the use case refused: 403 for what the caller may not do
    (a quota included), 404 for a project that does not exist, 400 for a bad request."""
    if isinstance(exc, NotPermitted):
        return 403
    if isinstance(exc, UnknownProject):
        return 404
    return 400


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = json_error(exc.status, exc.message, exc.details)
    except Refused as exc:
        resp = json_error(refusal_status(exc), exc.message, exc.details)
    except Fenced as exc:  # several daemons: this one is stopping, another serves the same API
        resp = json_error(503, f"{exc}; retry on another daemon of the cluster")
        resp.headers["Retry-After"] = "1"
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        resp = json_error(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        # A bug: keep the daemon up, tell the client, keep the traceback in the log.
        log.exception("unhandled error in API handler", path=request.path)
        resp = json_error(500, "internal error in spotd; see the daemon log")
    metrics.api_requests.labels(route, str(resp.status)).inc()
    return resp


class MalformedRequests(logging.Filter):
    """For the ``aiohttp.server`` logger: a request too malformed to parse (aiohttp answers
    400 itself, before any handler) is the client's error, not the daemon's. aiohttp logs it
    at ERROR with a traceback; this makes it one WARNING line, with the first line of the
    parser's reason only (the rest quotes the raw request, which may hold a token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            reason = (exc.message or "").strip().splitlines()[:1]
            record.msg = f"{record.getMessage()}: malformed request answered {exc.code}"
            record.msg += f" ({reason[0].strip()})" if reason else ""
            record.args, record.exc_info, record.exc_text = None, None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _route(request: web.Request) -> Route | None:
    """The table's row for this request (HEAD is GET's); None: no such route."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    return request.app[ROUTES_BY_KEY].get((method, resource.canonical))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """TCP requests need the admin token or a project's token (agents' routes: the agent's own,
    which their handler checks); the unix socket is protected by its file mode (whoever can
    open it is the admin). A project token may call only the routes whose callers include
    ``Caller.PROJECT``; unknown routes and routes added later are the admin's. An application
    mounted on this one (the dashboard, ``spotd.dashboard``) checks its own callers."""
    if len(request.match_info.apps) > 1:
        return await handler(request)
    route = _route(request)
    if not request.app[TCP_APP] or (route is not None and Caller.AGENT in route.callers):
        return await handler(request)
    if route is None and request.app[LISTENER_CALLERS] is not None:
        return await handler(request)  # a listener for some callers: the rest does not exist
    token = request.app[SETTINGS].api_token or ""
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if token and hmac.compare_digest(given.encode(), token.encode()):
        return await handler(request)
    project = None
    if given.startswith(quota.TOKEN_PREFIX):
        # looked up by hash: the token itself is never stored or compared
        project = await request.app[STORE].project_by_token_hash(quota.hash_token(given))
    if project is None:
        return json_error(401, "missing or wrong bearer token")
    if route is None or Caller.PROJECT not in route.callers:
        return json_error(
            403,
            f"a token of project {project.name} may use only that project's jobs and "
            f"costs, not {request.method} {request.path}",
        )
    request[PROJECT_SCOPE] = project.name
    return await handler(request)


def make_app(
    *,
    settings: Settings,
    store: AsyncStore,
    controller: Controller,
    metrics_: DaemonMetrics,
    tcp: bool = False,
    callers: frozenset[Caller] | None = None,
) -> web.Application:
    """One listener's application; the composition root sets ``SERVICES`` on it.

    ``callers`` limits it to the routes those callers may call (a listener for agents only:
    ``spotd.api.routes.AGENT``); None serves the whole table."""
    table = tuple(r for r in ROUTE_TABLE if callers is None or r.callers & callers)
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=16 << 20
    )
    app[SETTINGS] = settings
    app[STORE] = store
    app[CONTROLLER] = controller
    app[METRICS] = metrics_
    app[TCP_APP] = tcp
    app[ROUTES_BY_KEY] = {r.key: r for r in table}
    app[LISTENER_CALLERS] = callers
    app[openapi.OPENAPI] = openapi.document(table)
    app[storage.STORAGE] = storage.make_storage(settings, controller)
    app[pools.POOLS] = pools.make_pools(app)
    for route in table:
        if route.method == "GET":  # with HEAD, as aiohttp's add_get does
            app.router.add_get(route.path, route.handler)
        else:
            app.router.add_route(route.method, route.path, route.handler)
    return app
