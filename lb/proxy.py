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
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from yarl import URL

from .http1 import (
    DROP_RESP,
    Head,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamTimeout,
    host_port,
)
from .policy import RequestInfo, pick
from .pool import UpstreamPool
from .state import LBState
from .upstream import BodySink, UpstreamConn


class Proxy:
    """One LB's data plane: its state, the pool of replica connections (our HTTP/1.1
    client), and the aiohttp session for https replicas. ``handle`` is the request handler
    (``app.serve_proxy`` runs it on aiohttp's low-level server)."""

    __slots__ = ("pool", "session", "state")

    def __init__(self, state: LBState, pool: UpstreamPool, session: aiohttp.ClientSession) -> None:
        self.state = state
        self.pool = pool
        self.session = session

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        st = self.state
        m = st.metrics
        t0 = time.monotonic()
        m.in_flight += 1
        code = 499  # until we know better: the client went away
        try:
            resp = await _proxy(request, st, self.pool, self.session)
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


# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy sets itself.
_DROP_REQ = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "host",
        "content-length",
        "expect",
        "x-forwarded-for",
    }
)
_DROP_REQ_B = frozenset(h.encode() for h in _DROP_REQ)
_BUFFER_RESPONSE_MAX = 1 << 20
_PAUSE_ABOVE = 256 * 1024  # client write buffer above this: stop reading the replica
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# replica URL -> (host, port, b"Host: ...\r\n"), or None for the aiohttp path (https)
_ADDRS: dict[str, tuple[str, int, bytes] | None] = {}
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


def _request_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
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


def _request_head(request: web.BaseRequest, host_line: bytes, body: Any) -> bytes:
    """The request line and headers for the replica, from the client's raw header bytes:
    hop-by-hop ones (and those ``Connection`` names) dropped, ``Host`` the replica's,
    ``X-Forwarded-For`` extended with the client's address, the body's framing set."""
    kept: list[tuple[bytes, bytes]] = []
    named: set[bytes] | None = None
    prior: bytes | None = None
    for k, v in request.raw_headers:
        lk = k.lower()
        if lk in _DROP_REQ_B or lk.startswith(b"proxy-"):
            if lk == b"connection":
                named = {t.strip().lower() for t in v.split(b",") if t.strip()}
            elif lk == b"x-forwarded-for" and prior is None:
                prior = v
            continue
        kept.append((k, v))
    if named:
        kept = [(k, v) for k, v in kept if k.lower() not in named]
    parts = [
        request.method.encode("ascii"),
        b" ",
        request.raw_path.encode("utf-8", "surrogateescape"),
        b" HTTP/1.1\r\n",
        host_line,
    ]
    for k, v in kept:
        parts += (k, b": ", v, b"\r\n")
    remote = (request.remote or "").encode("utf-8", "surrogateescape")
    parts += (b"X-Forwarded-For: ", prior + b", " + remote if prior else remote, b"\r\n")
    if body is None:
        if request.method in _BODY_METHODS:
            parts.append(b"Content-Length: 0\r\n")
    elif isinstance(body, bytes):
        parts += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
    else:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _replica_addr(url: str) -> tuple[str, int, bytes] | None:
    try:
        return _ADDRS[url]
    except KeyError:
        pass
    try:
        addr: tuple[str, int, bytes] | None = host_port(url)
    except ValueError:
        addr = None  # https: the aiohttp session handles it
    if len(_ADDRS) > 4096:
        _ADDRS.clear()
    _ADDRS[url] = addr
    return addr


def _response_headers(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    out = []
    named: set[str] | None = None
    for k, v in resp.headers.items():
        lk = k.lower()
        if lk in DROP_RESP or lk.startswith("proxy-"):
            if lk == "connection":
                named = _connection_tokens(v)
            continue
        out.append((k, v))
    if named:
        out = [(k, v) for k, v in out if k.lower() not in named]
    return out


def _json_error(status: int, message: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(
        {"error": {"message": message, "code": status}}, status=status, headers=headers
    )


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
    request: web.BaseRequest, st: LBState, pool: UpstreamPool, session: aiohttp.ClientSession
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
        addr = _replica_addr(view.url)
        conn: UpstreamConn | None = None
        try:
            if addr is not None:  # the fast path: our own HTTP/1.1 client
                try:
                    if head_bytes is None or head_for is not addr:
                        head_bytes = _request_head(request, addr[2], body)
                        head_for = addr
                    conn = await pool.acquire(addr[0], addr[1])
                    uhead = await conn.request(head_bytes, body, method == "HEAD")
                except (UpstreamConnectError, UpstreamDisconnected) as e:
                    # refused, timed out connecting, or reset/closed before any response byte
                    err: Exception = e
                except UpstreamTimeout:
                    return _json_error(504, f"replica {rid} did not answer in time")
                except UpstreamError as e:
                    return _json_error(502, f"replica {rid}: {type(e).__name__}: {e}")
                else:
                    return await _relay_fast(request, conn, uhead)
            else:
                if headers is None:
                    headers = _request_headers(request)
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
                    return _json_error(504, f"replica {rid} did not answer in time")
                except aiohttp.ClientError as e:
                    return _json_error(502, f"replica {rid}: {type(e).__name__}: {e}")
                else:
                    return await _relay(request, upstream)
        finally:
            if conn is not None:
                pool.release(conn)
            rstats.in_flight -= 1

        # -- the attempt failed before any response byte ------------------------------------
        rstats.failures += 1
        last_error = f"{type(err).__name__}: {err}"
        st.eject(rid, view.url, last_error)
        if not (replayable or not body.started) or tries >= cfg.max_tries:
            return _json_error(502, f"replica {rid} failed: {last_error}")
        if not st.budget.withdraw():
            return _json_error(
                502, f"replica {rid} failed and the retry budget is spent: {last_error}"
            )
        st.metrics.retries += 1
        exclude = exclude | {rid}
        info = RequestInfo(session_key=key, exclude=exclude)


class _RelayResponse(web.StreamResponse):
    """A streamed answer whose bytes the relay writes to the client's transport itself.

    aiohttp still decides the head at ``prepare()`` (framing, keep-alive, ``Date``), but
    keeps it buffered instead of writing it at once, so the relay can send it with the first
    body bytes; see ``_take_head``."""

    _send_headers_immediately = False  # aiohttp >= 3.12: the head waits for the first write


def _take_head(writer: StreamWriter) -> bytes | None:
    """The response head aiohttp buffered at ``prepare()``, taken over by the relay (aiohttp
    will not write it again); None where this aiohttp has written it already. The only place
    (with ``_mark_eof``) that reads aiohttp's writer internals: a version without them gets
    one more write per answer, not a wrong one (tests/lb/test_proxying.py checks which)."""
    buf = getattr(writer, "_headers_buf", None)
    if isinstance(buf, bytes) and buf and getattr(writer, "_headers_written", True) is False:
        writer._headers_buf = None
        writer._headers_written = True
        return buf
    send = getattr(writer, "send_headers", None)  # aiohttp < 3.12 wrote the head at prepare()
    if send is not None:
        send()
    return None


def _mark_eof(writer: StreamWriter) -> None:
    """Tell aiohttp the relay wrote the body's end itself (``write_eof`` then writes nothing)."""
    writer._eof = True


class _ClientSink(BodySink):
    """Writes a streamed answer's payload to the client's transport from inside the replica
    connection's ``data_received`` (chunk-framed when the response is chunked); wakes the
    handler only at the end, on an error, or when the client reads too slowly.

    Writes are coalesced: the response head goes out with the first payload bytes and the
    chunked terminator with the last ones, so a short SSE answer that arrives in one read
    from the replica leaves in one write, as nginx sends it. When no payload is at hand the
    head is not held back: ``flush_head`` sends it on the next loop iteration."""

    __slots__ = (
        "chunked",
        "ended",
        "exc",
        "finished",
        "head",
        "paused",
        "terminator",
        "tr",
        "waiter",
    )

    def __init__(
        self, tr: asyncio.Transport, chunked: bool, head: bytes | None, terminator: bytes
    ) -> None:
        self.tr = tr
        self.chunked = chunked  # frame the payload ourselves
        self.head = head  # the response head, until it is sent
        self.terminator = terminator  # b"0\r\n\r\n" when we end the chunked body, else b""
        self.ended = False
        self.waiter: asyncio.Future[None] | None = None
        self.finished = False
        self.exc: BaseException | None = None
        self.paused = False

    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    def flush_head(self) -> None:
        head = self.head
        if head is not None and self.exc is None and not self.tr.is_closing():
            self.head = None
            self.tr.write(head)

    def data(self, pieces: list[bytes], end: bool) -> bool:
        tr = self.tr
        if tr.is_closing():  # the client went away
            if self.exc is None:
                self.exc = ConnectionResetError("client closed the connection")
            self._wake()
            return True
        out: list[bytes] = []
        if self.head is not None:
            out.append(self.head)
            self.head = None
        if pieces:
            data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if self.chunked:
                out += (b"%x\r\n" % len(data), data, b"\r\n")
            else:
                out.append(data)
        if end:
            self.ended = True
            if self.terminator:
                out.append(self.terminator)
        if len(out) == 1:
            tr.write(out[0])
        elif out:
            tr.write(b"".join(out))
        if not end and tr.get_write_buffer_size() > _PAUSE_ABOVE:
            self.paused = True
            self._wake()
            return True
        return False

    def done(self) -> None:
        if not self.ended and self.exc is None:
            self.data([], True)
        self.finished = True
        self._wake()

    def error(self, exc: BaseException) -> None:
        if self.exc is None:
            self.exc = exc
        self._wake()


async def _relay_fast(
    request: web.BaseRequest, conn: UpstreamConn, head: Head
) -> web.StreamResponse:
    """Send the replica's answer to the client: small ones read whole and sent in one write;
    streamed ones relayed from ``data_received`` (see ``_ClientSink``)."""
    status = head.status
    headers = head.headers  # hop-by-hop ones already left out
    clen = head.length
    method = request.method
    if (
        method == "HEAD"
        or status in (204, 304)
        or (
            clen is not None
            and clen <= _BUFFER_RESPONSE_MAX
            and not head.content_type.startswith("text/event-stream")
        )
    ):
        try:
            data = await conn.read_body()
        except (UpstreamError, ConnectionError) as e:
            return _json_error(
                502, f"replica failed while sending its answer: {type(e).__name__}: {e}"
            )
        if method == "HEAD":
            resp = web.Response(status=status, reason=head.reason, headers=headers)
            if clen is not None:
                resp.headers["Content-Length"] = str(clen)
            return resp
        return web.Response(status=status, reason=head.reason, headers=headers, body=data)

    sresp = _RelayResponse(status=status, reason=head.reason, headers=headers)
    if clen is not None:
        sresp.content_length = clen
    await sresp.prepare(request)
    writer = sresp._payload_writer  # aiohttp's StreamWriter: we need its ``chunked`` decision
    tr = request.transport
    if not isinstance(writer, StreamWriter) or tr is None or tr.is_closing():
        conn.abort()  # client gone (or an aiohttp we cannot frame for): tell the replica
        if tr is not None:
            tr.abort()
        return sresp
    rhead = _take_head(writer)
    chunked = bool(writer.chunked)
    # we end the body ourselves when aiohttp let us take its head (it then writes nothing more)
    own_end = rhead is not None
    # chunked in and out: the replica's chunk framing goes through as it is
    sink = _ClientSink(
        tr, chunked and not head.chunked, rhead, b"0\r\n\r\n" if chunked and own_end else b""
    )
    loop = conn.loop  # (asyncio.get_running_loop() costs a getpid() system call)
    conn.attach(sink, chunked_out=chunked)
    if sink.head is not None and not sink.finished:
        loop.call_soon(sink.flush_head)  # no payload at hand: the head must not wait for one
    while not sink.finished and sink.exc is None:
        if sink.paused:
            sink.paused = False
            try:
                await writer.drain()
            except ConnectionError:
                conn.abort()
                return sresp
            conn.resume()
            continue
        sink.waiter = loop.create_future()
        await sink.waiter
    if sink.exc is not None:
        conn.abort()
        if isinstance(sink.exc, UpstreamError | ConnectionResetError) and not tr.is_closing():
            # The replica died mid-answer (its head may be out, or held with nothing after
            # it): abort the client connection so the client sees a truncated response
            # rather than a clean (and wrong) end.
            tr.abort()
        return sresp
    if own_end:
        _mark_eof(writer)
    try:
        await sresp.write_eof()
    except ConnectionError:
        pass
    return sresp


async def _relay(request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Send the replica's answer to the client (buffered when small, else streamed)."""
    try:
        status = upstream.status
        headers = _response_headers(upstream)
        clen = upstream.content_length
        if (
            request.method == "HEAD"
            or status in (204, 304)
            or (
                clen is not None
                and clen <= _BUFFER_RESPONSE_MAX
                and not upstream.headers.get("Content-Type", "").startswith("text/event-stream")
            )
        ):
            try:
                data = await upstream.read()
            except (TimeoutError, aiohttp.ClientError) as e:
                return _json_error(
                    502, f"replica failed while sending its answer: {type(e).__name__}: {e}"
                )
            if request.method == "HEAD":
                resp = web.Response(status=status, reason=upstream.reason, headers=headers)
                if clen is not None:
                    resp.headers["Content-Length"] = str(clen)
                return resp
            return web.Response(status=status, reason=upstream.reason, headers=headers, body=data)

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
