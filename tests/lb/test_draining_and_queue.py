"""DRAINING replicas finish what they have and get nothing new; with no replica, requests
wait in a bounded queue, then get 503 with Retry-After."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .conftest import LBFactory, wait_until


def gated_app(name: str, gate: asyncio.Event, served: list[str]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await gate.wait()
        served.append(name)
        return web.json_response({"replica": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def test_draining_replica_finishes_in_flight_and_gets_nothing_new(
    make_lb: LBFactory, upstream
) -> None:
    gate = asyncio.Event()
    served: list[str] = []
    a = await upstream(gated_app("a", gate, served))
    b = await upstream(gated_app("b", gate, served))
    lb = await make_lb(policy="round_robin")
    await lb.put_replicas([{"id": "a", "url": a}, {"id": "b", "url": b}])

    async def get(path: str) -> tuple[int, str]:
        async with lb.session.get(f"{lb.url}{path}") as r:
            return r.status, (await r.json())["replica"]

    slow = [asyncio.create_task(get("/slow")) for _ in range(4)]
    await wait_until(lambda: lb.in_flight() == {"a": 2, "b": 2})
    await lb.put_replicas([{"id": "a", "url": a, "state": "DRAINING"}, {"id": "b", "url": b}])
    fast = [await get("/fast") for _ in range(10)]
    assert fast == [(200, "b")] * 10
    assert lb.in_flight() == {"a": 2, "b": 2}  # a's requests still running
    gate.set()
    results = await asyncio.gather(*slow)
    assert sorted(results) == [(200, "a"), (200, "a"), (200, "b"), (200, "b")]
    assert lb.in_flight() == {"a": 0, "b": 0}
    rows = {r["id"]: r for r in (await lb.get_replicas())["replicas"]}
    assert rows["a"]["state"] == "DRAINING"


async def test_requests_wait_for_the_first_replica_to_appear(make_lb: LBFactory, upstream) -> None:
    served: list[str] = []
    url = await upstream(gated_app("late", asyncio.Event(), served))
    lb = await make_lb(queue_size=8, queue_timeout=30)

    async def get() -> int:
        async with lb.session.get(f"{lb.url}/fast") as r:
            return r.status

    waiting = [asyncio.create_task(get()) for _ in range(5)]
    await wait_until(lambda: lb.state.waiting == 5)
    await lb.put_replicas([{"id": "late", "url": url}])  # scale from zero: the push wakes them
    assert await asyncio.gather(*waiting) == [200] * 5
    assert lb.state.metrics.queued == 5
    assert lb.state.waiting == 0


async def test_queue_timeout_and_queue_full_answer_503_with_retry_after(make_lb: LBFactory) -> None:
    lb = await make_lb(queue_size=2, queue_timeout=0.5, retry_after=7)

    async def get() -> tuple[int, str | None, dict[str, object]]:
        async with lb.session.get(f"{lb.url}/x") as r:
            return r.status, r.headers.get("Retry-After"), await r.json()

    held = [asyncio.create_task(get()) for _ in range(2)]
    await wait_until(lambda: lb.state.waiting == 2)
    status, retry_after, body = await get()  # the queue is full: answered at once
    assert (status, retry_after) == (503, "7")
    assert lb.state.waiting == 2
    assert "no replica" in str(body["error"])
    for status, retry_after, _ in await asyncio.gather(*held):  # timed out in the queue
        assert (status, retry_after) == (503, "7")
    assert lb.state.metrics.rejected == 3


async def test_no_queue_means_503_json_at_once(make_lb: LBFactory, upstream) -> None:
    lb = await make_lb(queue_size=0)
    async with lb.session.post(f"{lb.url}/v1/completions", json={}) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
        assert r.content_type == "application/json"
        assert (await r.json())["error"]["code"] == 503
    # only DRAINING replicas: the same
    url = await upstream(gated_app("d", asyncio.Event(), []))
    await lb.put_replicas([{"id": "d", "url": url, "state": "DRAINING"}])
    async with lb.session.get(f"{lb.url}/fast") as r:
        assert r.status == 503
