"""Agents verify the daemon they report to.

Attack: an agent on a cloud instance reports to the daemon's TCP API with its bearer token and
the job's log (which may print the task's secrets). Before: with the daemon on https, the agent
had no CA to check it against and no way to refuse a peer; it retried any failure for ever.
After: the daemon hands every agent that reports over https the CA of its certificate
(``daemon_ca_pem`` in the agent's config, from ``tls_ca``); the agent trusts that CA only for the
daemon's calls (the metadata service keeps its own plain session), and a certificate that does
not verify ends the agent at once (exit 3, the job stopped, a line saying why), sending nothing.

The real thing: ``spotd tls init`` makes the CA, a real daemon serves https on 127.0.0.1 with
AWS configured against moto, and the agent booted from the instance's own user-data reports the
job to the end. The same agent handed another CA, or facing a server with another CA's
certificate, refuses.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from spotd.agent.transport import UNTRUSTED_EXIT
from spotd.config import Settings, load_settings
from spotd.control.agent_config import daemon_ca_pem
from spotd.ops.tls import server_context
from spotd.providers import aws
from spotd.types import AgentConfig
from tests.aws.motoserver import AMI, Moto, aws_env, moto_server  # noqa: F401
from tests.aws.player import InstancePlayer
from tests.conftest import ROOT, DaemonProc, kill_instance_groups
from tests.e2e.helpers import logs, wait_job

REGIONS = ("us-east-1",)
HOSTS = ("--hosts", "localhost,127.0.0.1")
TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls_init(d: Path) -> Path:
    """``spotd tls init`` as an operator runs it, for 127.0.0.1 and localhost."""
    r = subprocess.run(
        [sys.executable, "-m", "spotd.main", "tls", "init", "--dir", str(d), *HOSTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tls_init(tmp_path_factory.mktemp("daemon-ca") / "tls")


@pytest.fixture(scope="module")
def other_tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another private CA, and a certificate it signed for the same names."""
    return _tls_init(tmp_path_factory.mktemp("other-ca") / "tls")


# -- which agents get the CA ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "with_ca", "gets_ca"),
    [
        ("https://10.0.0.5:8470", True, True),
        ("https://head.example:8470/", True, True),
        ("https://10.0.0.5:8470", False, False),  # a public CA: the system's trust store
        ("http://127.0.0.1:8470", True, False),  # no certificate to check
        ("unix:/var/lib/spotd/spotd.sock", True, False),
    ],
)
def test_agents_reporting_over_https_get_the_daemons_ca(
    tmp_path: Path, tls_dir: Path, url: str, with_ca: bool, gets_ca: bool
) -> None:
    settings = Settings(
        home=tmp_path, db_url="sqlite://", tls_ca=tls_dir / "ca.pem" if with_ca else None
    )
    expected = (tls_dir / "ca.pem").read_text() if gets_ca else ""
    assert daemon_ca_pem(settings, url) == expected


def test_the_instance_does_not_restart_an_agent_that_refused_the_daemon() -> None:
    assert aws.userdata.UNTRUSTED_EXIT == UNTRUSTED_EXIT
    agent = AgentConfig(
        instance_key="j1-a1-n0",
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run="true",
        daemon_url="https://10.0.0.5:8470",
        daemon_ca_pem="-----BEGIN CERTIFICATE-----\n...\n",
        instance_dir="/var/lib/spotd/j1-a1-n0",
    )
    script = aws.render_user_data(agent, install="spotd[aws]")
    assert f"--property=RestartPreventExitStatus={UNTRUSTED_EXIT}" in script
    assert aws.agent_from_user_data(script)["daemon_ca_pem"] == agent.daemon_ca_pem


# -- an agent process facing a server whose certificate another CA signed ----------------------


class FakeDaemon:
    """An https server on 127.0.0.1 answering heartbeats, with the certificate given."""

    def __init__(self, tls: Path) -> None:
        self.tls = tls
        self.heartbeats: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_post("/agent/v1/heartbeat", self.heartbeat)
        self.runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def heartbeat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.heartbeats.append(body)
        return web.json_response({"log_offset": body["log_offset"]})

    async def __aenter__(self) -> FakeDaemon:
        await self.runner.setup()
        ctx = server_context(self.tls / "server.pem", self.tls / "server.key")
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def _run_agent(inst: Path, cfg: AgentConfig, timeout: float = 30) -> tuple[int, str]:
    inst.mkdir(parents=True)
    (inst / "agent.json").write_text(json.dumps(asdict(cfg)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spotd.agent",
        str(inst),
        cwd=inst,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _agent_cfg(tmp_path: Path, url: str, ca_pem: str) -> AgentConfig:
    return AgentConfig(
        instance_key="j1-a1-n0",
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        # the job records its pid (whole: written aside, then renamed; an agent that stops
        # the job mid-write must not leave the test an empty file), then would run a minute
        run=f"echo $$ > {tmp_path}/job.pid.new && mv {tmp_path}/job.pid.new {tmp_path}/job.pid"
        "; exec sleep 60",
        daemon_url=url,
        daemon_ca_pem=ca_pem,
        token="agent-token",
        checkpoint_store=str(tmp_path / "store"),
        heartbeat_seconds=0.2,
        instance_dir=str(tmp_path / "inst"),
    )


async def _eventually(pred: Callable[[], bool], *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def test_an_agent_refuses_a_server_its_ca_did_not_sign(
    tmp_path: Path, tls_dir: Path, other_tls: Path
) -> None:
    """A man in the middle with a certificate for the right address, from another CA."""
    async with FakeDaemon(other_tls) as impostor:
        cfg = _agent_cfg(tmp_path, impostor.url, (tls_dir / "ca.pem").read_text())
        rc, err = await _run_agent(tmp_path / "inst", cfg)
    assert rc == UNTRUSTED_EXIT, err
    assert impostor.heartbeats == []  # neither the token nor the log went there
    assert "refusing the daemon at https://127.0.0.1" in err
    assert "does not verify against the CA in agent.json" in err
    assert "Not retrying" in err and "Traceback" not in err
    job_log = (tmp_path / "inst" / "job.log").read_text()
    assert "refusing the daemon" in job_log
    await asyncio.sleep(0.3)  # a job the agent left running would record its pid by now
    if (tmp_path / "job.pid").exists():  # the job had started: it was stopped with the agent
        pid = int((tmp_path / "job.pid").read_text())
        assert await _eventually(lambda: _gone(pid), timeout=5)


async def test_an_agent_without_a_ca_refuses_a_private_ca(tmp_path: Path, tls_dir: Path) -> None:
    """No ``daemon_ca_pem``: the system's trust store, which knows no private CA."""
    async with FakeDaemon(tls_dir) as daemon:
        rc, err = await _run_agent(tmp_path / "inst", _agent_cfg(tmp_path, daemon.url, ""))
    assert rc == UNTRUSTED_EXIT, err
    assert daemon.heartbeats == []
    assert "system's trust store" in err


async def test_a_ca_that_is_not_a_certificate_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    cfg = _agent_cfg(tmp_path, "https://127.0.0.1:9", "not a certificate")
    rc, err = await _run_agent(tmp_path / "inst", cfg)
    assert rc == UNTRUSTED_EXIT
    assert "daemon_ca_pem in agent.json" in err and "Traceback" not in err
    assert not (tmp_path / "job.pid").exists()


# -- the real daemon over https, the agent booted from EC2 user-data (moto) --------------------


@pytest.fixture
async def https_daemon(
    moto_server: Moto,  # noqa: F811
    tls_dir: Path,
) -> AsyncIterator[tuple[DaemonProc, str]]:
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    aws_cfg = {
        "regions": list(REGIONS),
        "endpoint_url": moto_server.url,
        "image_id": AMI,
        "daemon_url": url,  # agents on EC2 reach the daemon over TLS
        "notice_url": "http://127.0.0.1:9",
    }
    home = Path(f"/tmp/spotd-at{os.getpid()}-{uuid.uuid4().hex[:6]}")
    d = DaemonProc(
        home,
        {
            **aws_env(moto_server),
            "SPOTD_TCP": f"127.0.0.1:{port}",
            "SPOTD_API_TOKEN": "at-admin-token",
            "SPOTD_TLS_CERT": str(tls_dir / "server.pem"),
            "SPOTD_TLS_KEY": str(tls_dir / "server.key"),
            "SPOTD_TLS_CA": str(tls_dir / "ca.pem"),
            "SPOTD_OBSERVE_INTERVAL": "0.3",
            "SPOTD_PROVIDERS_JSON": json.dumps({"aws": aws_cfg}),
        },
    )
    d.start()
    try:
        yield d, url
    finally:
        d.stop()
        print(d.log_tail(6000))  # shown when the test failed
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


JOB = """
name: over-tls
resources:
  accelerators: T4:1
  use_spot: true
run: echo reported over TLS
"""


async def test_an_ec2_agent_reports_to_the_daemon_over_https(
    https_daemon: tuple[DaemonProc, str],
    moto_server: Moto,  # noqa: F811
    tls_dir: Path,
    other_tls: Path,
    tmp_path: Path,
) -> None:
    d, url = https_daemon
    home_tag = load_settings(d.home, env=d.env).home_tag
    forged = (other_tls / "ca.pem").read_text()
    untrusting: set[int] = set()

    def rewrite(cfg: dict[str, Any]) -> dict[str, Any]:
        # the second job's agent trusts another CA: as if the daemon it reached were an impostor
        return {**cfg, "daemon_ca_pem": forged} if cfg["job_id"] in untrusting else cfg

    seen: list[dict[str, Any]] = []
    player = InstancePlayer(
        url=moto_server.url,
        home_tag=home_tag,
        regions=REGIONS,
        root=tmp_path / "instances",
        env=aws_env(moto_server),
        rewrite=lambda cfg: seen.append(cfg) or rewrite(cfg),
    )
    async with player, d.client() as c:
        job = await c.launch(JOB, filename="tls.yaml", infra="aws")
        job = await wait_job(
            c, job["id"], lambda j: j["status"] in TERMINAL, timeout=60, what="the job"
        )
        assert job["status"] == "SUCCEEDED", job
        assert "reported over TLS" in await logs(c, job["id"])
        [cfg] = seen
        assert cfg["daemon_url"] == url
        assert cfg["daemon_ca_pem"] == (tls_dir / "ca.pem").read_text()

        second = await c.launch(JOB.replace("over-tls", "impostor"), filename="i.yaml", infra="aws")
        untrusting.add(second["id"])
        booted = await _eventually(lambda: len(seen) == 2, timeout=60)
        assert booted, "the second instance's agent never booted"
        key = seen[1]["instance_key"]
        [proc] = [p for p in player.agents.values() if p.args[-1].endswith(key)]
        rc = await asyncio.to_thread(proc.wait, 30)
        out = (tmp_path / "instances" / key / "agent.out").read_text()
        assert rc == UNTRUSTED_EXIT, out
        assert f"refusing the daemon at {url}" in out
    # the daemon never heard from the refusing agent: no log of its attempt
    assert not (d.home / "logs" / seen[1]["attempt_id"]).exists()
