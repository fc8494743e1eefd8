"""`serve up` of the example brings three READY replicas behind one LB; `serve down` leaves
nothing running; bad input is a 4xx with a JSON body."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from spotd.sdk.client import ApiError
from spotd.sdk.client_serve import serve_down, serve_logs, serve_status, serve_up, wait_service

from .conftest import ROOT, pids_matching, ready, stub_yaml


async def test_up_example_serves_through_the_lb_and_down_removes_everything(serve_daemon):
    d = serve_daemon
    r = d.spotctl("serve", "up", "examples/serve_stub.yaml", "-n", "stub")
    assert r.returncode == 0, r.stderr
    assert "http://127.0.0.1:" in r.stdout
    async with d.client() as c:
        svc = await wait_service(
            c,
            "stub",
            lambda s: ready(3)(s) and s["status"] == "READY",
            timeout=40,
            what="3 READY replicas",
        )
    assert svc["status"] == "READY"
    endpoint = svc["endpoint"]
    # spread over three zones, all spot (the catalog's three cheapest spot zones)
    assert len({r["zone"] for r in svc["replicas"]}) == 3
    assert {r["market"] for r in svc["replicas"]} == {"spot"}

    seen: set[str] = set()
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            async with s.post(
                f"{endpoint}/v1/completions", json={"prompt": f"p{i}", "max_tokens": 3}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["usage"]["completion_tokens"] == 3
                seen.add(resp.headers["X-Replica-Id"])
        async with s.post(
            f"{endpoint}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5},
        ) as resp:
            body = await resp.text()
            assert resp.status == 200 and body.rstrip().endswith("data: [DONE]")
    assert len(seen) == 3, seen

    # the JSON a script reads
    r = d.spotctl("serve", "status", "stub", "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("name", "status", "endpoint", "replicas"):
        assert key in data
    for rep in data["replicas"]:
        assert {"id", "status", "url", "market", "region", "zone", "version"} <= set(rep)
        assert rep["version"] == 1 and rep["url"].startswith("http://127.0.0.1:")
    r = d.spotctl("serve", "events", "stub", "-o", "json")
    assert r.returncode == 0, r.stderr
    messages = [e["message"] for e in json.loads(r.stdout)]
    assert any(m.startswith("load balancer started") for m in messages), messages
    table = d.spotctl("serve", "events", "stub")
    assert table.returncode == 0 and "load balancer started" in table.stdout, table
    logs = d.spotctl("serve", "logs", "stub", "1")
    assert "listening on" in logs.stdout, logs
    async with d.client() as c:
        lb_log = b"".join([x async for x in serve_logs(c, "stub", lb=True)]).decode()
    assert "spotd-lb" in lb_log

    ports = [str(rep["port"]) for rep in data["replicas"]]
    lb_pid = data["lb"]["pid"]
    assert pids_matching("spotd.lb", f"--port {data['lb']['port']} ") == [lb_pid]
    r = d.spotctl("serve", "down", "stub")
    assert r.returncode == 0, r.stderr
    async with d.client() as c:
        svc = await wait_service(
            c, "stub", lambda s: s["status"] == "DOWN", timeout=20, all_replicas=True
        )
    assert {rep["status"] for rep in svc["replicas"]} == {"TERMINATED"}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = (
            pids_matching("spotd.lb", f"--port {data['lb']['port']} ")
            + [p for port in ports for p in pids_matching("stub_replica", f"--port {port} ")]
            + pids_matching(str(d.home / "local" / "instances"))
        )
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == [], "processes left after serve down"
    assert not list((d.home / "local" / "instances").iterdir())
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(endpoint, timeout=aiohttp.ClientTimeout(total=2))


async def test_bad_input_is_a_4xx_with_a_json_body(serve_daemon):
    job_yaml = (ROOT / "examples" / "train.yaml").read_text()
    async with serve_daemon.client() as c:
        with pytest.raises(ApiError) as e:
            await serve_up(c, job_yaml, filename="train.yaml")
        assert e.value.status == 400 and "service" in e.value.message
        with pytest.raises(ApiError) as e:
            await serve_up(c, "service: [1, 2\n", filename="broken.yaml")
        assert e.value.status == 400
        with pytest.raises(ApiError) as e:
            await serve_up(
                c, stub_yaml().replace("path: /health", "path: health"), filename="x.yaml"
            )
        assert e.value.status == 400 and e.value.details
        with pytest.raises(ApiError) as e:
            await serve_status(c, "nope")
        assert e.value.status == 404
        with pytest.raises(ApiError) as e:
            await serve_down(c, "nope")
        assert e.value.status == 404
        with pytest.raises(ApiError) as e:
            await c.request(
                "POST", "/v1/services/nope/update", json={"yaml": stub_yaml(), "mode": "sideways"}
            )
        assert e.value.status == 400
        with pytest.raises(ApiError) as e:
            await c.request("POST", "/v1/services", json={"yaml": 3})
        assert e.value.status == 400
        # a task without a usable name
        with pytest.raises(ApiError) as e:
            await serve_up(c, stub_yaml(name="Bad_Name!"), filename="x.yaml")
        assert e.value.status == 400
    r = serve_daemon.spotctl("serve", "status", "nope")
    assert r.returncode == 1 and "no service" in r.stderr
    assert Path(ROOT / "examples" / "serve_stub.yaml").exists()
