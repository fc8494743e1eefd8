"""The dashboard's aiohttp application, mounted by the composition root at ``/dashboard`` on
the daemon's listeners (``app.add_subapp``): the unix socket (whoever can open it is the admin,
as for the API) and the TCP listener (sessions, see ``spotd.dashboard.auth``). The API's auth
middleware lets mounted applications check their own callers.

Routes (under ``/dashboard``):

- ``GET /`` jobs · ``GET /jobs/{id}`` one job · ``POST /jobs/{id}/cancel``
- ``GET /services`` · ``GET /services/{name}`` · ``POST /services/{name}/scale`` and ``/drain``
- ``GET /fleet`` · ``GET /cost``
- ``GET /live/{page}`` the page's server-sent events: its parts and charts when they change
- ``GET /login`` and ``POST /login`` (a token), ``GET /login/{code}`` (a one-time link),
  ``POST /logout``; ``POST /login-link`` (a bearer token, or the unix socket) → a one-time link
- ``GET /static/...`` the stylesheet, the script and the vendored uPlot

Pages are HTML rendered here; the only script is ``static/dashboard.js`` (no inline script: the
Content-Security-Policy allows only this origin's files), which draws the charts and applies
the live stream's updates.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from aiohttp import web

from spotd.aiokit import sleep
from spotd.control import quota
from spotd.dashboard import fleet, jobs, services
from spotd.dashboard.auth import COOKIE, Identity, fingerprint, origin_allowed
from spotd.dashboard.render import PREFIX, View
from spotd.dashboard.state import DASHBOARD, TCP, VIEWER, Dashboard, Viewer

__all__ = ["PREFIX", "make_dashboard"]

STATIC = Path(__file__).parent / "static"
PUBLIC = ("/login", "/static/")  # paths (under the prefix) a browser may open signed out
HEADERS = MappingProxyType(
    {
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        # a login link's code never leaves in a Referer ("no-referrer" would make Chromium send
        # "Origin: null" on our own POSTs, which the CSRF check refuses)
        "Referrer-Policy": "same-origin",
    }
)
KEEPALIVE_SECONDS = 15.0
SLOW_PAGE_FACTOR = 30  # the Cost page is rendered again every 30 live intervals, not every one

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _sub(request: web.Request) -> str:
    """The path under the prefix: ``/dashboard/jobs/3`` → ``/jobs/3``."""
    return request.path.removeprefix(PREFIX) or "/"


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **HEADERS})


async def _identity_of(d: Dashboard, token: str) -> Identity | None:
    """Whom a token speaks for: the admin token, a project's token, or nobody."""
    token = token.strip()
    admin = d.settings.api_token or ""
    if admin and token and hmac.compare_digest(token.encode(), admin.encode()):
        return Identity(credential=fingerprint(quota.hash_token(admin)))
    if token.startswith(quota.TOKEN_PREFIX):
        project = await d.store.project_by_token_hash(quota.hash_token(token))
        if project is not None:
            return Identity(project.name, fingerprint(project.token_hash))
    return None


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The unix socket is the admin; on TCP a page needs a session (else: the login page), and
    a POST also this origin and the session's CSRF token."""
    d = request.app[DASHBOARD]
    if not request.app[TCP]:
        request[VIEWER] = Viewer(Identity(), csrf="")
        return await handler(request)
    sub = _sub(request)
    if sub.startswith(PUBLIC) or sub == "/login-link":
        return await handler(request)
    session = await d.sessions.get(request.cookies.get(COOKIE), now=d.clock())
    if session is None:
        if request.method == "GET" and not sub.startswith("/live/"):
            return _see_other(f"{PREFIX}/login")
        return web.json_response({"error": "not signed in"}, status=401, headers=HEADERS)
    viewer = Viewer(session.who, csrf=session.csrf)
    if request.method == "POST":
        scheme = "https" if request.secure else "http"
        if not origin_allowed(request.headers.get("Origin"), scheme=scheme, host=request.host):
            return web.json_response(
                {"error": "cross-origin request refused"}, status=403, headers=HEADERS
            )
        form = await request.post()
        given = str(form.get("csrf", "")) or request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(given.encode(), session.csrf.encode()):
            return web.json_response(
                {"error": "missing or wrong CSRF token"}, status=403, headers=HEADERS
            )
    request[VIEWER] = viewer
    return await handler(request)


def _page(d: Dashboard, view: View, request: web.Request, *, status: int = 200) -> web.Response:
    viewer = request[VIEWER]
    html = d.env.get_template(view.template).render(
        {
            **view.context,
            "title": view.title,
            "parts": view.parts,
            "charts_json": json.dumps(view.charts),
            "live": request.path.removeprefix(PREFIX + "/"),
            "query": request.query_string,
            "who": viewer.who.label,
            "tcp": request.app[TCP],
            "csrf": viewer.csrf,
            "flash": request.query.get("flash", "")[:300],
        }
    )
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={**HEADERS, "Cache-Control": "no-store"},
    )


def _not_found(d: Dashboard, request: web.Request, what: str) -> web.Response:
    return _page(
        d,
        View(title="Not found", template="missing.html", context={"what": what}),
        request,
        status=404,
    )


# -- pages -------------------------------------------------------------------------------


async def build_page(
    d: Dashboard, viewer: Viewer, page: str, query: Mapping[str, str]
) -> View | None:
    """The view of a page by its path under the prefix (``""``, ``jobs/3``, ``cost``...);
    None when there is no such page (or thing)."""
    parts = [p for p in page.strip("/").split("/") if p]
    match parts:
        case [] | ["jobs"]:
            return await jobs.jobs_page(d, viewer, jobs.JobFilters.parse(query))
        case ["jobs", job_id] if _number(job_id, 11) is not None:
            return await jobs.job_page(d, viewer, int(job_id))
        case ["services"]:
            return await services.services_page(d, viewer)
        case ["services", name]:
            return await services.service_page(d, viewer, name)
        case ["fleet"]:
            return await fleet.fleet_page(d, viewer)
        case ["cost"]:
            return await fleet.cost_page(
                d, viewer, by=query.get("by", "project"), window=query.get("window", "24h")
            )
    return None


async def page(request: web.Request) -> web.StreamResponse:
    d = request.app[DASHBOARD]
    name = request.match_info.get("page", "")
    view = await build_page(d, request[VIEWER], name, request.query)
    if view is None:
        return _not_found(d, request, name or "this page")
    return _page(d, view, request)


async def live(request: web.Request) -> web.StreamResponse:
    """Server-sent events for a page: ``update`` with the parts and charts that changed since
    the last one (the first: all of them), a comment every 15 s to keep proxies from closing
    a quiet stream, ``gone`` when the page's subject went away. Ends with the client, the
    session or the daemon."""
    d = request.app[DASHBOARD]
    name = request.match_info.get("page", "")
    viewer = request[VIEWER]
    if await build_page(d, viewer, name, request.query) is None:
        return web.json_response({"error": f"no page {name!r}"}, status=404, headers=HEADERS)
    resp = web.StreamResponse(
        headers={
            **HEADERS,
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    sent: dict[str, str] = {}
    quiet = 0.0
    # the Cost page reads every attempt and replica: it changes slowly, and costs the most
    interval = d.live_interval * (SLOW_PAGE_FACTOR if name.startswith("cost") else 1)
    cookie = request.cookies.get(COOKIE)
    while not d.stop.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        if request.app[TCP] and await d.sessions.get(cookie, now=d.clock()) is None:
            break  # signed out, or the session ran out
        view = await build_page(d, viewer, name, request.query)
        if view is None:
            await resp.write(b"event: gone\ndata: {}\n\n")
            break
        now_sent = {f"part:{k}": v for k, v in view.parts.items()}
        now_sent |= {f"chart:{k}": json.dumps(v) for k, v in view.charts.items()}
        changed = {k: v for k, v in now_sent.items() if sent.get(k) != v}
        if changed:
            body = {
                "parts": {k[5:]: v for k, v in changed.items() if k.startswith("part:")},
                "charts": {k[6:]: view.charts[k[6:]] for k in changed if k.startswith("chart:")},
            }
            await resp.write(f"event: update\ndata: {json.dumps(body)}\n\n".encode())
            sent.update(changed)
            quiet = 0.0
        elif quiet >= KEEPALIVE_SECONDS:
            await resp.write(b": keepalive\n\n")
            quiet = 0.0
        await sleep(interval, d.stop)
        quiet += interval
    return resp


# -- actions -----------------------------------------------------------------------------


def _back(where: tuple[str, str], message: str) -> web.Response:
    """Back to the page of ``where`` (``("jobs", "7")``: each part quoted, a ``/`` too),
    saying ``message``."""
    path = "/".join(quote(part, safe="") for part in where)
    return _see_other(f"{PREFIX}/{path}?flash={quote(message)}")


def _number(text: str, digits: int) -> int | None:
    """``text`` as a whole number of at most ``digits`` ASCII digits; None otherwise ("²" is a
    digit to ``str.isdigit``, and no number to ``int``)."""
    return int(text) if re.fullmatch(f"[0-9]{{1,{digits}}}", text) else None


async def cancel(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    if _number(job_id, 11) is None:
        return _not_found(request.app[DASHBOARD], request, f"job {job_id}")
    msg = await jobs.cancel_job(request.app[DASHBOARD], request[VIEWER], int(job_id))
    return _back(("jobs", job_id), msg)


async def _int_field(request: web.Request, name: str) -> int | None:
    value = str((await request.post()).get(name, "")).strip()
    return _number(value, 6)


async def scale(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    target = await _int_field(request, "target")
    if target is None:
        return _back(("services", name), "the target must be a whole number")
    msg = await services.scale_service(request.app[DASHBOARD], request[VIEWER], name, target)
    return _back(("services", name), msg)


async def drain(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    replica = await _int_field(request, "replica")
    if replica is None:
        return _back(("services", name), "which replica? (a replica id)")
    msg = await services.drain_replica(request.app[DASHBOARD], request[VIEWER], name, replica)
    return _back(("services", name), msg)


# -- signing in --------------------------------------------------------------------------


def _login_page(d: Dashboard, error: str = "", *, status: int = 200) -> web.Response:
    html = d.env.get_template("login.html").render(error=error)
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={**HEADERS, "Cache-Control": "no-store"},
    )


async def _signed_in(request: web.Request, who: Identity, response: web.Response) -> web.Response:
    d = request.app[DASHBOARD]
    session = await d.sessions.create(who, now=d.clock())
    response.set_cookie(
        COOKIE,
        session.id,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=int(d.sessions.session_max_age),
    )
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    d = request.app[DASHBOARD]
    if not request.app[TCP]:
        return _see_other(f"{PREFIX}/")
    return _login_page(d)


async def login(request: web.Request) -> web.StreamResponse:
    """A token from the login form: a session, or the login page again (401)."""
    d = request.app[DASHBOARD]
    if not request.app[TCP]:
        return _see_other(f"{PREFIX}/")
    scheme = "https" if request.secure else "http"
    if not origin_allowed(request.headers.get("Origin"), scheme=scheme, host=request.host):
        return _login_page(d, "Sign in from this page.", status=403)
    form = await request.post()
    who = await _identity_of(d, str(form.get("token", ""))[:512])
    if who is None:
        return _login_page(d, "That token is not valid here.", status=401)
    return await _signed_in(request, who, _see_other(f"{PREFIX}/"))


async def login_link(request: web.Request) -> web.StreamResponse:
    """Redeem a one-time link; a page that moves on to the dashboard by itself (a same-site
    navigation, so the ``SameSite=Strict`` cookie goes with it)."""
    d = request.app[DASHBOARD]
    who = await d.links.redeem(request.match_info["code"], now=d.clock())
    if who is None:
        return _login_page(d, "That sign-in link was used already or has expired.", status=401)
    html = d.env.get_template("signed_in.html").render()
    return await _signed_in(
        request,
        who,
        web.Response(text=html, content_type="text/html", headers={**HEADERS}),
    )


async def logout(request: web.Request) -> web.StreamResponse:
    d = request.app[DASHBOARD]
    await d.sessions.end(request.cookies.get(COOKIE, ""))
    resp = _see_other(f"{PREFIX}/login")
    resp.del_cookie(COOKIE, path=PREFIX)
    return resp


def _public_base(d: Dashboard, request: web.Request) -> str | None:
    """Where a browser reaches this daemon's TCP listener, or None without one."""
    if request.app[TCP]:
        return f"{'https' if request.secure else 'http'}://{request.host}"
    s = d.settings
    if not (s.tcp_host and s.tcp_port):
        return None
    host = "127.0.0.1" if s.tcp_host in ("0.0.0.0", "::", "") else s.tcp_host
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if s.tls_cert else 'http'}://{host}:{s.tcp_port}"


async def new_login_link(request: web.Request) -> web.StreamResponse:
    """A one-time link for whoever asks (the unix socket: the admin; on TCP the bearer
    token's identity): ``{"path", "url", "expires_in"}``; ``url`` is null when the daemon has
    no TCP listener (a browser cannot open the unix socket)."""
    d = request.app[DASHBOARD]
    # the unix socket is the admin: its session lasts while the admin token does
    who: Identity | None = Identity(credential=fingerprint(d.sessions.admin_token_hash))
    if request.app[TCP]:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        who = await _identity_of(d, given[:512])
    if who is None:
        return web.json_response({"error": "missing or wrong bearer token"}, status=401)
    code = await d.links.issue(who, now=d.clock())
    path = f"{PREFIX}/login/{code}"
    base = _public_base(d, request)
    body: dict[str, Any] = {
        "path": path,
        "url": None if base is None else base + path,
        "expires_in": d.links.ttl,
        "who": who.label,
    }
    if base is None:
        body["error"] = (
            "the daemon has no TCP listener for a browser to reach: set tcp_host and tcp_port "
            "(and api_token) in its config"
        )
    return web.json_response(body, headers=HEADERS)


# -- the application ---------------------------------------------------------------------


async def _stop_streams(app: web.Application) -> None:
    app[DASHBOARD].stop.set()


def make_dashboard(dashboard: Dashboard, *, tcp: bool) -> web.Application:
    """One listener's dashboard application, to mount at ``PREFIX``."""
    app = web.Application(middlewares=[auth])
    app[DASHBOARD] = dashboard
    app[TCP] = tcp
    app.on_shutdown.append(_stop_streams)
    r = app.router
    r.add_get("/", page)
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_get("/login/{code}", login_link)
    r.add_post("/logout", logout)
    r.add_post("/login-link", new_login_link)
    r.add_post("/jobs/{job_id}/cancel", cancel)
    r.add_post("/services/{name}/scale", scale)
    r.add_post("/services/{name}/drain", drain)
    r.add_get("/live/{page:.*}", live)
    r.add_static("/static/", STATIC, append_version=False)
    r.add_get("/{page:(jobs|services|fleet|cost)(/[^/]+)?}", page)
    return app
