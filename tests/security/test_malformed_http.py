"""A request too malformed for aiohttp's parser (both ``Content-Length`` and
``Transfer-Encoding``: a request-smuggling shape) is answered 400 before any handler, and the
daemon logs it as the client's error: one warning line, no traceback, none of the raw request
(which may hold a token). Before, aiohttp logged it at ERROR with a traceback that quoted the
offending header; the API fuzzer found it."""

from __future__ import annotations

import socket

from tests.conftest import DaemonProc

SMUGGLE = (
    b"POST /v1/jobs HTTP/1.1\r\n"
    b"Host: spotd\r\n"
    b"Authorization: Bearer not-a-token-but-secret-looking\r\n"
    b"Content-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
    b"0\r\n\r\n"
)


def _send(path: str, raw: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_a_malformed_request_is_a_400_and_one_warning_line(daemon: DaemonProc) -> None:
    answer = _send(str(daemon.socket), SMUGGLE)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    ok = _send(
        str(daemon.socket), b"GET /v1/health HTTP/1.1\r\nHost: spotd\r\nConnection: close\r\n\r\n"
    )
    assert ok.split(b" ", 2)[1] == b"200", ok[:200]  # and the daemon keeps answering
    log = daemon.log_tail(200_000)
    assert "malformed request answered 400" in log, log[-2000:]
    assert "Traceback" not in log and "secret-looking" not in log, log[-2000:]
