"""What the ship-code tests share: a service whose replicas show the code and the file they
restored, and the client's folders it is served from (``tests/services/test_ship_code.py``;
the AWS, Kubernetes and Slurm tiers' ``test_service_packages.py``; the SDK's)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from spotd.sdk.client import ApiError
from spotd.sdk.client_serve import serve_logs

SERVER = """
import http.server, os
from pathlib import Path

import greet  # shipped in the workdir

NOTE = Path(os.environ["NOTE_FILE"]).read_text().strip()  # shipped as a file mount


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{greet.MESSAGE} {NOTE}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


port = int(os.environ["SPOTD_REPLICA_PORT"])
print("listening on", port, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

YAML = """
name: shipped
resources:
  cpus: 1+
  use_spot: true
envs:
  NOTE_FILE: {target}/note.txt
workdir: app
file_mounts:
  {target}: mount
service:
  readiness_probe: /health
  replicas: 2
run: exec python server.py
"""


def spec_text(root: Path) -> str:
    """The service; the mount lands in a folder of this test's (replicas share the machine)."""
    return YAML.format(target=root / "restored")


def write_sources(root: Path, version: str) -> None:
    """The client's files: a workdir with the server and a module, a folder to mount."""
    app = root / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "server.py").write_text(SERVER)
    (app / "greet.py").write_text(f"MESSAGE = 'code-{version}'\n")
    mount = root / "mount"
    mount.mkdir(exist_ok=True)
    (mount / "note.txt").write_text(f"note-{version}\n")


def remove_sources(root: Path) -> None:
    shutil.rmtree(root / "app")
    shutil.rmtree(root / "mount")


async def answers(endpoint: str, n: int = 8) -> set[str]:
    got = set()
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"{endpoint}/") as resp:
                assert resp.status == 200, await resp.text()
                got.add(await resp.text())
    return got


# a replica whose address this machine cannot reach (a moto instance's, a pod's): never READY
# here, so its run reports what it restored through its log
REMOTE_YAML = """
name: shipped
resources:
  accelerators: T4:1
  use_spot: true
envs:
  NOTE_FILE: {target}/note.txt
workdir: app
file_mounts:
  {target}: mount
service:
  readiness_probe:
    path: /health
    initial_delay_seconds: 600
  replicas: 1
run: |
  python3 - <<'PY'
  import greet, os
  print("served", greet.MESSAGE, open(os.environ["NOTE_FILE"]).read().strip(), flush=True)
  PY
  exec sleep 120
"""


async def replica_log(c: Any, needle: str, timeout: float = 60) -> str:
    """Replica 1's log (as its agent's heartbeats carried it) once it holds ``needle``."""
    deadline = time.monotonic() + timeout
    log = ""
    while needle not in log and time.monotonic() < deadline:
        try:
            log = b"".join([x async for x in serve_logs(c, "shipped", replica=1)]).decode()
        except ApiError as exc:  # 404 until the worker has written the replica's row
            assert exc.status == 404, exc
        await asyncio.sleep(0.3)
    return log


@contextlib.asynccontextmanager
async def reaping(root: Path, home: Path) -> AsyncIterator[None]:
    """On the way out, SIGKILL what the test left running: its replicas' runs (found by
    ``REMOTE_YAML``'s ``NOTE_FILE`` under ``root``: a harness that plays the machine kills the
    agent, and the run, in its own session, would outlive it) and, after a failure that
    skipped ``serve down``, the service's LB (which names the daemon's ``home``)."""
    try:
        yield
    finally:
        run = f"NOTE_FILE={root}/".encode()
        lb = (b"spotd.lb", str(home).encode() + b"/")
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes()
                if run in (proc / "environ").read_bytes() or all(n in cmd for n in lb):
                    os.kill(int(proc.name), signal.SIGKILL)
