"""Killing the daemon with SIGKILL does not interrupt a service: the LB and the replicas keep
serving, and the restarted daemon re-adopts them (same replicas, same LB) and manages them."""

from __future__ import annotations

import asyncio

import pytest

from spotd.sdk.client_serve import serve_status, serve_up, wait_service

from .conftest import ready, stub_yaml

pytestmark = pytest.mark.slow


async def test_kill9_daemon_readopts_the_service_while_it_keeps_serving(serve_daemon, load):
    d = serve_daemon
    async with d.client() as c:
        await serve_up(c, stub_yaml(replicas="replicas: 2"), filename="svc.yaml")
        before = await wait_service(c, "svc", ready(2), timeout=40, what="2 READY")
    ld = load(
        before["endpoint"], "--concurrency", "4", "--max-requests", "5000", "--max-seconds", "45"
    )
    await ld.wait_done(50)
    d.kill9()
    served = ld.progress()["done"]
    await ld.wait_done(served + 100, timeout=15)  # the data plane does not need the daemon
    d.start()
    async with d.client() as c:
        after = await wait_service(c, "svc", ready(2), timeout=20, what="re-adopted")
        assert [r["id"] for r in after["replicas"]] == [r["id"] for r in before["replicas"]]
        assert after["lb"]["pid"] == before["lb"]["pid"], "the LB was adopted, not restarted"
        # and it is managed again: a replica lost now is replaced
        victim = after["replicas"][0]
        await c.chaos("kill-instance", target=victim["instance_id"])
        await wait_service(
            c,
            "svc",
            lambda s: ready(2)(s) and victim["id"] not in {r["id"] for r in s["replicas"]},
            timeout=30,
            what="replacement after restart",
        )
        await ld.wait_done(ld.progress()["done"] + 50)
        result = ld.finish()
        final = await serve_status(c, "svc", all_replicas=True)
        await asyncio.sleep(0)
    assert result["failed"] == 0, result["errors"]
    gone = next(r for r in final["replicas"] if r["id"] == victim["id"])
    assert gone["status"] == "PREEMPTED"
