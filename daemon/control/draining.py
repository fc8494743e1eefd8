"""Replicas that leave on purpose: make before break.

A READY (or NOT_READY) replica that must go — scale-down, an update — becomes DRAINING:
pushed to the LB, which stops picking it while its in-flight requests finish; its instance is
terminated only once the LB counts no request in flight on it, or when ``drain_timeout`` runs
out. A replica that never served (PROVISIONING, STARTING) has nothing in flight and is shut
down at once.

A preemption notice on a READY replica does not drain it: it records the zone's preemption
and the deadline, and the replica keeps serving. The planner (``hedge.plan_replicas``) no
longer counts it as capacity, so its replacement is launched in the same step, and retires it
once the others READY make the target again (``retire`` then drains it) or when its deadline
is ``NOTICE_HANDOFF_SECONDS`` away; ``finish`` drains one the planner does not see (an older
version) at that moment too. A DRAINING replica under notice ends as PREEMPTED, at the latest
at its deadline. Replaying spot traces (docs/simulate.md), serving until the replacement is
READY instead of draining at the notice lifted availability with EC2's notices from
0.978-0.996 to 0.993-0.998.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from spotd.control.lbkeeper import LbKeeper
from spotd.control.serve_config import ServeSettings
from spotd.serve.hedge import NOTICE_HANDOFF_SECONDS
from spotd.serve.replica_state import ReplicaStatus
from spotd.store import AsyncStore, ReplicaRow, ServiceRow
from spotd.types import ZoneEventKind

S = ReplicaStatus
log = structlog.get_logger("spotd.control.draining")


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
        self._noticed: set[str] = set()  # replica keys whose notice was acted on

    def forget(self, key: str) -> None:
        self._started.pop(key, None)
        self._noticed.discard(key)

    def forget_service(self, service_id: int) -> None:
        prefix = f"s{service_id}-r"
        for key in [k for k in self._started if k.startswith(prefix)]:
            del self._started[key]
        self._noticed -= {k for k in self._noticed if k.startswith(prefix)}

    def size(self) -> int:
        return len(self._started) + len(self._noticed)

    async def notice(self, row: ReplicaRow, deadline: float, now: float) -> None:
        """A preemption notice (read again at every step while it lasts): record the zone's
        preemption once; a READY replica keeps serving and the planner replaces it in this
        very step (module docstring); any other one drains or ends now."""
        if row.status in (S.DRAINING, S.SHUTTING_DOWN) or row.key in self._noticed:
            return
        self._noticed.add(row.key)
        try:
            await self._on_notice(row, deadline, now)
        except BaseException:
            # a write failed (a locked database, a failover): the next step acts on the notice
            # again, where remembering it here dropped it (the zone's loss, the drain)
            self._noticed.discard(row.key)
            raise

    async def _on_notice(self, row: ReplicaRow, deadline: float, now: float) -> None:
        left = max(0.0, deadline - now)
        fields: dict[str, object] = {}
        if row.notice_deadline is None:
            fields["notice_deadline"] = deadline
        if row.status == S.READY:
            fields["message"] = (
                f"preemption notice: reclaimed in {left:.0f}s; serving until its replacement "
                "is READY"
            )
        if fields:
            await self._store.update_replica_fields(row.key, **fields)
        await self._owner.zone_event(row, ZoneEventKind.PREEMPTED, now)
        if row.status == S.READY:
            log.info("preemption notice: serving until replaced", replica=row.key, left=left)
        elif row.status == S.NOT_READY:
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
        """Finish DRAINING replicas whose in-flight requests are done (or out of time); drain
        a READY one under notice whose deadline is near (the planner retires those it sees)."""
        live = await self._store.replicas(service_id=svc.id, live_only=True)
        near = [
            r
            for r in live
            if r.status == S.READY
            and r.notice_deadline is not None
            and now >= r.notice_deadline - NOTICE_HANDOFF_SECONDS
        ]
        for row in near:
            await self.retire(row, "preemption notice: its deadline is near", now)
        if near:
            await self._owner.push(svc)
            live = await self._store.replicas(service_id=svc.id, live_only=True)
        rows = [r for r in live if r.status == S.DRAINING]
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
