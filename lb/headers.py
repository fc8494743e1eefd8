"""The request and response heads the LB forwards: hop-by-hop headers (RFC 9110 §7.6.1) left
out, ``Host`` the replica's, ``X-Forwarded-For`` extended with the client's address, the body's
framing set. Functions of the request or response only; the proxy (``proxy.py``) builds a
request's head once and reuses it for a retry on a replica with the same address.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from .http1 import DROP_RESP

__all__ = ["connection_tokens", "request_head", "request_headers", "response_headers"]

# Hop-by-hop request headers and the ones the proxy sets itself.
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
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def connection_tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def request_headers(request: web.BaseRequest, drop: str | None = None) -> list[tuple[str, str]]:
    """The headers for an https replica; ``drop`` (lower case) is one more to leave out
    (the client's API key)."""
    out = []
    named: set[str] | None = None
    for k, v in request.headers.items():
        lk = k.lower()
        if lk in _DROP_REQ or lk.startswith("proxy-") or lk == drop:
            if lk == "connection":
                named = connection_tokens(v)
            continue
        out.append((k, v))
    if named:
        out = [(k, v) for k, v in out if k.lower() not in named]
    prior = request.headers.get("X-Forwarded-For")
    remote = request.remote or ""
    out.append(("X-Forwarded-For", f"{prior}, {remote}" if prior else remote))
    return out


def request_head(
    request: web.BaseRequest,
    host_line: bytes,
    body: Any,
    drop: bytes | None = None,
    path: str | None = None,
) -> bytes:
    """The request line and headers for the replica, from the client's raw header bytes:
    hop-by-hop ones (and those ``Connection`` names) dropped, ``Host`` the replica's,
    ``X-Forwarded-For`` extended with the client's address, the body's framing set.
    ``drop`` (lower case) is one more header to leave out (the client's API key); ``path``
    replaces the request's (a stream's continuation may go to another endpoint)."""
    kept: list[tuple[bytes, bytes]] = []
    named: set[bytes] | None = None
    prior: bytes | None = None
    for k, v in request.raw_headers:
        lk = k.lower()
        if lk in _DROP_REQ_B or lk.startswith(b"proxy-") or lk == drop:
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
        (request.raw_path if path is None else path).encode("utf-8", "surrogateescape"),
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


def response_headers(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    out = []
    named: set[str] | None = None
    for k, v in resp.headers.items():
        lk = k.lower()
        if lk in DROP_RESP or lk.startswith("proxy-"):
            if lk == "connection":
                named = connection_tokens(v)
            continue
        out.append((k, v))
    if named:
        out = [(k, v) for k, v in out if k.lower() not in named]
    return out
