"""Hostile task YAML sent to a real daemon: a clear 400, and the daemon keeps answering.

Before the bounded loader, the 9-level alias bomb below stalled the daemon's event loop for
minutes (the spec was walked once per alias use); /v1/health did not answer within 30 s.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.security.test_yaml_bounds import laughs


async def _post(session: aiohttp.ClientSession, path: str, body: dict) -> tuple[int, dict]:
    async with session.post("http://spotd" + path, json=body) as r:
        return r.status, await r.json()


async def _health_latencies(session: aiohttp.ClientSession, stop: asyncio.Event) -> list[float]:
    """Ask /v1/health every 50 ms until ``stop``; each answer's latency (inf: none within 5 s)."""
    out: list[float] = []
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            async with session.get(
                "http://spotd/v1/health", timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                assert r.status == 200
            out.append(time.monotonic() - t0)
        except TimeoutError:
            out.append(float("inf"))
        await asyncio.sleep(0.05)
    return out


BOMBS = {
    "alias bomb": laughs(9) + "run: echo hi\n",
    "deep nesting": "run: echo hi\nenvs: {A: " + "[" * 5000 + "]" * 5000 + "}\n",
    "many documents": "run: echo hi\n" + "---\nrun: echo\n" * 200,
}


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/services"])
@pytest.mark.parametrize("name", list(BOMBS))
async def test_hostile_yaml_is_refused_and_the_daemon_keeps_answering(daemon, path, name) -> None:
    conn = aiohttp.UnixConnector(path=str(daemon.socket))
    async with aiohttp.ClientSession(connector=conn) as s:
        stop = asyncio.Event()
        health = asyncio.create_task(_health_latencies(s, stop))
        await asyncio.sleep(0.2)
        body = (
            {"yaml": BOMBS[name], "dry_run": True}
            if path == "/v1/jobs"
            else {"yaml": BOMBS[name], "name": "svc"}
        )
        status, answer = await _post(s, path, body)
        await asyncio.sleep(0.2)
        stop.set()
        latencies = await health
        assert status == 400, answer
        assert "error" in answer
        assert latencies and max(latencies) < 5, latencies  # answered throughout
        status, _ = await _post(s, "/v1/jobs", {"yaml": "run: echo ok\n", "dry_run": True})
        assert status == 200  # and still serves ordinary requests
