"""Harness for the load-balancer tests: an in-process LB on real loopback sockets, in-process
upstream apps, and stub replicas as real subprocesses (for the failure tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from spotd.lb.app import make_control_app, running_proxy, serve_proxy
from spotd.lb.state import LBConfig, LBState

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token"


def free_port() -> int:
    """A loopback port nobody listens on (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_app(app: web.Application, **runner_kw: Any) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, **runner_kw)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@dataclass
class LB:
    state: LBState
    url: str
    control_url: str
    session: aiohttp.ClientSession  # a test client, not the LB's own
    runners: list[web.BaseRunner] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    async def put_replicas(self, replicas: list[dict[str, Any]]) -> dict[str, Any]:
        async with self.session.put(
            f"{self.control_url}/-/replicas", json=replicas, headers=self.auth
        ) as r:
            assert r.status == 200, await r.text()
            return await r.json()  # type: ignore[no-any-return]

    async def get_replicas(self) -> dict[str, Any]:
        async with self.session.get(f"{self.control_url}/-/replicas", headers=self.auth) as r:
            assert r.status == 200
            return await r.json()  # type: ignore[no-any-return]

    def in_flight(self) -> dict[str, int]:
        reps = self.state.replicas
        return {v.id: reps.stats[v.id].in_flight for v in reps.views}

    def tokens(self) -> dict[str, int]:
        """Outstanding tokens per replica (``least_tokens``)."""
        reps = self.state.replicas
        return {v.id: reps.stats[v.id].tokens for v in reps.views}


LBFactory = Callable[..., Awaitable[LB]]


@pytest.fixture
async def make_lb() -> AsyncIterator[LBFactory]:
    made: list[LB] = []
    stack = contextlib.AsyncExitStack()

    async def factory(**cfg: Any) -> LB:
        """The LB as ``python -m spotd.lb --control-port`` runs it: the proxy on aiohttp's
        low-level server, the control API on its own port."""
        cfg.setdefault("probe_interval", 0.2)
        state = LBState(LBConfig(**cfg), rng_seed=1)
        proxy = await stack.enter_async_context(running_proxy(state))
        runner = await serve_proxy(proxy, "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        crunner, curl = await serve_app(make_control_app(state, token=TOKEN))
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        lb = LB(state, url, curl, session, [runner, crunner])
        made.append(lb)
        return lb

    yield factory
    for lb in made:
        await lb.session.close()
        for r in lb.runners:
            await r.cleanup()
    await stack.aclose()


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Serve an in-process aiohttp app on loopback; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner, url = await serve_app(app)
        runners.append(runner)
        return url

    yield start
    for r in runners:
        await r.cleanup()


class StubProc:
    """``python -m spotd.serve.stub_replica`` as a real subprocess."""

    def __init__(self, *args: str, replica_id: str = "") -> None:
        self.port = free_port()
        self.id = replica_id or f"r{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spotd.serve.stub_replica",
                "--port",
                str(self.port),
                "--id",
                self.id,
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stub exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            with contextlib.suppress(OSError):  # noqa: SIM117
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.05)
        raise RuntimeError("stub replica did not become ready")

    def as_replica(self, state: str = "READY") -> dict[str, str]:
        return {"id": self.id, "url": self.url, "state": state}

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def stubs() -> Iterator[Callable[..., list[StubProc]]]:
    started: list[StubProc] = []

    def start(n: int, *args: str) -> list[StubProc]:
        new = [StubProc(*args) for _ in range(n)]
        started.extend(new)
        for s in new:
            s.wait_ready()
        return new

    yield start
    for s in started:
        s.stop()


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
