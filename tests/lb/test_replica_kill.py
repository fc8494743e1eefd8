"""SIGKILL one of three stub replicas (real processes) under steady concurrent load:
no non-streaming request fails."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from .conftest import LBFactory, wait_until

MAX_REQUESTS = 2000
MAX_SECONDS = 20.0
CONCURRENCY = 16


async def test_sigkill_one_of_three_replicas_under_load_loses_no_request(
    make_lb: LBFactory, stubs
) -> None:
    replicas = stubs(3, "--latency-ms", "2", "--tokens", "4")
    lb = await make_lb()  # least_load, default retry budget
    await lb.put_replicas([r.as_replica() for r in replicas])
    victim = replicas[0]
    done = 0
    failures: list[str] = []
    by_replica: dict[str, int] = {}
    deadline = time.monotonic() + MAX_SECONDS
    killed = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while done < MAX_REQUESTS and time.monotonic() < deadline:
            done += 1
            try:
                async with session.post(
                    f"{lb.url}/v1/completions", json={"prompt": "x", "max_tokens": 4}
                ) as r:
                    body = await r.json()
                    if r.status != 200:
                        failures.append(f"{r.status} {body}")
                    else:
                        rid = r.headers["X-Replica-Id"]
                        by_replica[rid] = by_replica.get(rid, 0) + 1
                        assert body["usage"]["completion_tokens"] == 4
            except aiohttp.ClientError as e:
                failures.append(repr(e))

    async def killer() -> None:
        await wait_until(lambda: done >= MAX_REQUESTS // 4, timeout=MAX_SECONDS)
        victim.kill9()
        killed.set()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        await asyncio.gather(killer(), *(worker(session) for _ in range(CONCURRENCY)))
    assert killed.is_set()
    assert failures == []
    assert done >= MAX_REQUESTS // 2  # the load went on well past the kill
    assert set(by_replica) == {r.id for r in replicas}
    state = await lb.get_replicas()
    rows = {r["id"]: r for r in state["replicas"]}
    assert rows[victim.id]["ejected"] is True
    assert [e["replica_id"] for e in state["ejections"]] == [victim.id]
    assert all(r["in_flight"] == 0 for r in rows.values())
    # every request counted exactly once, all 200
    assert dict(lb.state.metrics.by_code) == {200: done}
