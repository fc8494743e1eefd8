"""The zone events the replica planner reads, per service: kept in memory as long as the
planner's rules look back, and written to the store's zone-event table, which the job
controller's placement reads too.

Both controllers speak one vocabulary (``spotd.types.ZoneEventKind``): a failed launch is
LAUNCH_FAILED, a replica that became READY says the zone launches (LAUNCHED), a spot replica
that ended says how long it ran there (RAN: the preemption risk's survival time), and a
restarted daemon reads the rows back as they were written. The detail names the market and
the replica (``"on-demand replica s1-r3"``, ``"5400.0 seconds on spot replica s1-r3"``), so a
restart gives each service back its own events and skips the job controller's.

What a service's plan reads is that service's history only, as the simulator replays it
(``spotd.sim.serve_policies.SpotdPolicy``): another service's preemption in a zone (another
instance type, often another pool of capacity) does not end its calm, and another service's
replica READY there does not clear its stockout. How far back:

- ``PLANNER_SECONDS``: the longest of the planner's look-backs (bad zones 1 h, the shaky-zone
  cover 10 min, calm mode 2 h without a preemption), so that calm mode sees every preemption
  of its two hours;
- ``RISK_SECONDS``: the preemptions and survival times the learned preemption risk reads
  (``spotd.recovery.history.preemption_risk``, the zones' order at equal spot price), a day as
  in the simulator.

A replica's loss is recorded once: at its notice, or when it is found gone (not both, and not
again when a restarted daemon reads the notice once more).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from spotd.recovery import history as rhist
from spotd.serve import hedge
from spotd.store import AsyncStore, ReplicaRow, ZoneEventRow
from spotd.types import Market, ZoneEventKind, ZoneKey

PLANNER_SECONDS = max(
    hedge.DEFAULT_BAD_ZONE_SECONDS, hedge.DEFAULT_SHAKY_ZONE_SECONDS, hedge.DEFAULT_CALM_SECONDS
)
RISK_SECONDS = 24 * 3600.0
DROPPED_MAX = 10_000  # services forgotten since the load, remembered (see forget_service)
_RISK_KINDS = frozenset({ZoneEventKind.PREEMPTED, ZoneEventKind.RAN})
# the replica a row written by this module is about: "<market> replica s<service>-r<id>"
_REPLICA = re.compile(r"(?:^|\s)(spot|on-demand) replica (s(\d+)-r\d+)$")


def from_row(row: ZoneEventRow) -> hedge.ZoneEvent | None:
    """The planner's reading of a stored zone event (None: a kind it does not use)."""
    try:
        kind = ZoneEventKind(row.kind)
    except ValueError:
        return None
    if kind not in hedge.PLANNER_KINDS:
        return None
    market = Market.ON_DEMAND if str(row.detail).startswith("on-demand") else Market.SPOT
    return hedge.ZoneEvent(
        zone=ZoneKey(row.provider, row.region, row.zone), kind=kind, at=row.at, market=market
    )


def replica_of(row: ZoneEventRow) -> tuple[int, str] | None:
    """(service id, replica key) of a row the replica executor wrote; None for the job
    controller's rows."""
    m = _REPLICA.search(str(row.detail))
    return None if m is None else (int(m.group(3)), m.group(2))


class ReplicaZoneHistory:
    """Each service's zone events (module docstring).

    ``load`` reads every service's at the daemon's start; a service this daemon was not
    running then (several daemons: one it takes over, or takes back after ``forget_service``)
    has its history read from the store at its first ``ensure``, merged with what was recorded
    here meanwhile."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._planner: dict[int, list[hedge.ZoneEvent]] = {}
        self._risk: dict[int, list[rhist.ZoneEvent]] = {}
        self._lost: dict[str, float] = {}  # replica key -> when its loss (or run) was recorded
        self._loaded_at: float | None = None  # every service's history before it is here
        self._fresh: set[int] = set()  # services whose history is all here
        self._dropped: set[int] = set()  # services forgotten since the load

    def events(self, service_id: int) -> Sequence[hedge.ZoneEvent]:
        return self._planner.get(service_id, ())

    def risk(self, service_id: int, now: float) -> Mapping[ZoneKey, float]:
        """The learned preemption risk of the zones this service's spot replicas ran in."""
        return rhist.preemption_risk(self._risk.get(service_id, ()), now)

    def forget_service(self, service_id: int) -> None:
        self._planner.pop(service_id, None)
        self._risk.pop(service_id, None)
        self._fresh.discard(service_id)
        self._dropped.add(service_id)
        if len(self._dropped) > DROPPED_MAX:  # a long life of short services: forget the load
            self._dropped.clear()
            self._loaded_at = None  # (an ensure then reads a whole day: correct, dearer)
        prefix = f"s{service_id}-r"
        for key in [k for k in self._lost if k.startswith(prefix)]:
            del self._lost[key]

    async def load(self, now: float) -> None:
        """Every service's history, at the daemon's start."""
        self._merge(await self._store.zone_events(since=now - RISK_SECONDS), None, now)
        self._loaded_at = now

    async def ensure(self, service_id: int, now: float) -> None:
        """The service's history is all here (read from the store if it may not be)."""
        if service_id in self._fresh:
            return
        since = now - RISK_SECONDS
        if self._loaded_at is not None and service_id not in self._dropped:
            since = max(since, self._loaded_at)  # what the load read is here already
        self._merge(await self._store.zone_events(since=since), service_id, now)
        self._fresh.add(service_id)
        self._dropped.discard(service_id)

    def _merge(self, rows: Sequence[ZoneEventRow], only: int | None, now: float) -> None:
        """Rows the replica executor wrote (``only``: of that service), less those held."""
        held_p = {sid: set(es) for sid, es in self._planner.items()}
        held_r = {sid: set(es) for sid, es in self._risk.items()}
        for row in rows:
            mine = replica_of(row)
            if mine is None or (only is not None and mine[0] != only):
                continue
            sid, key = mine
            planned = from_row(row)
            recent = row.at >= now - PLANNER_SECONDS
            if planned is not None and recent and planned not in held_p.setdefault(sid, set()):
                self._planner.setdefault(sid, []).append(planned)
            if row.kind in _RISK_KINDS:
                risk = rhist.ZoneEvent.from_row(row)
                risk = rhist.ZoneEvent(risk.zone, risk.kind, risk.at, seconds=risk.seconds)
                if risk not in held_r.setdefault(sid, set()):
                    self._risk.setdefault(sid, []).append(risk)
                self._lost.setdefault(key, row.at)
        for planned_events in self._planner.values():
            planned_events.sort(key=lambda e: e.at)
        for risk_events in self._risk.values():
            risk_events.sort(key=lambda e: e.at)

    async def record(self, row: ReplicaRow, kind: ZoneEventKind, now: float) -> None:
        """Something happened to a replica in its zone. A spot replica's loss comes with its
        run time, once per replica."""
        if self._loaded_at is not None and row.service_id in self._dropped:
            # a service this daemon no longer runs (its prober finishing a look after the
            # hand-over): the store has it for whoever runs it, and this daemon if it comes back
            await self._write(row, kind.value, now, f"{row.market} replica {row.key}")
            return
        if kind is ZoneEventKind.PREEMPTED:
            if row.key in self._lost:
                return  # its notice said so already (or a restart reads the notice again)
            self._lost[row.key] = now
        zone = ZoneKey(row.provider, row.region, row.zone)
        self._keep(row.service_id, now).append(hedge.ZoneEvent(zone, kind, now, row.market))
        await self._write(row, kind.value, now, f"{row.market} replica {row.key}")
        if kind is ZoneEventKind.PREEMPTED:
            self._risk.setdefault(row.service_id, []).append(rhist.ZoneEvent(zone, kind, now))
            await self._ran(row, now)

    async def ended(self, row: ReplicaRow, kind: ZoneEventKind | None, now: float) -> None:
        """A replica ended (``kind``: what its end says of the zone, if anything). A spot
        replica that ran leaves its run time, unless its loss recorded it already."""
        if kind is not None:
            await self.record(row, kind, now)
        elif row.instance_id is not None and row.key not in self._lost:
            self._lost[row.key] = now
            await self._ran(row, now)

    async def _ran(self, row: ReplicaRow, now: float) -> None:
        if row.market != Market.SPOT:
            return
        seconds = round(max(0.0, now - row.created_at), 1)  # as the row keeps it
        zone = ZoneKey(row.provider, row.region, row.zone)
        ran = rhist.ZoneEvent(zone, ZoneEventKind.RAN, now, seconds=seconds)
        self._risk.setdefault(row.service_id, []).append(ran)
        detail = f"{seconds:.1f} seconds on spot replica {row.key}"
        await self._write(row, ZoneEventKind.RAN.value, now, detail)

    def _keep(self, service_id: int, now: float) -> list[hedge.ZoneEvent]:
        """The service's planner events, those older than the planner looks back dropped
        (and its risk events older than a day, and replicas forgotten as long)."""
        planner = [e for e in self._planner.get(service_id, ()) if e.at >= now - PLANNER_SECONDS]
        self._planner[service_id] = planner
        risk = self._risk.get(service_id)
        if risk and risk[0].at < now - RISK_SECONDS:
            self._risk[service_id] = [e for e in risk if e.at >= now - RISK_SECONDS]
        if self._lost and next(iter(self._lost.values())) < now - RISK_SECONDS:
            self._lost = {k: t for k, t in self._lost.items() if t >= now - RISK_SECONDS}
        return planner

    async def _write(self, row: ReplicaRow, kind: str, now: float, detail: str) -> None:
        await self._store.add_zone_event(
            provider=row.provider,
            region=row.region,
            zone=row.zone,
            kind=kind,
            at=now,
            detail=detail,
        )
