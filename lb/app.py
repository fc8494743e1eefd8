"""The proxy server and the control app.

``running_proxy(state)`` owns the data plane's resources: the replica connection pool
(``pool.UpstreamPool``: the proxy's own HTTP/1.1 client), the one pooled
``ClientSession`` (https replicas, probes, reports) and two background tasks (the prober
that re-admits ejected replicas, the reporter that POSTs ejections to ``--report-url``).
``serve_proxy(proxy, host, port)`` serves it on aiohttp's low-level server: every path and
method is proxied, with no application, router or middleware on the hot path (that saved
about a sixth of the LB's CPU per streamed request, docs/design-notes.md).
``make_app(state)`` is the same data plane as an ``Application`` with a catch-all route,
for ``control_on_proxy`` (the control routes then share the proxy's port).

``make_control_app(state, token=...)`` is the control plane, served on its own port bound to
127.0.0.1 (or mounted under ``/-/`` on the proxy port with ``control_on_proxy=True``); every
route needs ``Authorization: Bearer <token>`` when a token is set:

- ``PUT /-/replicas``  body ``[{"id", "url", "state": "READY"|"DRAINING"}]`` or
  ``{"replicas": [...]}`` — the full set, pushed by the daemon on every change;
  answers ``{"version": n, "replicas": [...]}``
- ``GET /-/replicas``  ``{"version", "replicas": [{id, url, state, in_flight, ejected,
  requests, failures}], "ejections": [{replica_id, url, reason, at}], "waiting"}``
- ``GET /-/stats?window=60``  per-second request counts of the last ``window`` seconds
  (``{"requests", "qps", "errors_5xx", "buckets": [{t, requests, errors_5xx}], ...}``)
- ``PUT /-/api-keys``  body ``{"keys": [...], "header": "Authorization", "forward": false}``
  — the client API keys (the whole set; ``[]`` turns them off), replaced at once: a key
  rotation is one PUT, no restart; answers ``{"version", "count", "header", "forward"}``
  (``GET /-/api-keys`` the same), never the keys
- ``GET /metrics``  Prometheus text
- ``GET /-/health``  ``{"ok": true}``
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .control import ApiKeyAck, ApiKeySet, LbEvent, ReplicaSetAck, ReplicasReport
from .pool import UpstreamPool
from .proxy import Proxy
from .state import LBState, MetricsCollector, parse_replicas

log = logging.getLogger("spotd.lb")

STATE: web.AppKey[LBState] = web.AppKey("spotd_lb_state", LBState)
PROXY: web.AppKey[Proxy] = web.AppKey("spotd_lb_proxy", Proxy)
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("spotd_lb_registry", CollectorRegistry)
TOKEN: web.AppKey[str] = web.AppKey("spotd_lb_token", str)


def _make_session(state: LBState) -> aiohttp.ClientSession:
    cfg = state.config
    connector = aiohttp.TCPConnector(
        limit=cfg.pool_limit,
        limit_per_host=0,
        keepalive_timeout=cfg.keepalive_timeout,
        ttl_dns_cache=300,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout
        ),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        trust_env=False,
    )


async def _probe_once(state: LBState, session: aiohttp.ClientSession) -> None:
    cfg = state.config
    reps = state.replicas
    targets = [(v.id, v.url) for v in reps.views if reps.stats[v.id].ejected]
    if not targets:
        return

    async def probe(rid: str, url: str) -> None:
        try:
            async with session.get(
                url + cfg.probe_path, timeout=aiohttp.ClientTimeout(total=cfg.probe_timeout)
            ) as r:
                ok = r.status < 500
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            log.info("replica %s answered a probe; back in rotation", rid)
            state.readmit(rid, url)

    await asyncio.gather(*(probe(rid, url) for rid, url in targets))


async def _prober(state: LBState, session: aiohttp.ClientSession) -> None:
    """Probe ejected replicas every ``probe_interval`` seconds; re-admit on any answer < 500."""
    while True:
        await asyncio.sleep(state.config.probe_interval)
        await _probe_once(state, session)


async def _reporter(state: LBState, session: aiohttp.ClientSession) -> None:
    """POST each ejection to ``report_url`` (a few tries; the daemon also has GET /-/replicas)."""
    url = state.config.report_url
    assert url
    while True:
        ev = await state.report_queue.get()
        payload = LbEvent(lb_id=state.config.lb_id, ejection=ev).to_json()
        for attempt in range(3):
            try:
                async with session.post(
                    url, json=payload, timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status < 500:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2 * (attempt + 1))


def _supervised(name: str, coro: Awaitable[None]) -> asyncio.Task[None]:
    async def guard() -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a background loop must never die silently
            log.exception("lb task %s crashed", name)
            raise
        log.error("lb task %s exited; it should run until shutdown", name)

    return asyncio.create_task(guard(), name=f"spotd-lb-{name}")


@contextlib.asynccontextmanager
async def running_proxy(state: LBState) -> AsyncIterator[Proxy]:
    """The data plane of ``state`` with its pool, session and background tasks, closed
    (tasks cancelled, connections aborted) on exit."""
    cfg = state.config
    session = _make_session(state)
    pool = UpstreamPool(
        limit=cfg.pool_limit,
        keepalive_timeout=cfg.keepalive_timeout,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
    )
    tasks = [_supervised("prober", _prober(state, session))]
    reports: aiohttp.ClientSession | None = None
    if cfg.report_url:
        if cfg.report_unix:  # the daemon listens on its unix socket only (by default)
            reports = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(cfg.report_unix), trust_env=False
            )
        tasks.append(_supervised("reporter", _reporter(state, reports or session)))
    try:
        yield Proxy(state, pool, session)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        pool.close()
        await session.close()
        if reports is not None:
            await reports.close()


async def serve_proxy(
    proxy: Proxy,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    backlog: int = 2048,
    shutdown_timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> web.ServerRunner:
    """Serve ``proxy`` on ``host:port`` (port 0: any free one, see ``runner.addresses``).
    ``await runner.cleanup()`` stops accepting and lets in-flight requests finish, up to
    ``shutdown_timeout`` seconds. Handlers are cancelled when their client goes away (so is
    the replica request: vLLM aborts the generation). With ``ssl_context`` the port speaks
    TLS only (``server_tls``): a plaintext request gets no HTTP answer."""
    server = web.Server(proxy.handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(
        runner, host, port, backlog=backlog, reuse_port=reuse_port or None, ssl_context=ssl_context
    ).start()
    return runner


def server_tls(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The proxy's TLS context: TLS 1.2 or later, the service's certificate chain and key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# -- control routes ---------------------------------------------------------------------------


@web.middleware
async def _auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token and (request.path.startswith("/-/") or request.path == "/metrics"):
        got = request.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            return web.json_response(
                {"error": {"message": "bad or missing bearer token", "code": 401}}, status=401
            )
    return await handler(request)


async def put_replicas(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        views = parse_replicas(await request.json())
    except (ValueError, json.JSONDecodeError) as e:
        return web.json_response({"error": {"message": str(e), "code": 400}}, status=400)
    before = {v.id: v.state for v in state.replicas.views}
    state.replicas.replace(views)
    after = {v.id: v.state for v in views}
    if before != after:
        log.info(
            "replica set v%d: %s",
            state.replicas.version,
            ", ".join(f"{k}={v.value}" for k, v in after.items()) or "(empty)",
        )
    ack = ReplicaSetAck(version=state.replicas.version, replicas=state.replicas.reports())
    return web.json_response(ack.to_json())


async def get_replicas(request: web.Request) -> web.Response:
    state = request.app[STATE]
    report = ReplicasReport(
        version=state.replicas.version,
        replicas=state.replicas.reports(),
        ejections=tuple(state.ejections),
        waiting=state.waiting,
    )
    return web.json_response(report.to_json())


def _keys_ack(state: LBState) -> ApiKeyAck:
    k = state.api_keys
    return ApiKeyAck(version=k.version, count=k.count, header=k.header, forward=k.forward)


async def put_api_keys(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = ApiKeySet.from_json(await request.json())
        state.api_keys.replace(body.keys, header=body.header, forward=body.forward)
    except (ValueError, json.JSONDecodeError) as e:
        return web.json_response({"error": {"message": str(e), "code": 400}}, status=400)
    log.info("API keys v%d: %d key(s)", state.api_keys.version, state.api_keys.count)
    return web.json_response(_keys_ack(state).to_json())


async def get_api_keys(request: web.Request) -> web.Response:
    return web.json_response(_keys_ack(request.app[STATE]).to_json())


async def get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        window = int(request.query.get("window", "60"))
    except ValueError:
        return web.json_response(
            {"error": {"message": "window must be an integer", "code": 400}}, status=400
        )
    return web.json_response(state.stats_report(window, time.time()).to_json())


async def get_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_health(request: web.Request) -> web.Response:
    return web.json_response(
        {"ok": True, "ready_replicas": request.app[STATE].replicas.ready_count()}
    )


def _add_control_routes(app: web.Application, state: LBState, token: str) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(state))
    app[REGISTRY] = registry
    app[TOKEN] = token
    app.router.add_put("/-/replicas", put_replicas)
    app.router.add_get("/-/replicas", get_replicas)
    app.router.add_get("/-/stats", get_stats)
    app.router.add_put("/-/api-keys", put_api_keys)
    app.router.add_get("/-/api-keys", get_api_keys)
    app.router.add_get("/-/health", get_health)
    app.router.add_get("/metrics", get_metrics)


def make_control_app(state: LBState, *, token: str = "") -> web.Application:
    """The control API for ``state`` (serve it on 127.0.0.1)."""
    app = web.Application(middlewares=[_auth])
    app[STATE] = state
    _add_control_routes(app, state, token)
    return app


def make_app(state: LBState, *, control_on_proxy: bool = False, token: str = "") -> web.Application:
    """The proxy application. With ``control_on_proxy`` the control routes live under ``/-/``
    (and ``/metrics``) on the same port, guarded by ``token``; those paths are then not
    proxied."""
    cfg = state.config
    app = web.Application(
        client_max_size=cfg.buffer_limit + 1, middlewares=[_auth] if control_on_proxy else []
    )
    app[STATE] = state
    if control_on_proxy:
        _add_control_routes(app, state, token)

    async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
        async with running_proxy(state) as proxy:
            app[PROXY] = proxy
            yield

    async def proxied(request: web.Request) -> web.StreamResponse:
        return await request.app[PROXY].handle(request)

    app.router.add_route("*", "/{tail:.*}", proxied)
    app.cleanup_ctx.append(proxy_ctx)
    return app
