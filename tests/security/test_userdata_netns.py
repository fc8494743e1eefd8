"""The real EC2 user-data, booted the way an instance boots it, in a box on this machine.

Attack surface under test: the user-data (readable for the instance's life) carries no secret;
the agent asks the metadata service with IMDSv2 session tokens only; it installs spotd from
what the daemon's operator configured; it fetches its config once, over TLS, and reports.

The box: a network namespace this test creates, joined to this machine by a veth pair in a
private /30 (in 10.213.0.0/16, behind an ``unreachable`` route for 10.213.0.0/16 while the test
runs, so nothing can leave by the default route); inside it a fake instance-metadata service on
169.254.169.254 (the namespace's loopback; IMDSv2: PUT a token, then GETs with it; a GET
without one is 401) that serves the user-data the daemon gave moto; a wheel of spotd built by
the test and served from the host end of the veth; the daemon on https at the host end. A
stand-in for cloud-init fetches the user-data from the metadata service and runs it with bash,
as root, in the namespace — the script is the daemon's, unedited.

What cannot exist in the box is supplied by the environment, never by editing the script:
- no package index: ``PIP_NO_INDEX``/``PIP_NO_DEPS`` make pip install the served wheel alone,
  and ``PYTHONPATH`` lends the agent this checkout's dependencies (spotd itself comes from the
  wheel in the script's venv: the test checks where it was imported from);
- the script's paths (/opt/spotd, /var/lib/spotd, /var/log) are bind mounts of temporary
  directories in a private mount namespace, so nothing is written to this machine's own;
- no systemd: the script starts the agent with nohup when systemd is not running.

Needs root and iproute2 (``ip netns``) and ``unshare``: without them the test fails under
``CI=true`` and is skipped, saying why, elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import site
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from spotd.config import load_settings
from spotd.providers.base import TAG_HOME
from tests.aws.motoserver import AMI, Moto, aws_env, moto_server  # noqa: F401
from tests.conftest import ROOT, DaemonProc
from tests.e2e.helpers import logs, wait_job

pytestmark = [pytest.mark.aws, pytest.mark.slow]

GUARD = "10.213.0.0/16"  # unreachable while the test runs: nothing leaves by the default route
_NET = f"10.213.{os.getpid() % 250}"  # a /30 of its own for each test process
HOST_IP, NS_IP, PREFIX = f"{_NET}.1", f"{_NET}.2", 30
IMDS_IP = "169.254.169.254"
REGION = "us-east-1"
TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}
SECRET = "netns-s3cr3t-" + uuid.uuid4().hex[:8]


def _require_netns() -> None:
    """Root, ``ip`` and ``unshare``; fail under CI (it must run there), skip elsewhere."""
    problem = ""
    if os.geteuid() != 0:
        problem = "needs root (network namespaces, bind mounts)"
    elif shutil.which("ip") is None:
        problem = "needs iproute2's `ip` (ip netns)"
    elif shutil.which("unshare") is None:
        problem = "needs util-linux's `unshare`"
    if problem:
        msg = f"the user-data-in-a-network-namespace test {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        msg = f"`ip {' '.join(args)}` failed: {r.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(f"no network namespace support here: {msg}")
    return r


@dataclass(frozen=True)
class Box:
    name: str  # the network namespace
    root: Path  # what the instance's /opt, /var/lib and /var/log are


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    _require_netns()
    tag = f"{os.getpid() % 100000}"
    name, host_if, ns_if = f"spotd-ud-{tag}", f"sdh{tag}", f"sdn{tag}"
    root = tmp_path / "instance"
    for d in ("opt", "var-lib", "var-log"):
        (root / d).mkdir(parents=True)
    guarded = _ip("route", "add", "unreachable", GUARD, check=False).returncode == 0
    try:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        # the metadata service's address on the namespace's own loopback (no dummy module here)
        _ip("-n", name, "addr", "add", f"{IMDS_IP}/32", "dev", "lo")
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", name)
        _ip("addr", "add", f"{HOST_IP}/{PREFIX}", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{NS_IP}/{PREFIX}", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        yield Box(name, root)
    finally:
        # every process in the namespace is this test's (the metadata service, the agent, its
        # job): stopped by pid, then the namespace and the veth go
        pids = _ip("netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", name, check=False)
        _ip("link", "del", host_if, check=False)
        if guarded:
            _ip("route", "del", "unreachable", GUARD, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout (``pip wheel --no-deps``), built from a copy so that the
    build's files never land in the working tree."""
    top = tmp_path_factory.mktemp("wheel")
    src, dist = top / "src", top / "dist"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.split(b"\0")
    for f in (f.decode() for f in files if f):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(dist)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [whl] = dist.glob("spotd-*.whl")
    return whl


class Served:
    """A tiny HTTP server on the host end of the veth, serving one directory."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        served = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                served.requests.append(self.path)

        handler = functools.partial(Handler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer((HOST_IP, 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


IMDS_SERVER = r"""
import http.server, json, secrets, sys, time
from pathlib import Path
user_data, log = Path(sys.argv[1]), Path(sys.argv[2])
tokens = {}
class H(http.server.BaseHTTPRequestHandler):
    def _log(self, status, authed):
        with log.open("a") as f:
            rec = {"m": self.command, "p": self.path, "s": status, "t": authed}
            f.write(json.dumps(rec) + "\n")
    def _send(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds") or 0)
        if self.path != "/latest/api/token" or not 1 <= ttl <= 21600:
            self._log(400, False); return self._send(400)
        token = secrets.token_urlsafe(24)
        tokens[token] = time.monotonic() + ttl
        self._log(200, False); self._send(200, token.encode())
    def do_GET(self):
        t = self.headers.get("X-aws-ec2-metadata-token", "")
        if tokens.get(t, 0) < time.monotonic():
            self._log(401, False); return self._send(401)   # IMDSv2 only
        if self.path == "/latest/user-data" and user_data.exists():
            self._log(200, True); return self._send(200, user_data.read_bytes())
        self._log(404, True); self._send(404)   # no spot/instance-action: no interruption
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("169.254.169.254", 80), H).serve_forever()
"""

CLOUD_INIT = r"""
set -euo pipefail
mount --bind "$BOX/opt" /opt
mount --bind "$BOX/var-lib" /var/lib
mount --bind "$BOX/var-log" /var/log
md=http://169.254.169.254  # wait (up to 30 s on a loaded machine) for it to listen
for _ in $(seq 300); do curl -sf -o /dev/null -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
  $md/latest/api/token && break; sleep 0.1; done
t=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' $md/latest/api/token)
curl -sf -H "X-aws-ec2-metadata-token: $t" $md/latest/user-data > "$BOX/user-data"
exec bash "$BOX/user-data"
"""


_SPOTD = (sys.executable, "-m", "spotd.main")


def _in(box: Box) -> list[str]:
    return ["ip", "netns", "exec", box.name]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def daemon(
    box: Box,
    wheel: Path,
    moto_server: Moto,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[tuple[DaemonProc, Served]]:
    tls = tmp_path / "tls"
    r = subprocess.run(
        [*_SPOTD, "tls", "init", "--dir", str(tls), "--hosts", f"{HOST_IP},127.0.0.1,localhost"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    port = _free_port(HOST_IP)
    with Served(wheel.parent) as served:
        aws_cfg = {
            "regions": [REGION],
            "endpoint_url": moto_server.url,
            "image_id": AMI,
            "daemon_url": f"https://{HOST_IP}:{port}",
            "agent_install": f"http://{HOST_IP}:{served.port}/{wheel.name}",
        }
        home = Path(f"/tmp/spotd-ud{os.getpid()}-{uuid.uuid4().hex[:6]}")
        d = DaemonProc(
            home,
            {
                **aws_env(moto_server),
                "SPOTD_TCP": f"{HOST_IP}:{port}",
                "SPOTD_API_TOKEN": "ud-admin-token",
                "SPOTD_TLS_CERT": str(tls / "server.pem"),
                "SPOTD_TLS_KEY": str(tls / "server.key"),
                "SPOTD_TLS_CA": str(tls / "ca.pem"),
                "SPOTD_OBSERVE_INTERVAL": "0.3",
                "SPOTD_PROVIDERS_JSON": json.dumps({"aws": aws_cfg}),
            },
        )
        d.start()
        try:
            yield d, served
        finally:
            d.stop()
            print(d.log_tail(6000))  # shown when the test failed
            shutil.rmtree(home, ignore_errors=True)


async def _user_data(moto: Moto, home_tag: str, timeout: float = 30) -> str:
    async with aioboto3.Session().client("ec2", region_name=REGION, endpoint_url=moto.url) as ec2:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await ec2.describe_instances(
                Filters=[{"Name": f"tag:{TAG_HOME}", "Values": [home_tag]}]
            )
            for inst in (i for res in r["Reservations"] for i in res["Instances"]):
                if inst["State"]["Name"] == "running":
                    ud = await ec2.describe_instance_attribute(
                        InstanceId=inst["InstanceId"], Attribute="userData"
                    )
                    return base64.b64decode(ud["UserData"]["Value"]).decode()
            await asyncio.sleep(0.2)
    raise AssertionError("the daemon launched no instance on moto")


JOB = """
name: netns-boot
resources:
  accelerators: T4:1
  use_spot: true
secrets: {HF_TOKEN: null}
run: echo "booted in the box with $HF_TOKEN"
"""


async def test_the_user_data_boots_an_agent_that_registers(
    box: Box,
    daemon: tuple[DaemonProc, Served],
    moto_server: Moto,  # noqa: F811
    tmp_path: Path,
) -> None:
    d, wheel_server = daemon
    imds_log = tmp_path / "imds.log"
    (tmp_path / "imds.py").write_text(IMDS_SERVER)
    imds = subprocess.Popen(
        [
            *_in(box),
            sys.executable,
            str(tmp_path / "imds.py"),
            str(box.root / "served-user-data"),
            str(imds_log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "imds.err", "wb"),  # noqa: SIM115 - the child's
    )
    try:
        async with d.client() as c:
            job = await c.launch(JOB, filename="n.yaml", infra="aws", env={"HF_TOKEN": SECRET})
            script = await _user_data(moto_server, load_settings(d.home, env=d.env).home_tag)
            assert SECRET not in script and "bootstrap_token" not in script  # gzip+base64
            (box.root / "served-user-data").write_text(script)
            env = {
                **os.environ,
                "BOX": str(box.root),
                # what the box cannot have: an index (the wheel alone), spotd's dependencies
                "PIP_NO_INDEX": "1",
                "PIP_NO_DEPS": "1",
                "PYTHONPATH": ":".join(site.getsitepackages()),
            }
            env.pop("VIRTUAL_ENV", None)
            with open(tmp_path / "cloud-init.out", "wb") as out:
                boot = await asyncio.to_thread(
                    subprocess.run,
                    [
                        "ip",
                        "netns",
                        "exec",
                        box.name,
                        "unshare",
                        "-m",
                        "--propagation",
                        "private",
                        "bash",
                        "-c",
                        CLOUD_INIT,
                    ],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=180,
                )
            boot_log = box.root / "var-log" / "spotd-bootstrap.log"
            said = (tmp_path / "cloud-init.out").read_text() + (
                boot_log.read_text() if boot_log.exists() else ""
            )
            assert boot.returncode == 0, said
            job = await wait_job(
                c, job["id"], lambda j: j["status"] in TERMINAL, timeout=90, what="the job"
            )
            inst = next((box.root / "var-lib" / "spotd").iterdir())
            agent_out = (inst / "agent.out").read_text() if (inst / "agent.out").exists() else ""
            assert job["status"] == "SUCCEEDED", (job, said, agent_out)
            assert f"booted in the box with {SECRET}" in await logs(c, job["id"])
    finally:
        imds.kill()
        imds.wait(10)
    # spotd came from the served wheel, into the script's venv
    assert any(p.endswith(".whl") for p in wheel_server.requests), wheel_server.requests
    assert list((box.root / "opt" / "spotd").glob("lib/python*/site-packages/spotd/agent"))
    # ...and nowhere else the agent could import it from (PYTHONPATH lends only dependencies;
    # this checkout's editable install works through a .pth, which PYTHONPATH does not read)
    assert not any((Path(p) / "spotd").exists() for p in site.getsitepackages())
    # the agent fetched its config (0600) with the bootstrap token, which is gone
    assert stat.S_IMODE((inst / "agent.json").stat().st_mode) == 0o600
    assert json.loads((inst / "agent.json").read_text())["envs"]["HF_TOKEN"] == SECRET
    assert not (inst / "bootstrap.json").exists()
    # no systemd in the box: the script's fallback started the agent with nohup (agent.out)
    assert (inst / "agent.out").exists()
    # IMDSv2: the user-data and the agent's notice polls all carried a session token
    calls = [json.loads(line) for line in imds_log.read_text().splitlines()]
    polls = [x for x in calls if x["p"] == "/latest/meta-data/spot/instance-action"]
    assert all(x["t"] for x in polls), calls[-5:]  # the job may end before the first poll
    read = [i for i, x in enumerate(calls) if x["p"] == "/latest/user-data" and x["s"] == 200]
    assert read, calls
    # the agent did its own token exchange once the user-data had started it
    assert any(x["m"] == "PUT" and x["p"] == "/latest/api/token" for x in calls[read[0] + 1 :])
