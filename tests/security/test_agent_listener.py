"""Agents have a listener of their own, which serves only the agent routes.

Attack: whoever can reach the port agents report to reaches the whole admin API there (list
every job, inject chaos, launch), guarded only by the admin token; and local agents called
the admin's socket. Before: agents called the admin socket (local) or the main TCP API
(remote), the only listeners there were. After: ``$SPOTD_HOME/agent.sock`` (0666) and, with
``agent_host``/``agent_port``, a TCP port serve only the agent routes: an admin route is 404
there, the heartbeat answers only an agent's own token (401 without), local agents are handed
the agent socket, and remote agents the agent listener's URL.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spotd.config import Settings
from spotd.control.agent_config import agent_listener_url
from spotd.server import TransportError, agent_tls
from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import logs, wait_job

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}
ADMIN_TOKEN = "admin-token-of-the-agent-listener-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon() -> Iterator[tuple[DaemonProc, int]]:
    home = Path(f"/tmp/spotd-al{os.getpid()}-{uuid.uuid4().hex[:6]}")
    port = _free_port()
    d = DaemonProc(home, {"SPOTD_API_TOKEN": ADMIN_TOKEN, "SPOTD_AGENT_TCP": f"127.0.0.1:{port}"})
    d.start()
    try:
        yield d, port
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def sessions(
    daemon: tuple[DaemonProc, int],
) -> AsyncIterator[dict[str, tuple[aiohttp.ClientSession, str]]]:
    """The agent listener, both ways: (session, base URL) by name."""
    d, port = daemon
    unix = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(d.home / "agent.sock")))
    tcp = aiohttp.ClientSession()
    try:
        yield {"socket": (unix, "http://spotd"), "tcp": (tcp, f"http://127.0.0.1:{port}")}
    finally:
        await unix.close()
        await tcp.close()


async def _running_agent(d: DaemonProc) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sleeping job on the local provider, and its agent's config (with its token)."""
    async with d.client() as c:
        job = await c.launch("name: sleeper\nrun: sleep 60\n", filename="s.yaml")
        await wait_job(c, job["id"], lambda j: j["status"] == "RUNNING", timeout=60, what="run")
    configs = list((d.home / "local" / "instances").glob("*/agent.json"))
    assert len(configs) == 1, configs
    return job, json.loads(configs[0].read_text())


@pytest.mark.parametrize("where", ["socket", "tcp"])
async def test_admin_routes_do_not_exist_on_the_agent_listener(
    daemon: tuple[DaemonProc, int],
    sessions: dict[str, tuple[aiohttp.ClientSession, str]],
    where: str,
) -> None:
    session, base = sessions[where]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for headers in ({}, admin):  # not even the admin token finds them here
        async with session.get(f"{base}/v1/jobs", headers=headers) as r:
            assert r.status == 404, await r.text()
        async with session.post(
            f"{base}/v1/chaos/stockout",
            json={"provider": "local", "region": "x", "seconds": 1},
            headers=headers,
        ) as r:
            assert r.status == 404, await r.text()
        async with session.post(f"{base}/v1/jobs", json={"yaml": "run: id"}, headers=headers) as r:
            assert r.status == 404, await r.text()


async def test_the_agent_socket_is_0666_and_the_admin_socket_0600(
    daemon: tuple[DaemonProc, int],
) -> None:
    d, _ = daemon
    assert stat.S_IMODE((d.home / "agent.sock").stat().st_mode) == 0o666
    assert stat.S_IMODE((d.home / "spotd.sock").stat().st_mode) == 0o600


@pytest.mark.parametrize("where", ["socket", "tcp"])
async def test_heartbeat_needs_the_agents_own_token(
    daemon: tuple[DaemonProc, int],
    sessions: dict[str, tuple[aiohttp.ClientSession, str]],
    where: str,
) -> None:
    d, _ = daemon
    job, agent = await _running_agent(d)
    session, base = sessions[where]
    beat = {"key": agent["instance_key"], "phase": "run", "log_offset": 0}
    url = f"{base}/agent/v1/heartbeat"
    async with session.post(url, json=beat) as r:
        assert r.status == 401, await r.text()
    bad = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # the admin's token is not an agent's
    async with session.post(url, json=beat, headers=bad) as r:
        assert r.status == 401, await r.text()
    good = {"Authorization": f"Bearer {agent['token']}"}
    async with session.post(url, json=beat, headers=good) as r:
        assert r.status == 200, await r.text()
        assert "log_offset" in await r.json()
    async with d.client() as c:
        await c.cancel(job["id"])


async def test_a_local_job_runs_end_to_end_through_the_agent_socket(
    daemon: tuple[DaemonProc, int],
) -> None:
    d, _ = daemon
    async with d.client() as c:
        job = await c.launch(
            "name: hello\nrun: |\n  echo hello from the agent socket\n", filename="h.yaml"
        )
        seen: dict[str, Any] = {}

        def running(j: dict[str, Any]) -> bool:
            for p in (d.home / "local" / "instances").glob("*/agent.json"):
                seen.update(json.loads(p.read_text()))
            return j["status"] in TERMINAL

        job = await wait_job(c, job["id"], running, timeout=60, what="the job")
        text = await logs(c, job["id"])
    assert job["status"] == "SUCCEEDED", (job, text)
    assert "hello from the agent socket" in text
    assert seen.get("daemon_url") == f"unix:{d.home / 'agent.sock'}"


# -- configuration, as pure functions -----------------------------------------------------------


def _settings(**kw: Any) -> Settings:
    return Settings(home=Path("/tmp/none"), db_url="sqlite://", **kw)


@pytest.mark.parametrize(
    ("kw", "url"),
    [
        ({}, None),
        ({"agent_host": "10.0.0.5", "agent_port": 8471}, "http://10.0.0.5:8471"),
        (
            {"agent_host": "10.0.0.5", "agent_port": 8471, "tls_cert": Path("c")},
            "https://10.0.0.5:8471",
        ),
        ({"agent_host": "::1", "agent_port": 9}, "http://[::1]:9"),
        ({"agent_host": "0.0.0.0", "agent_port": 9}, None),  # no address to hand out
        (
            {"agent_host": "0.0.0.0", "agent_port": 9, "agent_url": "https://head:9"},
            "https://head:9",
        ),
    ],
)
def test_agent_listener_url(kw: dict[str, Any], url: str | None) -> None:
    assert agent_listener_url(_settings(**kw)) == url


@pytest.mark.parametrize(
    ("kw", "refused"),
    [
        ({"agent_host": "127.0.0.1", "agent_port": 9}, False),
        ({"agent_host": "0.0.0.0", "agent_port": 9}, True),
        ({"agent_host": "0.0.0.0", "agent_port": 9, "allow_plaintext_tcp": True}, False),
        ({}, False),
    ],
)
def test_the_agent_port_follows_the_tcp_apis_plaintext_rule(
    kw: dict[str, Any], refused: bool
) -> None:
    if refused:
        with pytest.raises(TransportError, match="without TLS"):
            agent_tls(_settings(**kw))
    else:
        assert agent_tls(_settings(**kw)) is None
