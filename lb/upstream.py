"""The LB's own HTTP/1.1 client connection: one keep-alive ``asyncio.Protocol`` connection
to a replica, and the body relay that runs inside its ``data_received``.

Why not ``aiohttp.ClientSession`` here: under load most of the LB's time went to the client's
per-request machinery (request object, header multidicts, tracing, timers) and, for streamed
answers, to one parser callback + ``StreamReader`` feed + task wake-up + ``StreamResponse.write``
per SSE event. Here a streamed answer is relayed from the upstream connection's
``data_received`` straight to the client's transport — one ``transport.write`` per upstream
read, no task wake-up — which is what nginx does with ``proxy_buffering off``. (The aiohttp
session still does the probes and the ejection reports, where cost does not matter.)

What it does: the request head is built by the caller from the client's raw header bytes
(hop-by-hop ones filtered, ``Host`` from ``http1.host_port``); bodies go out as ``bytes``
(``Content-Length``) or an async iterator (``Transfer-Encoding: chunked``, flow-controlled).
What the replica sends is read by ``http1``: answers framed by ``Content-Length``, ``chunked``
(de-chunked: the payload is re-framed by the server side, or passed through verbatim) or
connection close; 1xx interim answers skipped; ``HEAD``/204/304 have no body. A connection is
reused (``pool.UpstreamPool``) when the answer was complete, the replica did not say
``Connection: close`` and nothing extra arrived; idle ones expire after ``keepalive_timeout``
or when the replica closes them.

Errors, for the retry rule (``proxy.py``), all from ``http1``:

- ``UpstreamConnectError``: refused, unreachable or timed out connecting — nothing was sent
  (raised by the pool);
- ``UpstreamDisconnected``: the connection closed or reset before any response byte;
- ``UpstreamTimeout``: no byte for ``read_timeout`` seconds (before or after the head);
- ``UpstreamProtocolError``: the replica sent something that is not HTTP/1.x.

Once the head has arrived, a failure reaches the body consumer (``BodySink.error`` or the
``read_body`` exception), never the retry logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Any, Protocol

from .http1 import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ChunkDecoder,
    Head,
    UpstreamDisconnected,
    UpstreamProtocolError,
    UpstreamTimeout,
    parse_head,
)

__all__ = ["BodySink", "ConnOwner", "UpstreamConn"]


class ConnOwner(Protocol):
    """What a connection needs from its pool (``pool.UpstreamPool``)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def read_timeout(self) -> float | None: ...

    def lost(self, conn: UpstreamConn) -> None:
        """The connection closed: count it out, and out of the idle list if it was there."""


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

    def __init__(self, pool: ConnOwner, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.counted_out = False  # the pool counted it closed when it evicted it
        self._chunks = ChunkDecoder()  # reset when a chunked answer begins
        self._reset_request()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def _reset_request(self) -> None:
        self._head_fut: asyncio.Future[Head] | None = None
        self._hbuf = b""
        self._framing = NO_BODY
        self._left = 0  # LENGTH: payload bytes still to come
        self._pieces: list[bytes] = []  # payload received before a sink was attached
        self._raw: list[bytes] = []  # chunked bytes received before a sink was attached
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
        self.pool.lost(self)
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
            if self._framing == UNTIL_CLOSE and exc is None:
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
        fut = self._head_fut
        if fut is not None:
            buf = self._hbuf = self._hbuf + data
            try:
                head = parse_head(buf, head_request=self._head_req)
            except UpstreamProtocolError as e:
                self._in_request = False
                self._head_fut = None
                assert self.transport is not None
                self.transport.abort()
                if not fut.done():
                    fut.set_exception(e)
                return
            if head is None:  # head incomplete
                return
            self._hbuf = b""
            self._framing = framing = head.framing
            if framing == CHUNKED:
                self._chunks.reset()
            elif framing == LENGTH:
                self._left = head.length or 0
            self.reusable = head.keep_alive
            self._head_fut = None
            if framing == NO_BODY or (framing == LENGTH and head.length == 0):
                self._finish_body()
            if not fut.done():
                fut.set_result(head)
            rest = buf[head.size :]
            if not rest or self._body_done:
                return
            data = rest
        self._feed_body(data)

    # -- the body ---------------------------------------------------------------------
    def _feed_body(self, data: bytes) -> None:
        if self._body_done:
            self.reusable = False  # more than the answer: do not trust this connection
            return
        framing = self._framing
        finished = False
        if framing == CHUNKED:
            if self._sink is None:
                self._raw.append(data)
                return
            pieces: list[bytes] = []
            try:
                finished = self._chunks.feed(data, pieces)
            except UpstreamProtocolError as e:
                self.reusable = False
                assert self.transport is not None
                self.transport.abort()
                self._fail_body(e)
                return
            if finished and self._chunks.extra:
                self.reusable = False  # more than the answer: do not trust this connection
        elif framing == LENGTH:
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
        else:  # UNTIL_CLOSE
            pieces = [data]
        sink = self._sink
        if sink is None:
            self._pieces.extend(pieces)
        elif (pieces or finished) and sink.data(pieces, finished) and not finished:
            assert self.transport is not None
            self.transport.pause_reading()
        if finished:
            self._finish_body()

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
        if self.closed:  # closed while idle, after the pool handed it out: nothing was sent
            raise UpstreamDisconnected("replica closed the connection before the request")
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
        self._chunks.verbatim = chunked_out and self._framing == CHUNKED
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

    def interrupt(self, exc: BaseException) -> None:
        """Give up the request whose answer has not begun: ``request`` raises ``exc``, and the
        connection is dropped (the replica sees the client go)."""
        fut = self._head_fut
        if fut is None or fut.done():
            return  # the answer began in this very loop turn: it is let finish (aborted
            # here, its body was waited for for ever: nothing failed the body's waiter)
        self.abort()
        fut.set_exception(exc)

    def detach(self) -> None:
        """No more body to the sink (a stream moving to another replica); then ``abort``."""
        self._sink = None

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
