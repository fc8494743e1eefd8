"""The LB forwards requests and answers faithfully: methods, bodies, headers, streams."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .conftest import LB, LBFactory, wait_until


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "chunked": request.headers.get("Transfer-Encoding") == "chunked",
                "body_len": len(body),
                "sha": hashlib.sha256(body).hexdigest(),
            },
            headers={
                "X-Upstream": "yes",
                "Keep-Alive": "timeout=5",
                "Proxy-Thing": "x",
                "Set-Cookie": "a=1",
            },
        )

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (3 << 20), content_type="application/octet-stream")

    async def nocontent(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/nocontent", nocontent)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_every_method_path_query_and_body_reach_the_replica(
    make_lb: LBFactory, upstream
) -> None:
    url = await upstream(echo_app())
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": url}])
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        body = f"payload for {method}".encode() if method not in ("GET", "OPTIONS") else b""
        async with lb.session.request(
            method, f"{lb.url}/v1/x%20y/z?b=2&a=1", data=body or None
        ) as r:
            assert r.status == 200
            got = await r.json()
        assert got["method"] == method
        assert got["path"] == "/v1/x y/z"
        assert got["query"] == "b=2&a=1"
        assert got["body_len"] == len(body)
        assert got["sha"] == hashlib.sha256(body).hexdigest()


async def test_head_keeps_the_replicas_content_length(make_lb: LBFactory, upstream) -> None:
    url = await upstream(echo_app())
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": url}])
    async with lb.session.head(f"{lb.url}/big") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(3 << 20)
    async with lb.session.get(f"{lb.url}/nocontent") as r:
        assert r.status == 204
        assert await r.read() == b""


async def test_hop_by_hop_headers_are_stripped_and_x_forwarded_for_set(
    make_lb: LBFactory, upstream
) -> None:
    url = await upstream(echo_app())
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": url}])
    headers = {
        "X-Custom": "kept",
        "Authorization": "Bearer user",
        "Keep-Alive": "timeout=9",
        "Proxy-Authorization": "secret",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Connection": "keep-alive, X-Private",
        "X-Private": "hop",
        "X-Forwarded-For": "10.1.2.3",
        "Accept-Encoding": "gzip",
    }
    async with lb.session.post(f"{lb.url}/h", data=b"abc", headers=headers) as r:
        got = (await r.json())["headers"]
        assert r.headers["X-Upstream"] == "yes"
        assert r.headers["Set-Cookie"] == "a=1"
        assert "Keep-Alive" not in r.headers and "Proxy-Thing" not in r.headers
    assert got["x-custom"] == "kept"
    assert got["authorization"] == "Bearer user"
    assert got["accept-encoding"] == "gzip"
    for hop in ("keep-alive", "proxy-authorization", "te", "upgrade", "x-private"):
        assert hop not in got, hop
    assert got["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert got.get("connection", "keep-alive").lower() == "keep-alive"  # the LB's own


async def test_large_and_chunked_bodies_stream_both_ways(make_lb: LBFactory, upstream) -> None:
    url = await upstream(echo_app())
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": url}])
    big = os.urandom(3 << 20)  # over the 1 MiB buffer limit: streamed, not buffered

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    for data in (big, chunks()):
        async with lb.session.post(f"{lb.url}/upload", data=data) as r:
            assert r.status == 200
            got = await r.json()
        assert got["body_len"] == len(big)
        assert got["sha"] == hashlib.sha256(big).hexdigest()
    async with lb.session.get(f"{lb.url}/big") as r:
        assert len(await r.read()) == 3 << 20


async def _gated_sse_lb(
    make_lb: LBFactory,
    upstream: Any,
    release: asyncio.Event,
    before: list[bytes],
    after: list[bytes],
) -> LB:
    """An LB in front of one replica streaming ``before``, then, once ``release`` is set,
    ``after``."""

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in before:
            await resp.write(event)
        await release.wait()
        for event in after:
            await resp.write(event)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", sse)
    url = await upstream(app)
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": url}])
    return lb


async def test_sse_chunks_arrive_before_the_stream_ends(make_lb: LBFactory, upstream) -> None:
    release = asyncio.Event()
    # the stream cannot end until the client has seen chunk 1
    lb = await _gated_sse_lb(
        make_lb, upstream, release, [b"data: first\n\n"], [b"data: second\n\n", b"data: [DONE]\n\n"]
    )
    async with lb.session.post(f"{lb.url}/v1/completions", json={"stream": True}) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        first = await asyncio.wait_for(r.content.readline(), 10)
        assert first == b"data: first\n"
        release.set()
        rest = await r.content.read()
    assert rest == b"\ndata: second\n\ndata: [DONE]\n\n"


async def test_stub_replica_stream_through_the_lb(make_lb: LBFactory, stubs) -> None:
    (stub,) = stubs(1, "--tokens", "5", "--token-delay-ms", "20")
    lb = await make_lb()
    await lb.put_replicas([stub.as_replica()])
    events = []
    async with lb.session.post(
        f"{lb.url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        async for line in r.content:
            if line.startswith(b"data: "):
                events.append(line[6:].strip())
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == " t0 t1 t2 t3 t4"
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    await wait_until(lambda: lb.in_flight() == {stub.id: 0})


async def test_many_concurrent_requests_keep_exact_counts(make_lb: LBFactory, upstream) -> None:
    url1, url2 = await upstream(echo_app()), await upstream(echo_app())
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": url1}, {"id": "b", "url": url2}])

    async def one(i: int) -> int:
        async with lb.session.post(f"{lb.url}/n", data=str(i)) as r:
            await r.read()
            return r.status

    codes = await asyncio.gather(*(one(i) for i in range(200)))
    assert codes == [200] * 200
    reps = (await lb.get_replicas())["replicas"]
    assert sum(r["requests"] for r in reps) == 200
    assert all(r["requests"] > 0 for r in reps)
    assert lb.in_flight() == {"a": 0, "b": 0}
    assert lb.state.metrics.by_code[200] == 200


async def test_control_api_needs_the_token_and_validates(make_lb: LBFactory) -> None:
    lb = await make_lb()
    async with lb.session.get(f"{lb.control_url}/-/replicas") as r:
        assert r.status == 401
    async with lb.session.put(
        f"{lb.control_url}/-/replicas", json=[{"id": "a"}], headers=lb.auth
    ) as r:
        assert r.status == 400
    async with lb.session.put(f"{lb.control_url}/-/replicas", data=b"{nope", headers=lb.auth) as r:
        assert r.status == 400
    body = await lb.put_replicas(
        {
            "replicas": [  # type: ignore[arg-type]
                {"id": "a", "url": "http://127.0.0.1:1/", "state": "READY"},
                {"id": "b", "url": "http://127.0.0.1:2", "state": "DRAINING"},
            ]
        }
    )
    assert [(r["id"], r["url"], r["state"]) for r in body["replicas"]] == [
        ("a", "http://127.0.0.1:1", "READY"),
        ("b", "http://127.0.0.1:2", "DRAINING"),
    ]


async def test_stats_and_metrics(make_lb: LBFactory, upstream) -> None:
    url = await upstream(echo_app())
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": url}])
    for _ in range(5):
        async with lb.session.get(f"{lb.url}/x") as r:
            await r.read()
    # the current second is not reported until it is over
    await asyncio.sleep(1.05)
    async with lb.session.get(f"{lb.control_url}/-/stats?window=10", headers=lb.auth) as r:
        stats = await r.json()
    assert stats["window_seconds"] == 10
    assert len(stats["buckets"]) == 10
    assert stats["requests"] == 5
    assert stats["qps"] == 0.5
    assert stats["replicas"] == {"a": 0}
    async with lb.session.get(f"{lb.control_url}/metrics", headers=lb.auth) as r:
        text = await r.text()
    assert 'spotd_lb_requests_total{code="200"} 5.0' in text
    assert "spotd_lb_request_duration_seconds_count 5.0" in text
    assert 'spotd_lb_replica_in_flight{replica="a"} 0.0' in text
    assert "spotd_lb_retries_total 0.0" in text


async def test_a_long_request_counts_as_demand_while_it_is_still_in_flight(
    make_lb: LBFactory, upstream
) -> None:
    """The autoscaler's QPS is counted at arrival (as SkyServe's LB counts): a burst of long
    generations is demand the moment it arrives, not minutes later when the answers come."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=503 if request.path == "/fail" else 200)

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    url = await upstream(app)
    lb = await make_lb()
    await lb.put_replicas([{"id": "a", "url": url}])
    calls = [asyncio.ensure_future(lb.session.get(f"{lb.url}/{p}")) for p in ("x", "y", "fail")]
    await wait_until(lambda: lb.state.metrics.in_flight == 3)
    await asyncio.sleep(1.05)  # the second they arrived in is over; none is answered yet
    async with lb.session.get(f"{lb.control_url}/-/stats?window=5", headers=lb.auth) as r:
        stats = await r.json()
    assert (stats["requests"], stats["in_flight"], stats["errors_5xx"]) == (3, 3, 0)
    release.set()
    for call in calls:
        (await call).release()
    await asyncio.sleep(1.05)
    async with lb.session.get(f"{lb.control_url}/-/stats?window=5", headers=lb.auth) as r:
        stats = await r.json()
    # still three requests (not counted again when answered); the 5xx in its answer's second
    assert (stats["requests"], stats["in_flight"], stats["errors_5xx"]) == (3, 0, 1)


async def test_stream_head_is_not_held_back_until_the_first_event(
    make_lb: LBFactory, upstream
) -> None:
    """The relay sends the head with the first payload bytes when it has them, but a replica
    that answers with its head and then thinks (a long prefill) must not leave the client
    without headers: they arrive while the replica has sent no event yet."""
    release = asyncio.Event()
    lb = await _gated_sse_lb(make_lb, upstream, release, [], [b"data: late\n\n"])
    try:
        r = await asyncio.wait_for(
            lb.session.post(f"{lb.url}/v1/completions", json={"stream": True}), 10
        )
    finally:
        release.set()
    async with r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert await r.content.read() == b"data: late\n\n"


class _Transport:
    """Records what the sink writes (the sink's seam is an asyncio transport)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def test_sink_sends_head_payload_and_terminator_in_one_write() -> None:
    from spotd.lb.relay import _ClientSink

    tr = _Transport()
    sink = _ClientSink(tr, True, b"HEAD\r\n\r\n", b"0\r\n\r\n")  # type: ignore[arg-type]
    sink.data([b"data: a\n\n", b"data: b\n\n"], True)
    sink.done()
    assert tr.writes == [b"HEAD\r\n\r\n12\r\ndata: a\n\ndata: b\n\n\r\n0\r\n\r\n"]

    tr = _Transport()
    sink = _ClientSink(tr, False, b"HEAD\r\n\r\n", b"0\r\n\r\n")  # type: ignore[arg-type]
    sink.data([b"5\r\nhello\r\n"], False)  # verbatim: the replica's framing passes through
    sink.data([], True)
    sink.flush_head()  # too late: the head went with the first bytes
    sink.done()  # the end was written already
    assert tr.writes == [b"HEAD\r\n\r\n5\r\nhello\r\n", b"0\r\n\r\n"]

    tr = _Transport()
    sink = _ClientSink(tr, True, b"HEAD\r\n\r\n", b"0\r\n\r\n")  # type: ignore[arg-type]
    sink.flush_head()  # nothing at hand: the head goes alone
    sink.done()  # an empty body that ends by the replica closing its connection
    assert tr.writes == [b"HEAD\r\n\r\n", b"0\r\n\r\n"]


async def test_this_aiohttp_lets_the_relay_take_the_response_head() -> None:
    """Which path the installed aiohttp gets: the head taken over (one write per short
    answer), not the fallback that writes it at once (correct, one more write)."""
    from unittest import mock

    from aiohttp.http_writer import StreamWriter
    from aiohttp.test_utils import make_mocked_request

    from spotd.lb.relay import _RelayResponse, _take_head

    protocol = mock.Mock(transport=_Transport(), _paused=False)
    writer = StreamWriter(protocol, asyncio.get_running_loop())
    request = make_mocked_request(
        "POST", "/v1/completions", writer=writer, protocol=protocol, transport=protocol.transport
    )
    resp = _RelayResponse(status=200, headers={"Content-Type": "text/event-stream"})
    assert await resp.prepare(request) is writer
    head = _take_head(writer)
    assert head is not None and head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"Transfer-Encoding: chunked\r\n" in head
    assert protocol.transport.writes == []  # nothing written: the relay sends the head
    await resp.write_eof()  # aiohttp does not write the taken head a second time
    assert protocol.transport.writes == [b"0\r\n\r\n"]
