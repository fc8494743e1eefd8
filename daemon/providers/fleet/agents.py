"""Every instance's agent, played by one asyncio task group over the real agent API.

Each report is the body ``spotd.agent.main`` posts to ``POST /agent/v1/heartbeat`` (phase, exit
code, notice deadline, the next slice of the node's log from the acknowledged offset), with the
instance's own bearer token, to the ``daemon_url`` its ``AgentConfig`` names: the daemon's real
routes, store writes and wake-ups carry the load. Like the real agent it reports at once when
something changed and otherwise once per ``heartbeat_seconds`` (a keep-alive); it goes silent
when its instance is reclaimed or terminated, and stops once the daemon has acknowledged a final
phase (``exited``, ``preempted``), as the real agent exits then.

One pool of ``concurrency`` workers drains a queue of instances with news, so a burst of ten
thousand readies is sent at the daemon's pace, never ten thousand requests at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable

import aiohttp
import structlog

from spotd.aiokit import sleep
from spotd.providers.fleet.model import FleetModel, Inst

__all__ = ["AgentPool"]

log = structlog.get_logger("spotd.providers.fleet.agents")

FINAL_PHASES = frozenset({"exited", "setup_failed", "preempted"})
RETRY_SECONDS = 1.0  # a daemon away: try again this soon


class AgentPool:
    """The simulated agents of one fleet; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        model: FleetModel,
        *,
        concurrency: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._model = model
        self._clock = clock
        self._concurrency = concurrency
        self._queue: asyncio.Queue[Inst] = asyncio.Queue()
        self._queued: set[str] = set()
        self._sessions: dict[str, tuple[aiohttp.ClientSession, str]] = {}
        self.tick = asyncio.Event()  # set when the model gained events (a launch): re-plan
        self.sent = 0
        self.failed = 0

    def _session(self, url: str) -> tuple[aiohttp.ClientSession, str]:
        held = self._sessions.get(url)
        if held is None:
            if url.startswith("unix:"):
                conn = aiohttp.UnixConnector(path=url[len("unix:") :], limit=self._concurrency)
                held = (aiohttp.ClientSession(connector=conn), "http://spotd")
            else:
                conn2 = aiohttp.TCPConnector(limit=self._concurrency)
                held = (aiohttp.ClientSession(connector=conn2), url.rstrip("/"))
            self._sessions[url] = held
        return held

    async def run(self, stop: asyncio.Event) -> None:
        workers = [
            asyncio.create_task(self._worker(stop), name=f"fleet-agent-{n}")
            for n in range(self._concurrency)
        ]
        try:
            while not stop.is_set():
                now = self._clock()
                for inst in self._model.advance(now):
                    self._enqueue(inst)
                due = self._model.next_due()
                wait = 0.5 if due is None else min(0.5, max(0.0, due - self._clock()))
                self.tick.clear()
                await sleep(wait, self.tick, stop)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for session, _ in self._sessions.values():
                await session.close()

    def _enqueue(self, inst: Inst) -> None:
        if inst.key not in self._queued:
            self._queued.add(inst.key)
            self._queue.put_nowait(inst)

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            inst = await self._queue.get()
            self._queued.discard(inst.key)
            with contextlib.suppress(asyncio.CancelledError):
                await self._report(inst)

    async def _report(self, inst: Inst) -> None:
        """Post one heartbeat for ``inst``; plan its next keep-alive (or none: it is done)."""
        if not inst.alive or inst.phase == "":
            return  # reclaimed or terminated since it was queued: the machine is gone
        period = float(inst.agent.get("heartbeat_seconds") or 0.5)
        now = self._clock()
        if now < inst.partitioned_until:
            self._model.beat_later(inst, now + period)
            return
        report = inst.report()
        chunk = inst.log[inst.log_offset :]
        body = {
            "key": inst.key,
            "phase": report[0],
            "exit_code": report[1],
            "notice_deadline": report[2],
            "log_offset": inst.log_offset,
            "log_b64": base64.b64encode(chunk).decode(),
            "checkpoint_synced_at": None,
        }
        session, base = self._session(str(inst.agent.get("daemon_url") or ""))
        headers = {"Authorization": f"Bearer {inst.agent.get('token', '')}"}
        try:
            async with session.post(
                f"{base}/agent/v1/heartbeat",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                status = r.status
                data = await r.json() if status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            self.failed += 1
            self._model.beat_later(inst, self._clock() + RETRY_SECONDS)
            return
        self.sent += 1
        if status == 401:
            return  # the daemon does not know this instance (any more): nobody to tell
        if status != 200:
            self._model.beat_later(inst, self._clock() + RETRY_SECONDS)
            return
        inst.log_offset = int(data.get("log_offset", inst.log_offset))
        inst.acked = report
        if inst.report() != report:
            self._enqueue(inst)  # news arrived while this one was on its way
        elif report[0] in FINAL_PHASES:
            return  # acknowledged: the agent's work is done, it exits
        else:
            self._model.beat_later(inst, self._clock() + period)
