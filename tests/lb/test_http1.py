"""lb/http1.py: the upstream client's reading of what a replica sends, as functions of bytes.

The framing tests in test_upstream_framing.py drive the same code through a live LB; these
pin each rule down in a table, including every way a chunked body can be split across reads.
"""

from __future__ import annotations

import pytest

from spotd.lb.http1 import (
    CHUNKED,
    HEAD_MAX,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    ChunkDecoder,
    Head,
    UpstreamProtocolError,
    host_port,
    parse_head,
)

OK = b"HTTP/1.1 200 OK\r\n"


def _parse(buf: bytes, head_request: bool = False) -> Head:
    head = parse_head(buf, head_request=head_request)
    assert head is not None
    return head


@pytest.mark.parametrize(
    ("buf", "head_request", "want"),
    [
        # (status, reason, framing, length, chunked, keep_alive)
        (OK + b"Content-Length: 5\r\n\r\nhello", False, (200, "OK", LENGTH, 5, False, True)),
        (OK + b"Content-Length: 0\r\n\r\n", False, (200, "OK", LENGTH, 0, False, True)),
        (
            OK + b"Transfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            False,
            (200, "OK", CHUNKED, None, True, True),
        ),
        (
            OK + b"Transfer-Encoding: gzip, Chunked\r\n\r\n",
            False,
            (200, "OK", CHUNKED, None, True, True),
        ),
        (
            OK + b"Content-Type: text/plain\r\n\r\n",
            False,
            (200, "OK", UNTIL_CLOSE, None, False, False),
        ),
        (
            OK + b"Content-Length: 2\r\nConnection: close\r\n\r\n",
            False,
            (200, "OK", LENGTH, 2, False, False),
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
            False,
            (200, "OK", LENGTH, 2, False, False),
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive\r\n\r\n",
            False,
            (200, "OK", LENGTH, 2, False, True),
        ),
        # keep-alive means nothing to HTTP/1.1 (it is the default), close always wins
        (
            OK + b"Content-Length: 2\r\nConnection: keep-alive, close\r\n\r\n",
            False,
            (200, "OK", LENGTH, 2, False, False),
        ),
        (OK + b"Content-Length: 7\r\n\r\n", True, (200, "OK", NO_BODY, 7, False, True)),  # HEAD
        (
            b"HTTP/1.1 204 No Content\r\n\r\n",
            False,
            (204, "No Content", NO_BODY, None, False, True),
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\n\r\n",
            False,
            (304, "Not Modified", NO_BODY, None, False, True),
        ),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", False, (200, "", LENGTH, 0, False, True)),
        (
            b"HTTP/1.1 404 Not Found Here\r\n\r\n",
            False,
            (404, "Not Found Here", UNTIL_CLOSE, None, False, False),
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
            + OK
            + b"Content-Length: 1\r\n\r\nx",
            False,
            (200, "OK", LENGTH, 1, False, True),
        ),
    ],
)
def test_status_framing_and_reuse(
    buf: bytes, head_request: bool, want: tuple[int, str, int, int | None, bool, bool]
) -> None:
    h = _parse(buf, head_request)
    assert (h.status, h.reason, h.framing, h.length, h.chunked, h.keep_alive) == want
    assert buf[h.size - 4 : h.size] == b"\r\n\r\n"
    assert buf.find(b"\r\n\r\n", h.size - 4) == h.size - 4  # no final head after it


@pytest.mark.parametrize(
    ("headers", "want", "content_type"),
    [
        (
            b"X-A: 1\r\nContent-Type: text/event-stream\r\n",
            [("X-A", "1"), ("Content-Type", "text/event-stream")],
            "text/event-stream",
        ),
        # hop-by-hop and the ones the server side sets itself
        (
            b"Connection: keep-alive\r\nKeep-Alive: 5\r\nTE: x\r\nTrailer: y\r\nUpgrade: h2\r\n"
            b"Content-Length: 0\r\nTransfer-Encoding: identity\r\nX-B: 2\r\n",
            [("X-B", "2")],
            "",
        ),
        (b"Proxy-Foo: 1\r\nProxy-Authenticate: x\r\nX-C: 3\r\n", [("X-C", "3")], ""),
        # the names a Connection header lists are hop-by-hop too, in any case
        (b"Connection: X-Secret, close\r\nx-secret: s\r\nX-D:  4 \r\n", [("X-D", "4")], ""),
        # utf-8 decoded (surrogateescape for the rest), values stripped
        (b"X-E:\tcaf\xc3\xa9\r\nX-F: \xff\r\n", [("X-E", "café"), ("X-F", "\udcff")], ""),
        (b"", [], ""),
    ],
)
def test_end_to_end_headers(headers: bytes, want: list[tuple[str, str]], content_type: str) -> None:
    h = _parse(OK + headers + b"\r\n")
    assert h.headers == want
    assert h.content_type == content_type


@pytest.mark.parametrize(
    "buf",
    [
        b"",
        b"HTTP/1.1 200 OK\r\n",
        OK + b"Content-Length: 5\r\n\r",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",  # the interim answer alone
    ],
)
def test_incomplete_head_is_none(buf: bytes) -> None:
    assert parse_head(buf, head_request=False) is None


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (b"SMTP ready\r\n\r\n", "bad status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "upgrades"),
        (OK + b"no colon here\r\n\r\n", "bad header line"),
        (OK + b": empty name\r\n\r\n", "bad header line"),
        (OK + b"Content-Length: five\r\n\r\n", "bad Content-Length"),
        (OK + b"X-Big: " + b"x" * HEAD_MAX, "too large"),
        # the limit counts what follows the interim answers, as before
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"X: " + b"x" * HEAD_MAX, "too large"),
    ],
)
def test_not_http(buf: bytes, message: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=message):
        parse_head(buf, head_request=False)


def test_head_limit_is_after_interim_answers() -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: " + b"x" * 100 + b"\r\n\r\n"
    assert parse_head(interim + b"H" * (HEAD_MAX - 10), head_request=False) is None


# -- chunked bodies ----------------------------------------------------------------------


def _decode(reads: list[bytes], *, verbatim: bool = False) -> tuple[bytes, bool, bool, int]:
    """(output, finished, extra, the read it finished at)."""
    d = ChunkDecoder()
    d.verbatim = verbatim
    out: list[bytes] = []
    for i, data in enumerate(reads):
        if d.feed(data, out):
            return b"".join(out), True, d.extra, i
    return b"".join(out), False, d.extra, -1


BODIES = [
    # (framed, payload, verbatim output: everything before the last chunk)
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b"5\r\nhello\r\n"),
    (
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"hello world",
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n",
    ),
    (
        b"A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\nX-Two: 2\r\n\r\n",
        b"0123456789",
        b"A\r\n0123456789\r\n",
    ),
    (b"0\r\n\r\n", b"", b""),
    (b"1\r\n\n\r\n2\r\n\r\n\r\n0\r\n\r\n", b"\n\r\n", b"1\r\n\n\r\n2\r\n\r\n\r\n"),
]


@pytest.mark.parametrize(("framed", "payload", "verbatim"), BODIES)
def test_dechunk_in_one_read(framed: bytes, payload: bytes, verbatim: bytes) -> None:
    assert _decode([framed]) == (payload, True, False, 0)
    assert _decode([framed], verbatim=True) == (verbatim, True, False, 0)


@pytest.mark.parametrize(("framed", "payload", "verbatim"), BODIES)
def test_dechunk_split_anywhere(framed: bytes, payload: bytes, verbatim: bytes) -> None:
    for cut in range(1, len(framed)):
        for mode, want in ((False, payload), (True, verbatim)):
            got = _decode([framed[:cut], framed[cut:]], verbatim=mode)
            assert got == (want, True, False, 1), (cut, mode)
    for mode, want in ((False, payload), (True, verbatim)):
        one_by_one = [framed[i : i + 1] for i in range(len(framed))]
        assert _decode(one_by_one, verbatim=mode) == (want, True, False, len(framed) - 1)


@pytest.mark.parametrize(
    ("reads", "want"),
    [
        ([b"5\r\nhel"], (b"hel", False, False, -1)),  # more to come
        ([b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1"], (b"hello", True, True, 0)),  # bytes after the end
        ([b"5\r\nhello\r\n0\r\n", b"\r\nx"], (b"hello", True, True, 1)),
    ],
)
def test_dechunk_end_and_extra(reads: list[bytes], want: tuple[bytes, bool, bool, int]) -> None:
    assert _decode(reads) == want


def test_a_read_inside_a_chunk_is_passed_on_uncopied() -> None:
    d = ChunkDecoder()
    out: list[bytes] = []
    d.feed(b"100\r\n", out)
    middle = b"m" * 64
    d.feed(middle, out)
    assert out[-1] is middle


def test_reset_forgets_the_previous_body() -> None:
    d = ChunkDecoder()
    d.verbatim = True
    d.feed(b"5\r\nhello\r\n0\r\n\r\nextra", [])
    d.reset()
    assert (d.state, d.left, d.pending, d.verbatim, d.extra) == (0, 0, b"", False, False)
    assert _decode([b"2\r\nok\r\n0\r\n\r\n"]) == (b"ok", True, False, 0)


@pytest.mark.parametrize(
    ("reads", "message"),
    [
        ([b"zz\r\n"], "bad chunk size"),
        ([b"-5\r\nhello\r\n"], "bad chunk size"),
        ([b"5\r\nhelloXX0\r\n\r\n"], "not followed by CRLF"),
        ([b"5" * 5000], "chunk size line too long"),
        ([b"5\r\nhello\r\n0\r\nX: " + b"t" * HEAD_MAX], "trailers too large"),
    ],
)
def test_bad_chunk_framing(reads: list[bytes], message: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=message):
        _decode(reads)


# -- the replica's address ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("http://127.0.0.1:8001", ("127.0.0.1", 8001, b"Host: 127.0.0.1:8001\r\n")),
        ("http://replica.local/", ("replica.local", 80, b"Host: replica.local\r\n")),
        ("http://replica.local:80/v1", ("replica.local", 80, b"Host: replica.local\r\n")),
        ("http://[::1]:9000", ("::1", 9000, b"Host: [::1]:9000\r\n")),
    ],
)
def test_host_port(url: str, want: tuple[str, int, bytes]) -> None:
    assert host_port(url) == want


@pytest.mark.parametrize("url", ["https://r:443", "unix:/tmp/s", "http:///path"])
def test_host_port_takes_only_http(url: str) -> None:
    with pytest.raises(ValueError):
        host_port(url)
