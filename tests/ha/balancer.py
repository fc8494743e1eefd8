"""A TCP balancer in front of several daemons' agent listeners: what a Kubernetes Service is.

Every agent is told one URL (``SPOTD_AGENT_URL``), this balancer's; each connection it accepts
goes to the next ready daemon in turn, or to the one after that if it does not accept. A daemon
is ready while its API answers ``GET /v1/health`` (a readiness probe, every ``probe_every``
seconds): a daemon paused with SIGSTOP still accepts connections in its kernel's backlog, so
only an answer tells it is there. It runs on its own event loop in a thread of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from dataclasses import dataclass

import aiohttp

__all__ = ["Balancer", "Target"]

CONNECT_SECONDS = 1.0
PROBE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    """One daemon: where its agent listener is, and where its API answers the probe."""

    agent_port: int
    api_port: int


class Balancer:
    """``with Balancer(port, targets, token):`` forwards 127.0.0.1:``port`` while open."""

    def __init__(
        self, port: int, targets: list[Target], token: str, *, probe_every: float = 0.5
    ) -> None:
        self.port = port
        self.targets = targets
        self.token = token
        self.probe_every = probe_every
        self.ready: set[Target] = set()
        self.forwarded = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="ha-balancer", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> Balancer:
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        probes = asyncio.create_task(self._probe_forever())
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            probes.cancel()
            server.close()
            for writer in self._open:
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
            await asyncio.gather(probes, return_exceptions=True)

    async def _probe_forever(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = aiohttp.ClientTimeout(total=PROBE_SECONDS)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            while True:
                answers = await asyncio.gather(*(self._probe(session, t) for t in self.targets))
                self.ready = {t for t, ok in zip(self.targets, answers, strict=True) if ok}
                await asyncio.sleep(self.probe_every)

    @staticmethod
    async def _probe(session: aiohttp.ClientSession, target: Target) -> bool:
        try:
            async with session.get(f"http://127.0.0.1:{target.api_port}/v1/health") as r:
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    def _order(self) -> list[Target]:
        """The ready daemons from the next one in turn, then the others (a probe may lag)."""
        start = next(self._turn) % len(self.targets)
        turn = self.targets[start:] + self.targets[:start]
        return [t for t in turn if t in self.ready] + [t for t in turn if t not in self.ready]

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for target in self._order():
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", target.agent_port), CONNECT_SECONDS
                )
            except (OSError, TimeoutError):
                continue
            self.forwarded += 1
            self._open |= {writer, up_writer}
            try:
                await asyncio.gather(
                    _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
                )
            finally:
                self._open -= {writer, up_writer}
            return
        writer.close()  # nobody accepts: the agent retries, as against a Service with no pods


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        writer.close()
