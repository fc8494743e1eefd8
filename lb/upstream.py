"""A minimal HTTP/1.1 client for the proxy's hot path: a keep-alive pool of ``asyncio.Protocol``
connections to the replicas, and a body relay that runs inside ``data_received``.

Why not ``aiohttp.ClientSession`` here: under load most of the LB's time went to the client's
per-request machinery (request object, header multidicts, tracing, timers) and, for streamed
answers, to one parser callback + ``StreamReader`` feed + task wake-up + ``StreamResponse.write``
per SSE event. Here a streamed answer is relayed from the upstream connection's
``data_received`` straight to the client's transport — one ``transport.write`` per upstream
read, no task wake-up — which is what nginx does with ``proxy_buffering off``. (The aiohttp
session still does the probes and the ejection reports, where cost does not matter.)

What it does: ``Host`` from the replica URL, request head built from the client's raw header
bytes (the caller filters hop-by-hop ones), bodies as ``bytes`` (``Content-Length``) or an
async iterator (``Transfer-Encoding: chunked``, flow-controlled); answers framed by
``Content-Length``, ``chunked`` (de-chunked: the payload is re-framed by the server side) or
connection close; 1xx interim answers skipped; ``HEAD``/204/304 have no body. Connections are
reused when the answer was complete, the replica did not say ``Connection: close`` and nothing
extra arrived; idle ones expire after ``keepalive_timeout`` or when the replica closes them.

Errors, for the retry rule (``proxy.py``):

- ``UpstreamConnectError``: refused, unreachable or timed out connecting — nothing was sent;
- ``UpstreamDisconnected``: the connection closed or reset before any response byte;
- ``UpstreamTimeout``: no byte for ``read_timeout`` seconds (before or after the head);
- ``UpstreamProtocolError``: the replica sent something that is not HTTP/1.x.

Once the head has arrived, a failure reaches the body consumer (``BodySink.error`` or the
``read_body`` exception), never the retry logic.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable
from typing import Any

_HEAD_MAX = 64 * 1024  # bytes of status line + headers
_CHUNK_LINE_MAX = 4096
_PAUSE_ABOVE = 256 * 1024  # client write buffer above this: stop reading the replica

# Hop-by-hop response headers (RFC 9110 §7.6.1) and the ones the server side sets itself;
# ``Head.headers`` leaves them (and ``proxy-*``, and those ``Connection`` names) out.
DROP_RESP = frozenset(
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
        "content-length",
    }
)
_SPECIAL_RESP = DROP_RESP | {"content-type"}

# framing of an answer's body
_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3
# chunked decoder states
_C_SIZE, _C_DATA, _C_CRLF, _C_TRAILER = 0, 1, 2, 3


class UpstreamError(Exception):
    pass


class UpstreamConnectError(UpstreamError):
    """Could not connect (refused, unreachable, timed out): the request reached nobody."""


class UpstreamDisconnected(UpstreamError):
    """Closed or reset before any response byte."""


class UpstreamTimeout(UpstreamError):
    """No byte from the replica for ``read_timeout`` seconds."""


class UpstreamProtocolError(UpstreamError):
    """The replica's answer is not valid HTTP/1.x."""


class Head:
    __slots__ = ("chunked", "content_type", "headers", "length", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        length: int | None,
        chunked: bool,
        content_type: str,
    ) -> None:
        self.status = status
        self.reason = reason
        # end-to-end ones only; decoded like aiohttp (utf-8, surrogateescape)
        self.headers = headers
        self.length = length  # Content-Length, when given and not chunked
        self.chunked = chunked
        self.content_type = content_type


class BodySink:
    """Receives an answer's body from inside ``data_received`` (see ``UpstreamConn.attach``).

    ``data(pieces, end)`` gets the payload of one upstream read (one or more ``bytes``;
    ``end``: the answer ends with them, so a sink can send its end marker in the same write)
    and returns True to ask the connection to stop reading until ``resume()``
    (backpressure). ``done()`` follows the last ``data`` call (which may not have said
    ``end``: an answer framed by the connection's close ends without more data).
    """

    def data(self, pieces: list[bytes], end: bool) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def done(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def error(self, exc: BaseException) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to one replica; one request at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset_request()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def _reset_request(self) -> None:
        self._head_fut: asyncio.Future[Head] | None = None
        self._hbuf = b""
        self._framing = _NONE
        self._left = 0  # _LENGTH: payload bytes still to come; _C_DATA/_C_CRLF: bytes left
        self._cstate = _C_SIZE
        self._pending = b""
        self._pieces: list[bytes] = []  # payload received before a sink was attached
        self._raw: list[bytes] = []  # chunked bytes received before a sink was attached
        self._verbatim = False  # chunked in, chunked out: pass the framing through
        self._sink: BodySink | None = None
        self._body_done = False
        self._body_exc: BaseException | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._got_bytes = False
        self._head_req = False
        self.reusable = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        self._cancel_timer()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionResetError("replica closed the connection"))
        if not self._in_request:
            return
        if self._head_fut is not None and not self._head_fut.done():
            if self._got_bytes:
                self._head_fut.set_exception(
                    UpstreamProtocolError("connection closed in the middle of the response head")
                )
            else:
                self._head_fut.set_exception(
                    UpstreamDisconnected(
                        f"replica closed the connection before answering"
                        f"{': ' + str(exc) if exc else ''}"
                    )
                )
            return
        if not self._body_done:
            if self._framing == _CLOSE and exc is None:
                self._finish_body()
            else:
                self._fail_body(
                    ConnectionResetError(
                        f"replica closed the connection mid-answer{': ' + str(exc) if exc else ''}"
                    )
                )

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        w = self._drain_waiter
        if w is not None:
            self._drain_waiter = None
            if not w.done():
                w.set_result(None)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("replica closed the connection")
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def data_received(self, data: bytes) -> None:
        if not self._in_request:  # bytes nobody asked for: never reuse this connection
            self.reusable = False
            assert self.transport is not None
            self.transport.close()
            return
        self._got_bytes = True
        self._last_read = self.loop.time()
        if self._head_fut is not None:
            self._hbuf += data
            try:
                rest = self._parse_head()
            except UpstreamProtocolError as e:
                self._in_request = False
                fut = self._head_fut
                self._head_fut = None
                assert self.transport is not None
                self.transport.abort()
                if fut is not None and not fut.done():
                    fut.set_exception(e)
                return
            if self._head_fut is not None:  # head incomplete
                return
            if not rest or self._body_done:
                return
            data = rest
        self._feed_body(data)

    # -- the head ---------------------------------------------------------------------
    def _parse_head(self) -> bytes | None:
        while True:
            buf = self._hbuf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _HEAD_MAX:
                    raise UpstreamProtocolError("response head too large")
                return None
            lines = buf[:end].split(b"\r\n")
            rest = buf[end + 4 :]
            status_line = lines[0]
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
                raise UpstreamProtocolError(f"bad status line {status_line[:80]!r}")
            try:
                status = int(parts[1])
            except ValueError:
                raise UpstreamProtocolError(f"bad status line {status_line[:80]!r}") from None
            if 100 <= status < 200 and status != 101:  # interim answer (100, 103): skip it
                self._hbuf = rest
                continue
            http10 = parts[0] == b"HTTP/1.0"
            reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
            headers: list[tuple[str, str]] = []
            length: int | None = None
            chunked = False
            close = http10
            ctype = ""
            named: set[str] | None = None
            text = buf[len(status_line) + 2 : end].decode("utf-8", "surrogateescape")
            for line in text.split("\r\n") if text else ():
                name, colon, value = line.partition(":")
                name = name.strip()
                if not colon or not name:
                    raise UpstreamProtocolError(f"bad header line {line[:80]!r}")
                value = value.strip()
                lname = name.lower()
                if lname in _SPECIAL_RESP:
                    if lname == "content-type":
                        ctype = value
                    elif lname == "content-length":
                        try:
                            length = int(value)
                        except ValueError:
                            raise UpstreamProtocolError("bad Content-Length") from None
                    elif lname == "transfer-encoding":
                        if "chunked" in value.lower():
                            chunked = True
                    elif lname == "connection":
                        v = value.lower()
                        if "close" in v:
                            close = True
                        elif http10 and "keep-alive" in v:
                            close = False
                        named = {t.strip() for t in v.split(",") if t.strip()}
                    if lname in DROP_RESP:
                        continue
                elif lname.startswith("proxy-"):
                    continue
                headers.append((name, value))
            if named:
                headers = [(k, v) for k, v in headers if k.lower() not in named]
            if status == 101:
                raise UpstreamProtocolError("protocol upgrades are not proxied")
            if chunked:
                length = None
            self._hbuf = b""
            if self._head_req or status in (204, 304):
                self._framing = _NONE
            elif chunked:
                self._framing = _CHUNKED
                self._cstate = _C_SIZE
            elif length is not None:
                self._framing = _LENGTH
                self._left = length
            else:
                self._framing = _CLOSE
                close = True
            self.reusable = not close
            fut = self._head_fut
            self._head_fut = None
            if self._framing == _NONE or (self._framing == _LENGTH and length == 0):
                self._finish_body()
            assert fut is not None
            if not fut.done():
                fut.set_result(Head(status, reason, headers, length, chunked, ctype))
            return rest

    # -- the body ---------------------------------------------------------------------
    def _feed_body(self, data: bytes) -> None:
        if self._body_done:
            self.reusable = False  # more than the answer: do not trust this connection
            return
        framing = self._framing
        finished = False
        if framing == _CHUNKED:
            if self._sink is None:
                self._raw.append(data)
                return
            pieces: list[bytes] = []
            try:
                finished = self._dechunk(data, pieces)
            except UpstreamProtocolError as e:
                self.reusable = False
                assert self.transport is not None
                self.transport.abort()
                self._fail_body(e)
                return
        elif framing == _LENGTH:
            left = self._left
            if len(data) >= left:
                if len(data) > left:
                    self.reusable = False
                    data = data[:left]
                self._left = 0
                finished = True
            else:
                self._left = left - len(data)
            pieces = [data] if data else []
        else:  # _CLOSE
            pieces = [data]
        sink = self._sink
        if sink is None:
            self._pieces.extend(pieces)
        elif (pieces or finished) and sink.data(pieces, finished) and not finished:
            assert self.transport is not None
            self.transport.pause_reading()
        if finished:
            self._finish_body()

    def _dechunk(self, data: bytes, out: list[bytes]) -> bool:
        """Walk the chunk framing of ``data``; True at the last chunk. ``out`` gets the payload
        (or, verbatim, the framed bytes up to but not including the last chunk)."""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        verbatim = self._verbatim
        pos = 0
        n = len(data)
        finished = False
        keep = 0 if self._cstate == _C_TRAILER else n  # verbatim: bytes of ``data`` to pass on
        while pos < n:
            st = self._cstate
            if st == _C_SIZE:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    self._pending = data[pos:]
                    if len(self._pending) > _CHUNK_LINE_MAX:
                        raise UpstreamProtocolError("chunk size line too long")
                    keep = pos
                    break
                try:
                    size = int(data[pos:i], 16)
                except ValueError:
                    line = data[pos:i].split(b";", 1)[0]
                    try:
                        size = int(line, 16)
                    except ValueError:
                        raise UpstreamProtocolError(f"bad chunk size {line[:40]!r}") from None
                if size < 0:
                    raise UpstreamProtocolError("bad chunk size")
                if size == 0:
                    keep = pos
                    pos = i + 2
                    self._cstate = _C_TRAILER
                    continue
                start = i + 2
                end = start + size
                if end + 2 <= n:  # the whole chunk is here
                    if data[end : end + 2] != b"\r\n":
                        raise UpstreamProtocolError("chunk not followed by CRLF")
                    if not verbatim:
                        out.append(data[start:end])
                    pos = end + 2
                    continue
                self._cstate = _C_DATA
                self._left = size
                pos = start
            elif st == _C_DATA:
                take = self._left
                take = min(take, n - pos)
                if not verbatim:
                    out.append(data[pos : pos + take] if (pos or take != n) else data)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._cstate = _C_CRLF
                    self._left = 2
            elif st == _C_CRLF:
                take = min(self._left, n - pos)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._cstate = _C_SIZE
            else:  # _C_TRAILER: "\r\n" at once, or trailer lines then "\r\n"
                if data.startswith(b"\r\n", pos):
                    pos += 2
                else:
                    i = data.find(b"\r\n\r\n", pos)
                    if i < 0:
                        self._pending = data[pos:]
                        if len(self._pending) > _HEAD_MAX:
                            raise UpstreamProtocolError("trailers too large")
                        keep = min(keep, pos)
                        break
                    pos = i + 4
                if pos < n:
                    self.reusable = False
                finished = True
                break
        if verbatim and keep:
            out.append(data if keep == n else data[:keep])
        return finished

    def _finish_body(self) -> None:
        self._body_done = True
        self._in_request = False
        self._cancel_timer()
        sink = self._sink
        if sink is not None:
            sink.done()
        w = self._body_waiter
        if w is not None:
            self._body_waiter = None
            if not w.done():
                w.set_result(None)

    def _fail_body(self, exc: BaseException) -> None:
        if self._body_done:
            return
        self._body_done = True
        self._body_exc = exc
        self._in_request = False
        self.reusable = False
        self._cancel_timer()
        sink = self._sink
        if sink is not None:
            sink.error(exc)
        w = self._body_waiter
        if w is not None:
            self._body_waiter = None
            if not w.done():
                w.set_exception(exc)

    # -- read timeout: one timer per request, re-armed lazily ------------------------------
    def _arm_timer(self) -> None:
        t = self.pool.read_timeout
        if t is None:
            return
        self._last_read = self.loop.time()
        self._timer = self.loop.call_at(self._last_read + t, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        t = self.pool.read_timeout
        assert t is not None
        due = self._last_read + t
        now = self.loop.time()
        if now < due:
            self._timer = self.loop.call_at(due, self._on_timer)
            return
        exc = UpstreamTimeout(f"no answer from the replica in {t:g} s")
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()
        if self._head_fut is not None and not self._head_fut.done():
            self._head_fut.set_exception(exc)
            self._head_fut = None
            self._in_request = False
        else:
            self._fail_body(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the request ------------------------------------------------------------------
    async def request(self, head: bytes, body: Any, is_head: bool) -> Head:
        """Send ``head`` (and ``body``: bytes, None or an async iterable), wait for the head."""
        self._reset_request()
        self._in_request = True
        self._head_req = is_head
        fut: asyncio.Future[Head] = self.loop.create_future()
        self._head_fut = fut
        tr = self.transport
        assert tr is not None
        self._arm_timer()
        if body is None or isinstance(body, bytes | bytearray):
            tr.write(head + body if body else head)
        else:
            await self._send_stream(tr, head, body, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            self.reusable = False
            tr.abort()
            raise

    async def _send_stream(
        self,
        tr: asyncio.Transport,
        head: bytes,
        body: AsyncIterable[bytes],
        fut: asyncio.Future[Head],
    ) -> None:
        tr.write(head)
        async for chunk in body:
            if fut.done() or self.closed:  # answered (or gone) before the body was sent
                self.reusable = False
                return
            if chunk:
                tr.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                try:
                    await self.drain()
                except ConnectionError:
                    return  # connection_lost settles ``fut``
        if not self.closed:
            tr.write(b"0\r\n\r\n")

    def attach(self, sink: BodySink, *, chunked_out: bool = False) -> None:
        """From now on the body goes to ``sink`` (what came already is handed over first).
        ``chunked_out``: the sink frames nothing itself, the replica's chunk framing is passed
        on as it is (all but the last chunk, which the server side writes)."""
        pieces = self._pieces
        self._pieces = []
        self._sink = sink
        self._verbatim = chunked_out and self._framing == _CHUNKED
        raw = self._raw
        if raw:  # chunked: nothing in ``pieces``; de-chunking hands the payload to ``sink``
            self._raw = []
            self._feed_body(raw[0] if len(raw) == 1 else b"".join(raw))
        elif pieces or self._body_done:
            end = self._body_done and self._body_exc is None
            if sink.data(pieces, end) and not self._body_done:
                assert self.transport is not None
                self.transport.pause_reading()
        if self._body_done:
            if self._body_exc is not None:
                sink.error(self._body_exc)
            else:
                sink.done()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    async def read_body(self) -> bytes:
        """The whole body (for small answers); raises the body's error."""
        if not self._body_done:
            self._body_waiter = self.loop.create_future()
            await self._body_waiter
        if self._body_exc is not None:
            raise self._body_exc
        pieces = self._pieces
        self._pieces = []
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    @property
    def body_done(self) -> bool:
        return self._body_done

    def abort(self) -> None:
        self.reusable = False
        self._in_request = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections per (host, port), at most ``limit`` open in all."""

    def __init__(
        self,
        *,
        limit: int = 1024,
        keepalive_timeout: float = 30.0,
        connect_timeout: float = 3.0,
        read_timeout: float | None = 600.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.keepalive_timeout = keepalive_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[tuple[str, int], list[UpstreamConn]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing = False

    async def acquire(self, host: str, port: int) -> UpstreamConn:
        key = (host, port)
        idle = self._idle.get(key)
        if idle:
            now = self.loop.time()
            while idle:
                c = idle.pop()
                if not c.closed and now - c.idle_since < self.keepalive_timeout:
                    return c
                c.abort()
        while self._open >= self.limit:
            if not self._evict_idle():
                w = self.loop.create_future()
                self._waiters.append(w)
                try:
                    await w
                finally:
                    if not w.done():
                        w.cancel()
        self._open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConn(self, key), host, port),
                self.connect_timeout,
            )
        except TimeoutError:
            self._count_closed()
            raise UpstreamConnectError(
                f"timed out connecting to {host}:{port} after {self.connect_timeout:g} s"
            ) from None
        except OSError as e:
            self._count_closed()
            raise UpstreamConnectError(f"cannot connect to {host}:{port}: {e}") from e
        except BaseException:
            self._count_closed()
            raise
        return conn

    def release(self, conn: UpstreamConn) -> None:
        """Back to the pool when the answer was complete and the replica keeps it open."""
        if conn.closed:
            return
        if not conn.reusable or not conn.body_done or self._closing:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)

    def _evict_idle(self) -> bool:
        for conns in self._idle.values():
            if conns:
                conns.pop(0).abort()
                return True
        return False

    def _count_closed(self) -> None:
        self._open -= 1
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                break

    def _lost(self, conn: UpstreamConn) -> None:
        self._count_closed()
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        self._closing = True
        for conns in self._idle.values():
            for c in conns:
                c.abort()
        self._idle.clear()


def host_port(url: str) -> tuple[str, int, bytes]:
    """``http://h:p`` -> (h, p, b"Host: h:p\\r\\n"). ValueError for anything but http://."""
    from yarl import URL

    u = URL(url)
    if u.scheme != "http" or not u.raw_host:
        raise ValueError(f"only http:// replicas take the fast path, not {url}")
    host = u.raw_host
    port = u.port or 80
    shown = f"[{host}]" if ":" in host else host
    if u.explicit_port and port != 80:
        shown = f"{shown}:{port}"
    return host, port, f"Host: {shown}\r\n".encode("ascii")
