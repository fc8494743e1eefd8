"""Replicas that leave on purpose: make before break.

A READY (or NOT_READY) replica that must go — scale-down, an update, a preemption notice —
becomes DRAINING: pushed to the LB, which stops picking it while its in-flight requests
finish; its instance is terminated only once the LB counts no request in flight on it, or
when ``drain_timeout`` (or the notice's deadline) runs out. A replica that never served
(PROVISIONING, STARTING) has nothing in flight and is shut down at once. On a notice the
replacement is planned in the same step, because a DRAINING replica no longer counts as
capacity.
"""

from __future__ import annotations

from typing import Protocol

from spotd.control.lbkeeper import LbKeeper
from spotd.control.serve_config import ServeSettings
from spotd.serve.replica_state import ReplicaStatus
from spotd.store import AsyncStore, ReplicaRow, ServiceRow
from spotd.types import ZoneEventKind

S = ReplicaStatus


class ReplicaEnder(Protocol):
    """What draining needs from the service controller."""

    async def end(self, row: ReplicaRow, to: ReplicaStatus, reason: str, now: float) -> None: ...

    async def push(self, svc: ServiceRow) -> None: ...

    async def zone_event(self, row: ReplicaRow, kind: ZoneEventKind, now: float) -> None: ...


class Drainer:
    def __init__(
        self, *, serve: ServeSettings, store: AsyncStore, lbs: LbKeeper, owner: ReplicaEnder
    ) -> None:
        self._serve = serve
        self._store = store
        self._lbs = lbs
        self._owner = owner
        self._started: dict[str, float] = {}  # replica key -> when it began draining

    def forget(self, key: str) -> None:
        self._started.pop(key, None)

    def forget_service(self, service_id: int) -> None:
        prefix = f"s{service_id}-r"
        for key in [k for k in self._started if k.startswith(prefix)]:
            del self._started[key]

    def size(self) -> int:
        return len(self._started)

    async def notice(self, row: ReplicaRow, deadline: float, now: float) -> None:
        """A preemption notice: stop sending it requests, let in-flight ones finish, and let
        the planner replace it in this very step (a DRAINING replica is not capacity)."""
        if row.status in (S.DRAINING, S.SHUTTING_DOWN):
            return
        if row.notice_deadline is None:
            await self._store.update_replica_fields(row.key, notice_deadline=deadline)
        await self._owner.zone_event(row, ZoneEventKind.PREEMPTED, now)
        left = max(0.0, deadline - now)
        if row.status in (S.READY, S.NOT_READY):
            await self._store.transition_replica(
                row.key,
                from_=[row.status],
                to=S.DRAINING,
                reason=f"preemption notice: reclaimed in {left:.0f}s; draining, replacement "
                f"starting",
                now=now,
            )
            self._started[row.key] = now
        else:
            await self._owner.end(
                row,
                S.PREEMPTED,
                f"preemption notice before it was ready (reclaimed in {left:.0f}s)",
                now,
            )

    async def retire(self, row: ReplicaRow, reason: str, now: float) -> None:
        """Leave on purpose: READY ones drain first; the others have nothing in flight."""
        if row.status in (S.READY, S.NOT_READY):
            await self._store.transition_replica(
                row.key, from_=[row.status], to=S.DRAINING, reason=f"draining: {reason}", now=now
            )
            self._started[row.key] = now
        elif row.status in (S.PROVISIONING, S.STARTING):
            await self._store.transition_replica(
                row.key, from_=[row.status], to=S.SHUTTING_DOWN, reason=reason, now=now
            )
            fresh = await self._store.get_replica(row.key)
            assert fresh is not None
            await self._owner.end(fresh, S.TERMINATED, "shut down before it served", now)

    async def finish(self, svc: ServiceRow, now: float) -> None:
        """Finish DRAINING replicas whose in-flight requests are done (or out of time)."""
        rows = [
            r
            for r in await self._store.replicas(service_id=svc.id, live_only=True)
            if r.status == S.DRAINING
        ]
        if not rows:
            return
        in_flight = await self._lbs.in_flight(svc)  # None: the LB is away; wait, up to the timeout
        changed = False
        for row in rows:
            started = self._started.setdefault(row.key, now)
            busy = None if in_flight is None else in_flight.get(str(row.replica_id), 0)
            deadline = row.notice_deadline
            overdue = now - started >= self._serve.drain_timeout or (
                deadline is not None and now >= deadline
            )
            if busy != 0 and not overdue:
                continue
            why = "drained: no request in flight" if busy == 0 else "drain timed out"
            if row.notice_deadline is not None:
                await self._owner.end(
                    row, S.PREEMPTED, f"{why}; terminated before its notice ran out", now
                )
            else:
                fresh = await self._store.transition_replica(
                    row.key, from_=[S.DRAINING], to=S.SHUTTING_DOWN, reason=why, now=now
                )
                changed = True
                await self._owner.push(svc)
                await self._owner.end(fresh, S.TERMINATED, "shut down after draining", now)
            changed = True
        if changed:
            await self._owner.push(svc)
