"""Losing replicas under steady load, the load from a separate process: a SIGKILLed replica
costs no non-streaming request and is replaced; a replica preempted with a notice drains
(streams included) while its replacement starts."""

from __future__ import annotations

import os
import signal

from spotd.sdk.client_serve import serve_events, serve_up, wait_service

from .conftest import ready, stub_pid, stub_yaml


async def test_sigkill_one_of_three_replicas_under_load_fails_no_request(serve_daemon, load):
    async with serve_daemon.client() as c:
        await serve_up(c, stub_yaml(latency_ms=20), filename="svc.yaml")
        svc = await wait_service(c, "svc", ready(3), timeout=40, what="3 READY")
        victim = svc["replicas"][0]
        ld = load(
            svc["endpoint"], "--concurrency", "6", "--max-requests", "4000", "--max-seconds", "40"
        )
        await ld.wait_done(150)
        os.kill(stub_pid(victim["port"]), signal.SIGKILL)
        svc = await wait_service(
            c,
            "svc",
            lambda s: ready(3)(s) and victim["id"] not in {r["id"] for r in s["replicas"]},
            timeout=30,
            what="a replacement READY",
        )
        await ld.wait_done(ld.progress()["done"] + 100)
        result = ld.finish()
        after = await wait_service(c, "svc", lambda s: True, all_replicas=True)
        events = [e["message"] for e in await serve_events(c, "svc")]
    assert result["failed"] == 0, result["errors"]
    assert result["ok"] >= 250
    # the LB ejected the dead replica and told the daemon at once (through its unix socket)
    assert any(f"ejected replica {victim['id']}:" in m for m in events), events
    lost = next(r for r in after["replicas"] if r["id"] == victim["id"])
    assert lost["status"] == "FAILED", lost
    assert "exited with -9" in lost["message"]
    new = [r for r in svc["replicas"] if r["id"] > 3]
    assert len(new) == 1 and new[0]["status"] == "READY"
    assert f"r{new[0]['id']}" in result["by_replica"], "the replacement served"


async def test_preempted_with_notice_drains_streams_and_replaces_at_once(serve_daemon, load):
    async with serve_daemon.client() as c:
        await serve_up(c, stub_yaml(latency_ms=20, token_delay_ms=40), filename="svc.yaml")
        svc = await wait_service(c, "svc", ready(3), timeout=40, what="3 READY")
        victim = svc["replicas"][1]
        # every other request streams 8 tokens over ~0.3 s: some are mid-stream at the notice
        ld = load(
            svc["endpoint"],
            "--concurrency",
            "8",
            "--max-requests",
            "3000",
            "--max-seconds",
            "40",
            "--stream-every",
            "2",
            "--tokens",
            "8",
        )
        await ld.wait_done(60)
        r = await c.chaos("preempt", target=victim["instance_id"], notice_seconds=8)
        assert r["preempted"] == [victim["instance_id"]]
        svc = await wait_service(
            c,
            "svc",
            lambda s: (
                any(x["id"] == victim["id"] and x["status"] == "DRAINING" for x in s["replicas"])
                or victim["id"] not in {x["id"] for x in s["replicas"]}
            ),
            timeout=10,
            poll=0.05,
            what="DRAINING",
        )
        svc = await wait_service(
            c,
            "svc",
            lambda s: ready(3)(s) and victim["id"] not in {x["id"] for x in s["replicas"]},
            timeout=30,
            what="replacement READY",
        )
        await ld.wait_done(ld.progress()["done"] + 60)
        result = ld.finish()
        after = await wait_service(c, "svc", lambda s: True, all_replicas=True)
    assert result["failed"] == 0 and result["stream_failed"] == 0, result["errors"]
    assert result["stream_ok"] >= 50
    gone = next(x for x in after["replicas"] if x["id"] == victim["id"])
    assert gone["status"] == "PREEMPTED", gone
    new = next(x for x in svc["replicas"] if x["id"] > 3)
    assert new["zone"] != victim["zone"], "the preempted zone is avoided"
    # make before break: the replacement is planned in the step that reads the notice, before
    # the victim ends. With an 8 s notice the LB hands the victim's streams to other replicas at
    # once (less than its 10 s continuation margin), so the victim can end in that same step.
    assert new["created_at"] <= gone["ended_at"]
