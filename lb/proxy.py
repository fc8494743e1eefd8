"""The proxy handler: pick a replica, forward the request, stream the answer back.

Retry rule: a request is re-sent, to a *different* replica, only when it cannot have reached
the first one — the connection was refused or timed out, or it was reset/closed before any
response byte arrived — and only when its body can be replayed (no body, or a body of at
most ``buffer_limit`` bytes that was read into memory; a larger streamed body is retried only
if the failure came before any of it was sent). Once response headers arrive, nothing is
retried: the client gets what the replica sent, and a replica that dies mid-stream gives the
client a truncated response (the connection is aborted, not cleanly ended). Retries also need
a token from the retry budget, and at most ``max_tries`` replicas are tried.

Responses with a known length up to 1 MiB (and not ``text/event-stream``) are read whole and
sent in one write; everything else — SSE, chunked, large — is streamed chunk by chunk as it
arrives, with no buffering beyond the socket's.

Hot path notes: no logging, no per-request allocation beyond the header list and the request
record; one pooled ``ClientSession`` (keep-alive, ``auto_decompress=False``); counters are plain
ints turned into Prometheus text only on scrape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from .policy import RequestInfo, pick
from .state import LBState

STATE: web.AppKey[LBState] = web.AppKey("spotd_lb_state", LBState)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("spotd_lb_session", aiohttp.ClientSession)

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy sets itself.
_DROP_REQ = frozenset({
    "connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authenticate", "proxy-authorization", "host", "content-length",
    "expect", "x-forwarded-for",
})
_DROP_RESP = frozenset({
    "connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authenticate", "proxy-authorization", "content-length",
})
_BUFFER_RESPONSE_MAX = 1 << 20
_NO_EXCLUDE: frozenset[str] = frozenset()
_PLAIN = RequestInfo()


class _StreamedBody:
    """A request body too large to buffer: the part already read, then the rest as it comes.

    ``started`` tells whether any of it was handed to a replica (then it cannot be replayed).
    """

    __slots__ = ("_content", "_prefix", "started")

    def __init__(self, prefix: list[bytes], content: aiohttp.StreamReader) -> None:
        self._prefix = prefix
        self._content = content
        self.started = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[bytes]:
        self.started = True
        for chunk in self._prefix:
            yield chunk
        self._prefix = []
        while True:
            chunk = await self._content.readany()
            if not chunk:
                return
            yield chunk


def _connection_tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def _request_headers(request: web.Request) -> list[tuple[str, str]]:
    out = []
    named: set[str] | None = None
    for k, v in request.headers.items():
        lk = k.lower()
        if lk in _DROP_REQ or lk.startswith("proxy-"):
            if lk == "connection":
                named = _connection_tokens(v)
            continue
        out.append((k, v))
    if named:
        out = [(k, v) for k, v in out if k.lower() not in named]
    prior = request.headers.get("X-Forwarded-For")
    remote = request.remote or ""
    out.append(("X-Forwarded-For", f"{prior}, {remote}" if prior else remote))
    return out


def _response_headers(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    out = []
    named: set[str] | None = None
    for k, v in resp.headers.items():
        lk = k.lower()
        if lk in _DROP_RESP or lk.startswith("proxy-"):
            if lk == "connection":
                named = _connection_tokens(v)
            continue
        out.append((k, v))
    if named:
        out = [(k, v) for k, v in out if k.lower() not in named]
    return out


def _json_error(status: int, message: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": {"message": message, "code": status}}, status=status,
                             headers=headers)


async def _read_body(request: web.Request, limit: int) -> tuple[Any, bool]:
    """(body, replayable). Bodies up to ``limit`` bytes are read into memory."""
    if not request.body_exists:
        return None, True
    cl = request.content_length
    content = request.content
    if cl is not None and cl <= limit:
        return await content.readexactly(cl) if cl else b"", True
    chunks: list[bytes] = []
    if cl is None:  # chunked: buffer while it stays small
        size = 0
        while size <= limit:
            chunk = await content.readany()
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
    return _StreamedBody(chunks, content), False


async def _wait_for_replica(st: LBState, info: RequestInfo) -> str | None:
    """Hold a request while no replica is eligible (scale-to-zero, all ejected).

    Returns a replica id, or None when the queue is disabled or full or the wait timed out.
    """
    cfg = st.config
    if cfg.queue_size <= 0 or st.waiting >= cfg.queue_size:
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.queue_timeout
    st.waiting += 1
    st.metrics.queued += 1
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await st.replicas.wait_changed(remaining)
            reps = st.replicas
            rid = pick(reps.views, reps.stats, info, policy=cfg.policy, state=st.policy_state)
            if rid is not None:
                return rid
    finally:
        st.waiting -= 1


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    st = app[STATE]
    m = st.metrics
    t0 = time.monotonic()
    m.in_flight += 1
    code = 499  # until we know better: the client went away
    try:
        resp = await _proxy(request, st, app[SESSION])
        code = resp.status
        return resp
    except asyncio.CancelledError:
        raise
    except Exception:
        code = 500
        raise
    finally:
        m.in_flight -= 1
        now = time.time()
        m.observe(code, time.monotonic() - t0)
        st.window.record(now, code >= 500)


async def _proxy(request: web.Request, st: LBState, session: aiohttp.ClientSession
                 ) -> web.StreamResponse:
    cfg = st.config
    reps = st.replicas
    st.budget.deposit()
    body, replayable = await _read_body(request, cfg.buffer_limit)
    headers = _request_headers(request)
    method = request.method
    raw_path = request.raw_path
    key = request.headers.get(cfg.affinity_header) if cfg.affinity_header else None
    info = _PLAIN if key is None else RequestInfo(session_key=key)
    exclude = _NO_EXCLUDE
    last_error = ""
    tries = 0
    while True:
        rid = pick(reps.views, reps.stats, info, policy=cfg.policy, state=st.policy_state)
        if rid is None:
            rid = await _wait_for_replica(st, info)
            if rid is None:
                st.metrics.rejected += 1
                msg = "no replica is ready"
                if last_error:
                    msg += f" (last error: {last_error})"
                return _json_error(503, msg, retry_after=cfg.retry_after)
        view = reps.by_id[rid]
        rstats = reps.stats[rid]
        tries += 1
        rstats.in_flight += 1
        rstats.requests += 1
        try:
            try:
                upstream = await session.request(
                    method, URL(view.url + raw_path, encoded=True), headers=headers,
                    data=body, allow_redirects=False,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                    aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                # refused, timed out connecting, or reset/closed before any response byte
                err: Exception = e
            except aiohttp.ServerTimeoutError:
                return _json_error(504, f"replica {rid} did not answer in time")
            except aiohttp.ClientError as e:
                return _json_error(502, f"replica {rid}: {type(e).__name__}: {e}")
            else:
                return await _relay(request, upstream)
        finally:
            rstats.in_flight -= 1

        # -- the attempt failed before any response byte ------------------------------------
        rstats.failures += 1
        last_error = f"{type(err).__name__}: {err}"
        st.eject(rid, view.url, last_error)
        if not (replayable or not body.started) or tries >= cfg.max_tries:
            return _json_error(502, f"replica {rid} failed: {last_error}")
        if not st.budget.withdraw():
            return _json_error(502, f"replica {rid} failed and the retry budget is spent: "
                                    f"{last_error}")
        st.metrics.retries += 1
        exclude = exclude | {rid}
        info = RequestInfo(session_key=key, exclude=exclude)


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Send the replica's answer to the client (buffered when small, else streamed)."""
    try:
        status = upstream.status
        headers = _response_headers(upstream)
        clen = upstream.content_length
        if request.method == "HEAD" or status in (204, 304) or (
            clen is not None and clen <= _BUFFER_RESPONSE_MAX
            and not upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        ):
            try:
                data = await upstream.read()
            except (TimeoutError, aiohttp.ClientError) as e:
                return _json_error(502, f"replica failed while sending its answer: "
                                        f"{type(e).__name__}: {e}")
            if request.method == "HEAD":
                resp = web.Response(status=status, reason=upstream.reason, headers=headers)
                if clen is not None:
                    resp.headers["Content-Length"] = str(clen)
                return resp
            return web.Response(status=status, reason=upstream.reason, headers=headers,
                                body=data)

        sresp = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
        if clen is not None:
            sresp.content_length = clen
        content = upstream.content
        try:
            await sresp.prepare(request)
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                await sresp.write(chunk)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            # The replica died mid-answer. Headers are out: abort the client connection so
            # the client sees a truncated response rather than a clean (and wrong) end.
            tr = request.transport
            if tr is not None:
                tr.abort()
            return sresp
        except ConnectionError:
            # The client went away mid-stream; closing the upstream connection tells the
            # replica (vLLM aborts the generation).
            return sresp
        return sresp
    finally:
        upstream.release()
