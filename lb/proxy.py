"""The proxy handler: pick a replica, forward the request, stream the answer back.

Retry rule: a request is re-sent, to a *different* replica, only when it cannot have reached
the first one — the connection was refused or timed out, or it was reset/closed before any
response byte arrived — and only when its body can be replayed (no body, or a body of at
most ``buffer_limit`` bytes that was read into memory; a larger streamed body is retried only
if the failure came before any of it was sent). Once response headers arrive, nothing is
retried: the client gets what the replica sent, and a replica that dies mid-stream gives the
client a truncated response (the connection is aborted, not cleanly ended). Retries also need
a token from the retry budget, and at most ``max_tries`` replicas are tried.

LLM requests are the exception (``continue_streams``, on by default): an OpenAI stream
(``/v1/completions``, ``/v1/chat/completions``) whose replica fails mid-answer, or whose
preemption notice runs out, is continued on another replica and spliced into the client's
stream (``llmstream.py``); a non-streamed one still waiting for its answer when the notice
runs out is re-sent elsewhere. ``prefix_aware`` routing reads the prompt from the (buffered)
JSON body (``openai.prefix_key``).

Outstanding tokens (``ReplicaStats.tokens``, what ``least_tokens`` routes by) are kept
beside ``in_flight``, with the same +/- around each attempt: an LLM request whose body was
read costs ``openai.estimate_tokens``; any other request (another path, a body too large to
buffer or not JSON) costs 1, so on a service without LLM traffic ``least_tokens`` is
``least_load``. A stream gives its tokens back as they arrive and takes what is left with it
when it moves (``llmstream.StreamJob``).

Responses with a known length up to 1 MiB (and not ``text/event-stream``) are read whole and
sent in one write; everything else — SSE, chunked, large — is streamed chunk by chunk as it
arrives, with no buffering beyond the socket's.

Hot path notes: no logging; http:// replicas go through the LB's own HTTP/1.1 client
(``pool.py`` and ``upstream.py``: a keep-alive pool of protocol connections, ``http1.py``
reading what they receive; the request head built once as bytes from the client's raw
headers, streamed answers relayed from the replica connection's ``data_received`` to the
client's transport without waking the handler per chunk); https:// replicas through the one
pooled ``ClientSession`` (``auto_decompress=False``). Counters are plain ints turned into
Prometheus text only on scrape.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from .headers import request_head, request_headers
from .http1 import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    host_port,
)
from .llmstream import StreamJob, head_before_notice, relay_stream
from .openai import (
    LlmRequest,
    continuable,
    estimate_tokens,
    llm_kind,
    parse_llm_request,
    prefix_key,
    upstream_body,
)
from .policy import Policy, RequestInfo, pick
from .pool import UpstreamPool
from .relay import TRUNCATED, json_error, relay, relay_fast
from .state import LBState
from .upstream import UpstreamConn


class Proxy:
    """One LB's data plane: its state, the pool of replica connections (our HTTP/1.1
    client), and the aiohttp session for https replicas. ``handle`` is the request handler
    (``app.serve_proxy`` runs it on aiohttp's low-level server)."""

    __slots__ = ("addrs", "pool", "session", "state")

    def __init__(self, state: LBState, pool: UpstreamPool, session: aiohttp.ClientSession) -> None:
        self.state = state
        self.pool = pool
        self.session = session
        # replica URL -> (host, port, b"Host: ...\r\n"), or None for the aiohttp path (https)
        self.addrs: dict[str, tuple[str, int, bytes] | None] = {}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        st = self.state
        m = st.metrics
        t0 = time.monotonic()
        m.in_flight += 1
        st.window.arrived(time.time())  # demand counts when it arrives, not when answered
        code = 499  # until we know better: the client went away
        try:
            keys = st.api_keys
            if keys.enabled and not keys.allows(request.headers):
                m.unauthorized += 1
                code = 401
                return _unauthorized(keys.header)
            resp = await _proxy(request, st, self.pool, self.session, self.addrs)
            code = 502 if resp.get(TRUNCATED) else resp.status
            return resp
        except asyncio.CancelledError:
            raise
        except Exception:
            code = 500
            raise
        finally:
            m.in_flight -= 1
            m.observe(code, time.monotonic() - t0)
            if code >= 500:
                st.window.failed(time.time())


def _unauthorized(header: str) -> web.Response:
    how = "Authorization: Bearer <key>" if header.lower() == "authorization" else header
    resp = json_error(401, f"missing or invalid API key (send {how})")
    if header.lower() == "authorization":
        resp.headers["WWW-Authenticate"] = 'Bearer realm="spotd"'
    return resp


_NO_EXCLUDE: frozenset[str] = frozenset()
_READS_LLM_BODY = frozenset({Policy.PREFIX_AWARE, Policy.LEAST_TOKENS})
_PLAIN = RequestInfo()
_ADDRS_MAX = 4096  # replica URLs remembered per LB; more (a churning fleet): start over


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


def _replica_addr(
    addrs: dict[str, tuple[str, int, bytes] | None], url: str
) -> tuple[str, int, bytes] | None:
    try:
        return addrs[url]
    except KeyError:
        pass
    try:
        addr: tuple[str, int, bytes] | None = host_port(url)
    except ValueError:
        addr = None  # https: the aiohttp session handles it
    if len(addrs) > _ADDRS_MAX:
        addrs.clear()
    addrs[url] = addr
    return addr


async def _read_body(request: web.BaseRequest, limit: int) -> tuple[Any, bool]:
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


async def _proxy(
    request: web.BaseRequest,
    st: LBState,
    pool: UpstreamPool,
    session: aiohttp.ClientSession,
    addrs: dict[str, tuple[str, int, bytes] | None],
) -> web.StreamResponse:
    cfg = st.config
    reps = st.replicas
    st.budget.deposit()
    body, replayable = await _read_body(request, cfg.buffer_limit)
    head_bytes: bytes | None = None
    head_for: tuple[str, int, bytes] | None = None
    headers: Any = None  # for the aiohttp path (https replicas), built when needed
    method = request.method
    raw_path = request.raw_path
    keys = st.api_keys  # the key's header is left out unless forwarded (drop is then None)
    drop, drop_b = keys.drop, keys.drop_b
    key = request.headers.get(cfg.affinity_header) if cfg.affinity_header else None
    llm: LlmRequest | None = None  # an LLM request whose stream may move (or be re-sent)
    prefix: str | None = None
    cost = 1  # outstanding tokens this request adds to its replica (module docstring)
    if (
        method == "POST"
        and isinstance(body, bytes)
        and (cfg.continue_streams or cfg.policy in _READS_LLM_BODY)
        and llm_kind(raw_path) is not None
    ):
        parsed = parse_llm_request(raw_path, body)
        if parsed is not None:
            cost = estimate_tokens(parsed)
            if cfg.policy is Policy.PREFIX_AWARE:
                prefix = prefix_key(parsed, cfg.prefix_chars)
            if cfg.continue_streams and (not parsed.stream or continuable(parsed)):
                llm = parsed
                if parsed.stream and not parsed.wants_ids:  # token ids: exact continuations
                    body = json.dumps(upstream_body(parsed)).encode()
    if key is None and prefix is None:
        info = _PLAIN
    else:
        info = RequestInfo(session_key=key, prefix_key=prefix)
    exclude = _NO_EXCLUDE
    last_error = ""
    tries = 0
    noticed = False
    while True:
        rid = pick(reps.views, reps.stats, info, policy=cfg.policy, state=st.policy_state)
        if rid is None:
            rid = await _wait_for_replica(st, info)
            if rid is None:
                st.metrics.rejected += 1
                msg = "no replica is ready"
                if last_error:
                    msg += f" (last error: {last_error})"
                return json_error(503, msg, retry_after=cfg.retry_after)
        view = reps.by_id[rid]
        rstats = reps.stats[rid]
        tries += 1
        rstats.in_flight += 1
        rstats.tokens += cost
        charged = cost  # what the finally below takes off this replica
        rstats.requests += 1
        addr = _replica_addr(addrs, view.url)
        conn: UpstreamConn | None = None
        try:
            if addr is not None:  # the fast path: our own HTTP/1.1 client
                try:
                    if head_bytes is None or head_for is not addr:
                        head_bytes = request_head(request, addr[2], body, drop_b)
                        head_for = addr
                    conn = await pool.acquire(addr[0], addr[1])
                    if llm is not None and not llm.stream:
                        got = await head_before_notice(conn, head_bytes, body, st, rid)
                        if got is None:  # the replica's notice ran out before its answer
                            noticed = True
                            continue  # (the finally below counts it out first)
                        uhead = got
                    else:
                        uhead = await conn.request(head_bytes, body, method == "HEAD")
                except (UpstreamConnectError, UpstreamDisconnected) as e:
                    # refused, timed out connecting, or reset/closed before any response byte
                    err: Exception = e
                except UpstreamTimeout:
                    return json_error(504, f"replica {rid} did not answer in time")
                except UpstreamError as e:
                    return json_error(502, f"replica {rid}: {type(e).__name__}: {e}")
                else:
                    if (
                        llm is not None
                        and llm.stream
                        and uhead.status == 200
                        and uhead.content_type.startswith("text/event-stream")
                    ):
                        job = StreamJob(
                            request, llm, rid, rstats, cost, prefix, drop_b, set(exclude)
                        )
                        try:
                            return await relay_stream(request, conn, uhead, job, st, pool)
                        finally:
                            if job.left_first:  # counted out when it moved
                                rstats.in_flight += 1
                                charged = 0
                            else:  # what it gave back as tokens arrived is out already
                                charged = job.tokens
                    return await relay_fast(request, conn, uhead)
            else:
                if headers is None:
                    headers = request_headers(request, drop)
                try:
                    upstream = await session.request(
                        method,
                        URL(view.url + raw_path, encoded=True),
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                    )
                except (
                    aiohttp.ClientConnectorError,
                    aiohttp.ConnectionTimeoutError,
                    aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError,
                ) as e:
                    err = e
                except aiohttp.ServerTimeoutError:
                    return json_error(504, f"replica {rid} did not answer in time")
                except aiohttp.ClientError as e:
                    return json_error(502, f"replica {rid}: {type(e).__name__}: {e}")
                else:
                    return await relay(request, upstream)
        finally:
            if conn is not None:
                pool.release(conn)
            rstats.in_flight -= 1
            rstats.tokens -= charged
            if noticed:  # re-sent elsewhere: no ejection, no retry budget
                noticed = False
                st.metrics.notice_retries += 1
                exclude = exclude | {rid}
                info = RequestInfo(session_key=key, prefix_key=prefix, exclude=exclude)

        # -- the attempt failed before any response byte ------------------------------------
        rstats.failures += 1
        last_error = f"{type(err).__name__}: {err}"
        st.eject(rid, view.url, last_error)
        if not (replayable or not body.started) or tries >= cfg.max_tries:
            return json_error(502, f"replica {rid} failed: {last_error}")
        if not st.budget.withdraw():
            return json_error(
                502, f"replica {rid} failed and the retry budget is spent: {last_error}"
            )
        st.metrics.retries += 1
        exclude = exclude | {rid}
        info = RequestInfo(session_key=key, prefix_key=prefix, exclude=exclude)
