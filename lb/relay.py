"""Sending a replica's answer to the client.

Answers with a known length up to 1 MiB (and not ``text/event-stream``) are read whole and
sent in one write; everything else (SSE, chunked, large) is relayed as it arrives. On the fast
path (our own HTTP/1.1 client, ``upstream.py``) a streamed answer is written to the client's
transport from inside the replica connection's ``data_received`` (``_ClientSink``), without
waking the handler per chunk; https replicas go through aiohttp's client (``relay``).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.http_writer import StreamWriter

from .headers import response_headers
from .http1 import Head, UpstreamError
from .upstream import BodySink, UpstreamConn

__all__ = ["json_error", "relay", "relay_fast"]

_BUFFER_RESPONSE_MAX = 1 << 20
_PAUSE_ABOVE = 256 * 1024  # client write buffer above this: stop reading the replica


TRUNCATED = web.ResponseKey("spotd_truncated", bool)  # a response cut short: a 502, not 200


def truncate(resp: web.StreamResponse, tr: asyncio.Transport) -> None:
    """Abort the client's connection mid-answer (the replica died, or a stream found no
    replica to move to): the client sees a truncated answer, and the LB counts a failure.
    Its head said 200, and that is what was counted: replica failures mid-answer never
    reached the 5xx window or ``spotd_lb_requests{code}``."""
    resp[TRUNCATED] = True
    tr.abort()


def json_error(status: int, message: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(
        {"error": {"message": message, "code": status}}, status=status, headers=headers
    )


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


async def relay_fast(
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
            return json_error(
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
            truncate(sresp, tr)
        return sresp
    if own_end:
        _mark_eof(writer)
    try:
        await sresp.write_eof()
    except ConnectionError:
        pass
    return sresp


async def relay(request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Send the replica's answer to the client (buffered when small, else streamed)."""
    try:
        status = upstream.status
        headers = response_headers(upstream)
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
                return json_error(
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
                truncate(sresp, tr)
            return sresp
        except ConnectionError:
            # The client went away mid-stream; closing the upstream connection tells the
            # replica (vLLM aborts the generation).
            return sresp
        return sresp
    finally:
        upstream.release()
