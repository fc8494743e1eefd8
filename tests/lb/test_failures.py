"""Replicas that fail: retries go elsewhere before any byte, never after; ejections; counts."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from spotd.lb.state import Ejection

from .conftest import LBFactory, free_port, wait_until


def ok_app(name: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"replica": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def test_closed_port_is_retried_on_another_replica_and_ejected(
    make_lb: LBFactory, upstream
) -> None:
    good = await upstream(ok_app("good"))
    dead = f"http://127.0.0.1:{free_port()}"
    seen: list[Ejection] = []
    lb = await make_lb(policy="round_robin")
    lb.state.on_eject = seen.append
    await lb.put_replicas([{"id": "dead", "url": dead}, {"id": "good", "url": good}])
    for i in range(20):
        async with lb.session.post(f"{lb.url}/v1/completions", json={"i": i}) as r:
            assert r.status == 200
            assert (await r.json())["replica"] == "good"
    body = await lb.get_replicas()
    dead_row = next(r for r in body["replicas"] if r["id"] == "dead")
    assert dead_row["ejected"] is True
    assert dead_row["in_flight"] == 0
    assert [e["replica_id"] for e in body["ejections"]] == ["dead"]
    assert [e.replica_id for e in seen] == ["dead"]
    assert lb.state.metrics.retries == 1  # ejected after the first failure: one retry in all
    assert lb.state.metrics.by_code == {200: 20}


async def test_ejected_replica_returns_when_a_probe_succeeds(make_lb: LBFactory, upstream) -> None:
    port = free_port()
    lb = await make_lb(queue_size=0)
    await lb.put_replicas([{"id": "r", "url": f"http://127.0.0.1:{port}"}])
    async with lb.session.get(f"{lb.url}/x") as r:
        assert r.status == 503  # refused, ejected, nothing else to try
        assert "Retry-After" in r.headers
    assert lb.state.replicas.stats["r"].ejected
    runner = web.AppRunner(ok_app("r"))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await wait_until(lambda: not lb.state.replicas.stats["r"].ejected)
        async with lb.session.get(f"{lb.url}/x") as r:
            assert r.status == 200
    finally:
        await runner.cleanup()


async def test_readding_a_replica_clears_its_ejection_but_repeating_it_does_not(
    make_lb: LBFactory,
) -> None:
    lb = await make_lb(queue_size=0, probe_interval=3600)
    dead = {"id": "r", "url": f"http://127.0.0.1:{free_port()}"}
    await lb.put_replicas([dead])
    async with lb.session.get(f"{lb.url}/x") as r:
        assert r.status == 503
    await lb.put_replicas([dead])  # the daemon repeats the full set: still ejected
    assert lb.state.replicas.stats["r"].ejected
    await lb.put_replicas([])
    await lb.put_replicas([dead])  # removed, then added back: a fresh chance
    assert not lb.state.replicas.stats["r"].ejected


@pytest.mark.parametrize("over", ["tcp", "unix"])
async def test_ejections_are_posted_to_the_report_url(
    make_lb: LBFactory, upstream, tmp_path, over: str
) -> None:
    """At once, not at the daemon's next read of the LB's stats; over TCP, or through the
    daemon's unix API socket (``--report-unix``), which is all a default daemon listens on."""
    reports: list[dict[str, object]] = []

    async def receive(request: web.Request) -> web.Response:
        reports.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/lb-events", receive)
    good = await upstream(ok_app("good"))
    if over == "tcp":
        daemon = await upstream(app)
        cfg: dict[str, object] = {"report_url": f"{daemon}/lb-events"}
    else:
        sock = str(tmp_path / "api.sock")
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, sock).start()
        cfg = {"report_url": "http://spotd/lb-events", "report_unix": sock}
    lb = await make_lb(**cfg, lb_id="lb-7", policy="round_robin")
    await lb.put_replicas(
        [{"id": "dead", "url": f"http://127.0.0.1:{free_port()}"}, {"id": "good", "url": good}]
    )
    async with lb.session.get(f"{lb.url}/x") as r:
        assert r.status == 200
    try:
        await wait_until(lambda: len(reports) == 1)
    finally:
        if over == "unix":
            await runner.cleanup()
    assert reports[0]["lb_id"] == "lb-7"
    assert reports[0]["replica_id"] == "dead"
    assert reports[0]["event"] == "ejected"


async def test_reset_before_response_is_retried_elsewhere(make_lb: LBFactory, upstream) -> None:
    async def slam(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.abort()  # reset: the request reached nobody's handler to the end
        raise asyncio.CancelledError

    bad = web.Application()
    bad.router.add_route("*", "/{tail:.*}", slam)
    bad_url = await upstream(bad)
    good = await upstream(ok_app("good"))
    lb = await make_lb(policy="round_robin")
    await lb.put_replicas([{"id": "bad", "url": bad_url}, {"id": "good", "url": good}])
    async with lb.session.post(f"{lb.url}/v1/completions", json={"x": 1}) as r:
        assert r.status == 200
        assert (await r.json())["replica"] == "good"
    assert lb.in_flight() == {"bad": 0, "good": 0}


async def test_replica_dying_mid_stream_truncates_and_is_not_retried(
    make_lb: LBFactory, stubs
) -> None:
    """Without stream continuation (``--no-continue-streams``; with it, the stream moves:
    test_stream_continuation.py), a stream whose replica dies is cut, never ended cleanly."""
    dying, other = stubs(2, "--tokens", "200", "--token-delay-ms", "20")
    lb = await make_lb(policy="round_robin", continue_streams=False)
    await lb.put_replicas([dying.as_replica(), other.as_replica()])
    lb.state.policy_state.cursor = 0  # first request -> the first replica
    got = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with lb.session.post(
            f"{lb.url}/v1/completions", json={"prompt": "p", "stream": True}
        ) as r:
            assert r.status == 200
            assert r.headers["X-Replica-Id"] == dying.id
            got += await r.content.readuntil(b"\n\n")  # the stream has started
            dying.kill9()
            while chunk := await r.content.readany():
                got += chunk
    assert got.startswith(b"data: ")
    assert b"[DONE]" not in got
    await wait_until(lambda: lb.in_flight() == {dying.id: 0, other.id: 0})
    assert lb.state.metrics.retries == 0
    # counted once, as the failure it was (its head said 200: that was counted before)
    assert dict(lb.state.metrics.by_code) == {502: 1}
    reps = {r["id"]: r for r in (await lb.get_replicas())["replicas"]}
    assert reps[other.id]["requests"] == 0  # never re-sent


async def test_in_flight_returns_to_zero_after_success_error_and_disconnect(
    make_lb: LBFactory, stubs, upstream
) -> None:
    (stub,) = stubs(1, "--tokens", "500", "--token-delay-ms", "10")

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", boom)
    err_url = await upstream(app)
    lb = await make_lb(queue_timeout=0.2)
    await lb.put_replicas([stub.as_replica()])
    # success
    async with lb.session.post(f"{lb.url}/v1/completions", json={"max_tokens": 2}) as r:
        assert r.status == 200
    assert lb.in_flight() == {stub.id: 0}
    # the client disconnects mid-stream
    async with aiohttp.ClientSession() as s:  # noqa: SIM117
        async with s.post(f"{lb.url}/v1/completions", json={"stream": True}) as r:
            await r.content.readuntil(b"\n\n")
            assert lb.in_flight() == {stub.id: 1}
            r.close()
    await wait_until(lambda: lb.in_flight() == {stub.id: 0})
    # the replica's own 500 is relayed, not retried
    await lb.put_replicas([{"id": "err", "url": err_url}])
    async with lb.session.get(f"{lb.url}/x") as r:
        assert r.status == 500
        assert await r.text() == "boom"
    assert lb.in_flight() == {"err": 0}
    # a connection error with nothing else to try
    await lb.put_replicas([{"id": "gone", "url": f"http://127.0.0.1:{free_port()}"}])
    async with lb.session.get(f"{lb.url}/x") as r:
        assert r.status == 503  # ejected; held in the queue for a replica; none came
    assert lb.in_flight() == {"gone": 0}
    assert lb.state.metrics.in_flight == 0
