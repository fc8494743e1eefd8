"""Scaling and version changes under load (the load from a separate process): 1 → 3 → 1
replicas on request rate, rolling and blue/green updates, scale from zero — each without a
failed request."""

from __future__ import annotations

import pytest

from spotd.sdk.client_serve import serve_status, serve_up, serve_update, wait_service

from .conftest import ready, stub_yaml

pytestmark = pytest.mark.slow

SCALING = """replica_policy:
    min_replicas: 1
    max_replicas: 3
    target_qps_per_replica: 4
    upscale_delay_seconds: 1
    downscale_delay_seconds: 2"""


def live(s: dict) -> list[dict]:
    return [r for r in s["replicas"] if r["ended_at"] is None]


async def test_scale_1_to_3_to_1_under_load_fails_no_request(serve_daemon, load):
    async with serve_daemon.client() as c:
        await serve_up(c, stub_yaml(replicas=SCALING), filename="svc.yaml")
        svc = await wait_service(c, "svc", ready(1), timeout=40, what="1 READY")
        assert svc["target"] == 1
        # 10 requests/s (3 replicas at 4 per replica) for 14 s, then 1.5/s (1 replica)
        ld = load(
            svc["endpoint"],
            "--concurrency",
            "4",
            "--schedule",
            "10:14,1.5:16",
            "--max-seconds",
            "40",
            "--max-requests",
            "400",
        )
        up = await wait_service(c, "svc", ready(3), timeout=25, what="3 READY (upscale)")
        assert up["target"] == 3
        down = await wait_service(
            c,
            "svc",
            lambda s: s["target"] == 1 and len(live(s)) == 1 and ready(1)(s),
            timeout=30,
            what="back to 1 (downscale)",
        )
        result = ld.finish(timeout=45)
        final = await serve_status(c, "svc", all_replicas=True)
    assert result["failed"] == 0, result["errors"]
    assert result["ok"] >= 100
    assert len(result["by_replica"]) >= 3, "traffic reached the upscaled replicas"
    assert {r["status"] for r in final["replicas"] if r["ended_at"]} == {"TERMINATED"}
    assert down["status"] == "READY"


@pytest.mark.parametrize("mode", ["rolling", "blue_green"])
async def test_update_under_load_fails_no_request(serve_daemon, load, mode):
    """Both update modes move every replica to version 2 without a failed request (streams
    included); blue_green also has the whole new set READY before any old replica leaves."""
    async with serve_daemon.client() as c:
        await serve_up(c, stub_yaml(replicas="replicas: 2", model="m1"), filename="svc.yaml")
        svc = await wait_service(c, "svc", ready(2), timeout=40, what="2 READY")
        ld = load(
            svc["endpoint"],
            "--concurrency",
            "4",
            "--max-requests",
            "5000",
            "--max-seconds",
            "45",
            "--stream-every",
            "3",
            "--tokens",
            "4",
        )
        await ld.wait_done(80)
        upd = await serve_update(
            c,
            "svc",
            stub_yaml(replicas="replicas: 2", model="m2"),
            filename="svc-v2.yaml",
            mode=mode,
        )
        assert upd["version"] == 2
        done = await wait_service(
            c,
            "svc",
            lambda s: ready(2, version=2)(s) and all(r["version"] == 2 for r in live(s)),
            timeout=40,
            what="every replica on version 2",
        )
        await ld.wait_done(ld.progress()["done"] + 80)
        result = ld.finish()
        final = await serve_status(c, "svc", all_replicas=True)
    assert result["failed"] == 0 and result["stream_failed"] == 0, result["errors"]
    old = [r for r in final["replicas"] if r["version"] == 1]
    new = [r for r in final["replicas"] if r["version"] == 2]
    served = set(result["by_replica"])
    assert {f"r{r['id']}" for r in old} <= served and {f"r{r['id']}" for r in new} <= served
    assert len(old) == 2 and {r["status"] for r in old} == {"TERMINATED"}
    assert len(new) == 2 and all(r["ready_at"] for r in new)
    if mode == "blue_green":
        assert min(r["ended_at"] for r in old) >= max(r["ready_at"] for r in new) - 1e-6
    assert done["version"] == 2


async def test_scale_to_zero_then_a_request_wakes_it(serve_daemon, load):
    """min_replicas 0: idle → 0 replicas; the LB holds the next request in its queue while a
    replica cold-starts, then answers it (no error)."""
    policy = """replica_policy:
    min_replicas: 0
    max_replicas: 2
    target_qps_per_replica: 4
    upscale_delay_seconds: 1
    downscale_delay_seconds: 2"""
    async with serve_daemon.client() as c:
        await serve_up(c, stub_yaml(replicas=policy), filename="svc.yaml")
        svc = await wait_service(
            c, "svc", lambda s: s["target"] == 0 and not live(s), timeout=60, what="scaled to zero"
        )
        await _listening(svc["endpoint"])
        ld = load(
            svc["endpoint"], "--concurrency", "1", "--max-requests", "3", "--max-seconds", "50"
        )
        await ld.wait_done(3, timeout=55)
        result = ld.finish(timeout=10)
        woke = await serve_status(c, "svc")
    assert result["failed"] == 0 and result["ok"] == 3, result["errors"]
    assert woke["target"] >= 1


async def _listening(url: str, timeout: float = 15.0) -> None:
    """The service's LB accepts connections (it may still be starting right after `up`)."""
    import asyncio
    import time
    from urllib.parse import urlparse

    u = urlparse(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection(u.hostname, u.port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
