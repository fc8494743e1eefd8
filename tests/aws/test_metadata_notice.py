"""EC2's interruption notice reaches the daemon through the agent.

EC2 announces a spot interruption two minutes ahead in the instance metadata service
(``/latest/meta-data/spot/instance-action``), not in any API the daemon can call, and moto
does not model it. Here a small HTTP server on loopback plays ``169.254.169.254`` and another
plays the daemon's heartbeat endpoint; a real agent process polls the first and must report
the notice to the second, with EC2's deadline, then stop the job and checkpoint.

The metadata service plays an instance launched as spotd launches them, with IMDSv2 required
(``HttpTokens=required``): a GET without a valid session token is answered 401, as EC2 does, so
the agent sees the notice only if it does the token exchange (``PUT /latest/api/token``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from spotd.agent.imds import TOKEN_HEADER, TTL_HEADER
from spotd.types import AgentConfig

pytestmark = pytest.mark.aws

JOB = """
import os, signal, sys, time
d = os.environ["SPOTD_CHECKPOINT_DIR"]
def term(*_):
    open(os.path.join(d, "saved"), "w").write("on SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("working", flush=True)
time.sleep(60)
"""


class Loopback:
    """The metadata service and the daemon's agent endpoint, on one loopback server."""

    def __init__(self) -> None:
        self.action: dict[str, str] | None = None
        self.heartbeats: list[dict[str, Any]] = []
        self.sizes = 0
        self.tokens: dict[str, float] = {}  # IMDSv2 session token -> when it expires
        self.ttls: list[int] = []  # the lifetimes the agent asked for
        self.refused = 0  # GETs answered 401: no token, or not one of ours
        self.served = 0  # GETs with a valid token
        app = web.Application()
        app.router.add_put("/latest/api/token", self.token)
        app.router.add_get("/latest/meta-data/spot/instance-action", self.instance_action)
        app.router.add_post("/agent/v1/heartbeat", self.heartbeat)
        self.runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def token(self, request: web.Request) -> web.Response:
        """IMDSv2: a session token for the TTL asked (1 s to 6 h), else 400 as EC2 answers."""
        try:
            ttl = int(request.headers[TTL_HEADER])
        except (KeyError, ValueError):
            return web.Response(status=400, text="Bad Request")
        if not 1 <= ttl <= 21600:
            return web.Response(status=400, text="Bad Request")
        self.ttls.append(ttl)
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.time() + ttl
        return web.Response(text=token)

    async def instance_action(self, request: web.Request) -> web.Response:
        token = request.headers.get(TOKEN_HEADER, "")
        if self.tokens.get(token, 0.0) <= time.time():  # HttpTokens=required
            self.refused += 1
            return web.Response(status=401, text="Unauthorized")
        self.served += 1
        if self.action is None:
            return web.Response(status=404, text="Not Found")
        return web.json_response(self.action)

    async def heartbeat(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert request.headers["Authorization"] == "Bearer agent-token"
        self.heartbeats.append(body)
        got = len(base64.b64decode(body["log_b64"]))
        return web.json_response({"log_offset": body["log_offset"] + got})


@pytest.fixture
async def loopback() -> AsyncIterator[Loopback]:
    lb = Loopback()
    await lb.start()
    yield lb
    await lb.runner.cleanup()


async def until(pred: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := pred():
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_agent_reports_the_metadata_notice_with_imdsv2(
    loopback: Loopback, tmp_path: Path
) -> None:
    cfg = AgentConfig(
        instance_key="j1-a1-n0",
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run=f"{sys.executable} -c '{JOB}'",
        daemon_url=loopback.url,
        notice_url=loopback.url,
        token="agent-token",
        checkpoint_store=str(tmp_path / "store"),
        heartbeat_seconds=0.2,
        term_grace_seconds=5,
        instance_dir=str(tmp_path / "inst"),
    )
    inst = tmp_path / "inst"
    inst.mkdir()
    (inst / "agent.json").write_text(json.dumps(asdict(cfg)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spotd.agent",
        str(inst),
        cwd=inst,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await until(lambda: any(h["phase"] == "run" for h in loopback.heartbeats), "run phase")
        assert all(h["notice_deadline"] is None for h in loopback.heartbeats)
        when = datetime.fromtimestamp(int(time.time()) + 120, UTC)
        loopback.action = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
        noticed = await until(
            lambda: next((h for h in loopback.heartbeats if h["notice_deadline"]), None),
            "a heartbeat carrying the notice",
        )
        assert noticed["notice_deadline"] == pytest.approx(when.timestamp(), abs=1)
        await until(
            lambda: any(h["phase"] == "preempted" for h in loopback.heartbeats),
            "the preempted phase after the checkpoint",
        )
        assert (tmp_path / "store" / "saved").read_text() == "on SIGTERM"
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        # one token for the agent's whole life (six hours asked), on every poll: none refused
        assert loopback.ttls == [21600]
        assert loopback.refused == 0 and loopback.served > 1
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 5)
