"""Every instance's agent, played by one asyncio task group over the real agent API.

Each report is the body ``spotd.agent.main`` posts to ``POST /agent/v1/heartbeat`` (phase, exit
code, notice deadline, the next slice of the node's log from the acknowledged offset), with the
instance's own bearer token, to the ``daemon_url`` its ``AgentConfig`` names: the daemon's real
routes, store writes and wake-ups carry the load. Like the real agent it reports at once when
something changed and otherwise once per ``heartbeat_seconds`` (a keep-alive); it goes silent
when its instance is reclaimed or terminated, and stops once the daemon has acknowledged a final
phase (``exited``, ``preempted``), as the real agent exits then. A run that checkpoints
(``spotd.providers.fleet.model``) has its newest sync and progress in each report.

A multi-node job's agents follow the daemon's restart orders as the real one does
(``spotd.agent.gang``): the answer's ``restart`` with a newer generation stops the run
(``restarting``, then ``waiting`` once "synced"), its ``go`` starts it again (``run``, lasting
its script's ``sleep``s anew); a replacement (``SPOTD_GENERATION`` in its envs) waits for the
``go`` before it runs.

One pool of ``concurrency`` workers drains a queue of instances with news, so a burst of ten
thousand readies is sent at the daemon's pace, never ten thousand requests at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from spotd.aiokit import sleep
from spotd.providers.fleet.model import FleetModel, Inst, job_plan
from spotd.types import FINAL_PHASES

__all__ = ["AgentPool"]

log = structlog.get_logger("spotd.providers.fleet.agents")

RETRY_SECONDS = 1.0  # a daemon away: try again this soon
GENERATION_ENV = "SPOTD_GENERATION"  # a replacement's generation (spotd.control.node_keys)


@dataclass(slots=True)
class GangState:
    """One simulated agent's place in its job's restarts (``spotd.agent.gang``)."""

    generation: int = 0
    run_until: float = math.inf  # a restarted run's end (the model ends the first run)
    exit_code: int = 0


def gang_state(inst: Inst) -> GangState:
    """A new agent's: a replacement starts at its generation, waiting for the ``go``."""
    envs = inst.agent.get("envs") or {}
    raw = str(envs.get(GENERATION_ENV, "0")) if isinstance(envs, dict) else "0"
    state = GangState(generation=int(raw) if raw.isdigit() else 0)
    if state.generation and inst.phase == "run":
        inst.phase = "waiting"
    return state


def follow_order(inst: Inst, gang: GangState, order: Any, now: float) -> bool:
    """Apply a heartbeat answer's ``restart``; True when the agent has news to report."""
    if not isinstance(order, dict):
        return False
    try:
        generation, go = int(order["generation"]), bool(order["go"])
    except (KeyError, TypeError, ValueError):
        return False
    if generation > gang.generation:
        gang.generation = generation
        if inst.phase in ("run", "waiting", "restarting"):
            inst.phase = "restarting"  # stops its run, syncs: "waiting" on the next report
            return True
        return False
    if generation == gang.generation and go and inst.phase == "waiting":
        seconds, code = job_plan(inst.agent.get("run"))
        inst.phase = "run"
        gang.run_until, gang.exit_code = now + seconds, code
        return True
    return False


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
        self._gangs: dict[str, GangState] = {}  # instance key -> its restarts
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
        gang = self._gangs.get(inst.key) or gang_state(inst)
        if inst.phase == "restarting" and inst.acked is not None and inst.acked[0] == "restarting":
            inst.phase = "waiting"
        if inst.phase == "run" and now >= gang.run_until:
            inst.phase, inst.exit_code = "exited", gang.exit_code
        report = inst.report()
        chunk = inst.log[inst.log_offset :]
        synced, progress = self._model.checkpoint(inst, now) or (None, None)
        body = {
            "key": inst.key,
            "phase": report[0],
            "exit_code": report[1],
            "notice_deadline": report[2],
            "log_offset": inst.log_offset,
            "log_b64": base64.b64encode(chunk).decode(),
            "checkpoint_synced_at": synced,
            "checkpoint_progress": progress,
            "generation": gang.generation,
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
        follow_order(inst, gang, data.get("restart"), self._clock())
        if gang.generation:  # kept only for the agents of a job that restarted
            self._gangs[inst.key] = gang
        if inst.report() != report or inst.phase == "restarting":
            self._enqueue(inst)  # news arrived while this one was on its way
        elif report[0] in FINAL_PHASES:
            self._gangs.pop(inst.key, None)
            return  # acknowledged: the agent's work is done, it exits
        else:
            self._model.beat_later(inst, self._clock() + period)
