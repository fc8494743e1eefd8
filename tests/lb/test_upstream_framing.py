"""The proxy's own HTTP/1.1 client (lb/upstream.py) against a replica that writes raw bytes in
fragments: chunk framing split anywhere, extensions, trailers, interim 1xx answers, bodies
ended by close, HTTP/1.0 clients, read timeouts, garbage; keep-alive reuse."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from .conftest import LBFactory, wait_until

Script = list[bytes | float]  # bytes to write, or seconds to pause (forces separate reads)


class RawReplica:
    def __init__(self, script: Callable[[bytes], Script], *, close_after: bool = False) -> None:
        self.script = script
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                for step in self.script(head):
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    else:
                        w.write(step)
                        await w.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., asyncio.Future[RawReplica]]]:
    made: list[RawReplica] = []

    async def start(script: Callable[[bytes], Script], **kw: bool) -> RawReplica:
        rep = RawReplica(script, **kw)
        await rep.start()
        made.append(rep)
        return rep

    yield start  # type: ignore[misc]
    for rep in made:
        assert rep.server is not None
        rep.server.close()


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n"
)


def split_chunks(_: bytes) -> Script:
    return [
        SSE_HEAD,
        b"5;ext=1\r\nhel",
        0.02,
        b"lo\r",
        0.02,
        b"\n",
        0.02,
        b"6",
        0.02,
        b"\r\n world\r\n",
        0.02,
        b"0\r\nX-Trailer: 1\r\n",
        0.02,
        b"\r\n",
    ]


async def test_chunk_framing_split_anywhere_streams_and_reuses(make_lb: LBFactory, raw) -> None:
    rep = await raw(split_chunks)
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": rep.url}])
    for _ in range(3):
        async with lb.session.get(f"{lb.url}/s") as r:
            assert r.status == 200
            assert r.headers["X-Up"] == "1"
            assert r.headers["Transfer-Encoding"] == "chunked"
            assert await r.read() == b"hello world"
    assert rep.connections == 1  # kept alive across the three
    assert lb.in_flight() == {"a": 0}
    assert b"Host: 127.0.0.1:" in rep.requests[0]


async def test_http10_client_gets_the_payload_unframed(make_lb: LBFactory, raw) -> None:
    rep = await raw(split_chunks)
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": rep.url}])
    host, port = lb.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /s HTTP/1.0\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)  # HTTP/1.0: ends with the close
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    assert b"chunked" not in head.lower()
    assert body == b"hello world"


async def test_close_delimited_body_interim_1xx_and_connection_close(
    make_lb: LBFactory, raw
) -> None:
    until_close = await raw(
        lambda _: [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"abc", 0.02, b"def"],
        close_after=True,
    )
    final = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    interim = await raw(
        lambda _: [b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n", 0.02, final], close_after=True
    )
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": until_close.url}])
    for _ in range(2):
        async with lb.session.get(f"{lb.url}/x") as r:
            assert r.status == 200
            assert await r.read() == b"abcdef"
    assert until_close.connections == 2  # never reused
    await lb.put_replicas([{"id": "b", "url": interim.url}])
    for _ in range(2):
        async with lb.session.post(f"{lb.url}/x", data=b"hi") as r:
            assert r.status == 201
            assert await r.read() == b"ok"
            assert "Connection" not in r.headers or r.headers["Connection"] != "close"
    assert interim.connections == 2
    assert b"Content-Length: 2" in interim.requests[0]
    assert lb.in_flight() == {"b": 0}


async def test_silent_replica_times_out_504_and_garbage_is_502(make_lb: LBFactory, raw) -> None:
    silent = await raw(lambda _: [5.0])
    garbage = await raw(lambda _: [b"SMTP ready\r\n\r\n"])
    lb = await make_lb(read_timeout=0.3)
    await lb.put_replicas([{"id": "s", "url": silent.url}])
    async with lb.session.get(f"{lb.url}/x") as r:
        assert r.status == 504
    await lb.put_replicas([{"id": "g", "url": garbage.url}])
    async with lb.session.get(f"{lb.url}/x") as r:
        assert r.status == 502
        assert "UpstreamProtocolError" in (await r.json())["error"]["message"]
    assert lb.state.metrics.retries == 0  # an answer (of sorts) arrived: nothing re-sent
    await wait_until(lambda: lb.in_flight() == {"g": 0})


async def test_replica_dies_mid_chunk_client_sees_truncation(make_lb: LBFactory, raw) -> None:
    import aiohttp

    rep = await raw(lambda _: [SSE_HEAD, b"5\r\nhello\r\n", 0.05, b"10\r\npart"], close_after=True)
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": rep.url}])
    with pytest.raises(aiohttp.ClientPayloadError):
        async with lb.session.get(f"{lb.url}/x") as r:
            await r.read()
    assert lb.state.metrics.retries == 0
    assert lb.in_flight() == {"a": 0}
