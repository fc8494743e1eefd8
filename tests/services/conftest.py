"""Harness for the services tests: a real daemon with fast service timings, a load generator
in its own process, and process inspection for leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, kill_instance_groups

ROOT = Path(__file__).resolve().parents[2]
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"

SERVE_ENV = {
    "SPOTD_SERVE_TICK": "0.2",
    "SPOTD_SERVE_PROBE_INTERVAL": "0.25",
    "SPOTD_SERVE_STATS_INTERVAL": "0.5",
    "SPOTD_SERVE_QPS_WINDOW": "3",
    "SPOTD_SERVE_LAUNCH_BACKOFF": "0.5",
}


def stub_yaml(
    *,
    name: str = "svc",
    replicas: str = "replicas: 3",
    latency_ms: int = 20,
    token_delay_ms: int = 0,
    model: str = "m1",
    extra_envs: str = "",
) -> str:
    return f"""
name: {name}
resources:
  cpus: 1+
  use_spot: true
envs:
  MODEL: {model}
{extra_envs}
service:
  readiness_probe:
    path: /health
    initial_delay_seconds: 30
    timeout_seconds: 2
  {replicas}
run: |
  exec python -m spotd.serve.stub_replica --port $SPOTD_REPLICA_PORT --id r$SPOTD_REPLICA_ID \\
    --model $MODEL --latency-ms {latency_ms} --token-delay-ms {token_delay_ms} --grace 20
"""


def _cmdlines() -> dict[int, str]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                raw = (d / "cmdline").read_bytes()
                if raw:
                    out[int(d.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return out


def pids_matching(*needles: str) -> list[int]:
    return sorted(p for p, cmd in _cmdlines().items() if all(n in cmd for n in needles))


def stub_pid(port: int) -> int:
    pids = pids_matching("spotd.serve.stub_replica", f"--port {port} ")
    assert len(pids) == 1, f"expected one stub on port {port}, found {pids}"
    return pids[0]


class Load:
    """The load generator as a subprocess; ``finish()`` returns its JSON counts."""

    def __init__(self, url: str, tmp: Path, *args: str) -> None:
        self.stop_file = tmp / f"stop-{time.monotonic_ns()}"
        self.progress_file = tmp / f"progress-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(LOADGEN),
                url,
                "--stop-file",
                str(self.stop_file),
                "--progress-file",
                str(self.progress_file),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def progress(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.progress_file.read_text())
            return data
        except (FileNotFoundError, json.JSONDecodeError):
            return {"done": 0, "ok": 0, "failed": 0}

    async def wait_done(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.progress().get("done", 0) >= n:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"load generator ended early: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        raise AssertionError(f"load stalled: {self.progress()}")

    def finish(self, timeout: float = 40.0) -> dict[str, Any]:
        self.stop_file.touch()
        out, errs = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, errs
        result: dict[str, Any] = json.loads(out)
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def serve_daemon() -> Iterator[DaemonProc]:
    home = Path(f"/tmp/spotd-s{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(home, extra_env=SERVE_ENV)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        cleanup_services(home)
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


def cleanup_services(home: Path) -> None:
    """Kill LBs and replica servers a failed test left behind (by their home's paths/ports)."""
    for pid in pids_matching(str(home / "local" / "instances")):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    db = home / "state.db"
    if not db.exists():
        return
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn, contextlib.suppress(sqlite3.Error):
        ports = [r[0] for r in conn.execute("select port from replica")]
        lbs = [r[0] for r in conn.execute("select lb_port from service")]
    for port in ports:
        for pid in pids_matching("spotd.serve.stub_replica", f"--port {port} "):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    for port in lbs:
        for pid in pids_matching("spotd.lb", f"--port {port} "):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Callable[..., Load]]:
    started: list[Load] = []

    def start(url: str, *args: str) -> Load:
        ld = Load(url, tmp_path, *args)
        started.append(ld)
        return ld

    yield start
    for ld in started:
        ld.kill()


def ready(n: int, *, version: int | None = None) -> Callable[[dict[str, Any]], bool]:
    def pred(s: dict[str, Any]) -> bool:
        rs = [
            r
            for r in s["replicas"]
            if r["status"] == "READY" and (version is None or r["version"] == version)
        ]
        return len(rs) == n

    return pred
