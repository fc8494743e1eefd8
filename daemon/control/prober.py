"""Readiness probes of service replicas, folded into their status by ``serve.probe_step``.

One prober per service probes every replica in a probed status (STARTING, READY, NOT_READY)
each ``probe_interval``; each probe runs as its own task, so a slow replica never delays the
others or the service's worker. An answer moves the replica only through ``probe_step``:
STARTING → READY on the first success after the initial delay, READY → NOT_READY after
``failure_threshold`` failures in a row, NOT_READY → FAILED_PROBE after ``not_ready_timeout``
(the worker then replaces it). The LB's ejection report wakes the prober at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from spotd.aiokit import sleep
from spotd.control.serve_config import LIVE_SERVICE, ServeSettings
from spotd.serve.replica_state import PROBED_STATUSES, ProbeState, ReplicaStatus, probe_step
from spotd.spec import ServiceSpec, Task
from spotd.store import AsyncStore, ReplicaRow, ServiceRow, StaleTransition
from spotd.types import ZoneEventKind

S = ReplicaStatus


class ReplicaOwner(Protocol):
    """What the prober needs from the service controller."""

    async def task_version(self, svc: ServiceRow, version: int) -> Task: ...

    async def end(self, row: ReplicaRow, to: ReplicaStatus, reason: str, now: float) -> None: ...

    async def zone_event(self, row: ReplicaRow, kind: ZoneEventKind, now: float) -> None: ...

    def wake(self, service_id: int) -> None: ...


class Prober:
    def __init__(
        self,
        *,
        serve: ServeSettings,
        store: AsyncStore,
        owner: ReplicaOwner,
        session: Callable[[], aiohttp.ClientSession],
        stop: asyncio.Event,
        clock: Callable[[], float],
    ) -> None:
        self.serve = serve
        self.store = store
        self._owner = owner
        self._session = session
        self._stop = stop
        self._clock = clock
        self._states: dict[str, ProbeState] = {}
        self._probing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def starting(self, key: str, now: float) -> None:
        """The replica's server is starting: count the initial delay from ``now``."""
        self._states[key] = ProbeState.starting(now)

    def forget(self, key: str) -> None:
        self._states.pop(key, None)

    def forget_service(self, service_id: int) -> None:
        prefix = f"s{service_id}-r"
        for key in [k for k in self._states if k.startswith(prefix)]:
            del self._states[key]

    def size(self) -> int:
        return len(self._states) + len(self._probing) + len(self._tasks)

    def cancel(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    async def run(self, sid: int, wake: asyncio.Event) -> None:
        """Probe every probed replica of the service each ``probe_interval``."""
        while not self._stop.is_set():
            wake.clear()
            svc = await self.store.get_service(sid)
            if svc is None or svc.status not in LIVE_SERVICE:
                return
            for row in await self.store.replicas(service_id=sid, live_only=True):
                if row.status not in PROBED_STATUSES or not row.url or row.key in self._probing:
                    continue
                spec = (await self._owner.task_version(svc, row.version)).service
                assert spec is not None
                self._probing.add(row.key)
                t = asyncio.create_task(self._probe_one(svc, row, spec), name=f"probe:{row.key}")
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
            await sleep(self.serve.probe_interval, wake, self._stop)

    async def _probe_one(self, svc: ServiceRow, row: ReplicaRow, spec: ServiceSpec) -> None:
        probe = spec.readiness_probe
        ok = False
        detail = ""
        try:
            kw: dict[str, Any] = {
                "headers": probe.headers,
                "timeout": aiohttp.ClientTimeout(total=probe.timeout_seconds),
            }
            if probe.post_data is None:
                method = "GET"
            else:
                method = "POST"
                kw["json" if isinstance(probe.post_data, dict) else "data"] = probe.post_data
            async with self._session().request(method, row.url + probe.path, **kw) as r:
                await r.read()
                ok = r.status == 200
                detail = f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = type(exc).__name__
        finally:
            self._probing.discard(row.key)
        try:
            await self._apply(svc, row.key, ok, detail, spec)
        except StaleTransition:
            pass  # the worker moved the replica meanwhile: this answer is stale

    async def _apply(
        self, svc: ServiceRow, key: str, ok: bool, detail: str, spec: ServiceSpec
    ) -> None:
        row = await self.store.get_replica(key)
        if row is None or row.status not in PROBED_STATUSES:
            return
        now = self._clock()
        state = self._states.get(key)
        if state is None or state.status != row.status:
            state = ProbeState(status=row.status, started_at=row.started_at or now)
        new, moved = probe_step(
            state,
            ok,
            now=now,
            initial_delay=spec.readiness_probe.initial_delay_seconds,
            failure_threshold=self.serve.failure_threshold,
            not_ready_timeout=self.serve.not_ready_timeout,
        )
        self._states[key] = new
        if moved is None:
            return
        if moved == S.FAILED_PROBE:
            await self._owner.end(row, S.FAILED_PROBE, f"readiness probe failing ({detail})", now)
        else:
            fields: dict[str, Any] = {}
            if moved == S.READY and row.ready_at is None:
                fields["ready_at"] = now
            await self.store.transition_replica(
                key,
                from_=[row.status],
                to=moved,
                now=now,
                reason=f"readiness probe {'passed' if ok else 'failed'} ({detail})",
                **fields,
            )
            if moved == S.READY:
                await self._owner.zone_event(row, ZoneEventKind.LAUNCHED, now)
        self._owner.wake(svc.id)
