"""HTTP/1.1 on the wire for the LB's own upstream client: the response head, the body's
framing and the chunk decoder, as functions of bytes (no I/O, no clock, no event loop).

``upstream.UpstreamConn`` feeds them what a replica sends; they say what it means:

- ``parse_head``: the final response head of a buffer (1xx interim answers skipped), with
  how its body is framed — ``NO_BODY`` (``HEAD``, 204, 304), ``LENGTH`` (``Content-Length``),
  ``CHUNKED`` or ``UNTIL_CLOSE`` — and whether the connection may be reused;
- ``ChunkDecoder``: walks ``Transfer-Encoding: chunked`` framing split anywhere across reads,
  handing on the payload (or, verbatim, the framed bytes) without copying whole chunks;
- ``host_port``: a replica URL as the address to connect to and its ``Host`` line.

The client's error taxonomy lives here too, at the bottom of the upstream client, because
parsing raises one of its kinds; ``proxy.py`` retries on the others (see ``upstream``).
"""

from __future__ import annotations

from yarl import URL

__all__ = [
    "CHUNKED",
    "DROP_RESP",
    "HEAD_MAX",
    "LENGTH",
    "NO_BODY",
    "UNTIL_CLOSE",
    "ChunkDecoder",
    "Head",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "host_port",
    "parse_head",
]

HEAD_MAX = 64 * 1024  # bytes of status line + headers (and of trailers)
CHUNK_LINE_MAX = 4096

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

# how an answer's body is framed (plain ints: compared on every upstream read)
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3
# chunk decoder states
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
    """A final response head and what it says about the body and the connection."""

    __slots__ = (
        "chunked",
        "content_type",
        "framing",
        "headers",
        "keep_alive",
        "length",
        "reason",
        "size",
        "status",
    )

    # all positional: one is built per answer on the hot path, and keyword arguments to a
    # class cost a dict per call (CPython 3.11)
    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        length: int | None,
        chunked: bool,
        content_type: str,
        framing: int,
        keep_alive: bool,
        size: int,
    ) -> None:
        self.status = status
        self.reason = reason
        # end-to-end ones only; decoded like aiohttp (utf-8, surrogateescape)
        self.headers = headers
        self.length = length  # Content-Length, when given and not chunked
        self.chunked = chunked
        self.content_type = content_type
        self.framing = framing  # NO_BODY, LENGTH, CHUNKED or UNTIL_CLOSE
        self.keep_alive = keep_alive  # the replica keeps the connection open after the body
        self.size = size  # bytes of the buffer up to the body (interim answers included)


def parse_head(buf: bytes, *, head_request: bool) -> Head | None:
    """The final response head at the start of ``buf``, skipping 1xx interim answers (101
    is refused: upgrades are not proxied); None while it is incomplete. The body starts at
    ``buf[head.size:]``. Raises ``UpstreamProtocolError`` for anything but HTTP/1.x and for a
    head over ``HEAD_MAX`` bytes."""
    pos = 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(buf) - pos > HEAD_MAX:
                raise UpstreamProtocolError("response head too large")
            return None
        eol = buf.find(b"\r\n", pos, end)
        if eol < 0:
            eol = end
        status_line = buf[pos:eol]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
            raise UpstreamProtocolError(f"bad status line {status_line[:80]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise UpstreamProtocolError(f"bad status line {status_line[:80]!r}") from None
        if 100 <= status < 200 and status != 101:  # interim answer (100, 103): skip it
            pos = end + 4
            continue
        http10 = parts[0] == b"HTTP/1.0"
        reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        close = http10
        ctype = ""
        named: set[str] | None = None
        text = buf[eol + 2 : end].decode("utf-8", "surrogateescape")
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
        if head_request or status in (204, 304):
            framing = NO_BODY
        elif chunked:
            framing = CHUNKED
        elif length is not None:
            framing = LENGTH
        else:
            framing = UNTIL_CLOSE
            close = True
        return Head(status, reason, headers, length, chunked, ctype, framing, not close, end + 4)


class ChunkDecoder:
    """The state of one chunked body between reads: ``feed`` each read in order.

    Payload slices are handed on as they are (a chunk that arrived whole is one slice of the
    read, a read inside a chunk is passed on uncopied); ``verbatim`` hands on the framed
    bytes instead (all but the last chunk, which the server side writes), for a client that
    takes the replica's chunk framing as it is. ``extra``: bytes followed the last chunk.
    """

    __slots__ = ("extra", "left", "pending", "state", "verbatim")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.state = _C_SIZE
        self.left = 0  # _C_DATA / _C_CRLF: bytes still to come
        self.pending = b""  # an incomplete size line or trailer section
        self.verbatim = False
        self.extra = False

    def feed(self, data: bytes, out: list[bytes]) -> bool:
        """Walk the chunk framing of ``data``; True at the last chunk. ``out`` gets the payload
        (or, verbatim, the framed bytes up to but not including the last chunk)."""
        if self.pending:
            data = self.pending + data
            self.pending = b""
        verbatim = self.verbatim
        pos = 0
        n = len(data)
        finished = False
        keep = 0 if self.state == _C_TRAILER else n  # verbatim: bytes of ``data`` to pass on
        while pos < n:
            st = self.state
            if st == _C_SIZE:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    self.pending = data[pos:]
                    if len(self.pending) > CHUNK_LINE_MAX:
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
                    self.state = _C_TRAILER
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
                self.state = _C_DATA
                self.left = size
                pos = start
            elif st == _C_DATA:
                take = self.left
                take = min(take, n - pos)
                if not verbatim:
                    out.append(data[pos : pos + take] if (pos or take != n) else data)
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = _C_CRLF
                    self.left = 2
            elif st == _C_CRLF:
                take = min(self.left, n - pos)
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = _C_SIZE
            else:  # _C_TRAILER: "\r\n" at once, or trailer lines then "\r\n"
                if data.startswith(b"\r\n", pos):
                    pos += 2
                else:
                    i = data.find(b"\r\n\r\n", pos)
                    if i < 0:
                        self.pending = data[pos:]
                        if len(self.pending) > HEAD_MAX:
                            raise UpstreamProtocolError("trailers too large")
                        keep = min(keep, pos)
                        break
                    pos = i + 4
                if pos < n:
                    self.extra = True
                finished = True
                break
        if verbatim and keep:
            out.append(data if keep == n else data[:keep])
        return finished


def host_port(url: str) -> tuple[str, int, bytes]:
    """``http://h:p`` -> (h, p, b"Host: h:p\\r\\n"). ValueError for anything but http://."""
    u = URL(url)
    if u.scheme != "http" or not u.raw_host:
        raise ValueError(f"only http:// replicas take the fast path, not {url}")
    host = u.raw_host
    port = u.port or 80
    shown = f"[{host}]" if ":" in host else host
    if u.explicit_port and port != 80:
        shown = f"{shown}:{port}"
    return host, port, f"Host: {shown}\r\n".encode("ascii")
