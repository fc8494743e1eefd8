"""The zone events the replica planner reads: kept in memory for ``DEFAULT_BAD_ZONE_SECONDS``
and written to the store's zone-event table, which the job controller's placement reads too.

The store keeps the job controller's vocabulary (PREEMPTED, STOCKOUT, LAUNCHED, RAN); the
planner's kinds map onto it (a failed launch is a STOCKOUT, a READY replica says the zone
launches: LAUNCHED), and a restarted daemon reads them back the same way. The market is kept
in the event's detail (``"on-demand replica s1-r3"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from spotd.serve import hedge
from spotd.store import AsyncStore, ReplicaRow, ZoneEventRow
from spotd.types import Market, ZoneKey

TO_STORE = {
    hedge.ZoneEventKind.PREEMPTED: "PREEMPTED",
    hedge.ZoneEventKind.LAUNCH_FAILED: "STOCKOUT",
    hedge.ZoneEventKind.READY: "LAUNCHED",
}
FROM_STORE = {v: k for k, v in TO_STORE.items()}


def from_row(row: ZoneEventRow) -> hedge.ZoneEvent | None:
    """The planner's reading of a stored zone event (None: a kind it does not use)."""
    kind = FROM_STORE.get(row.kind)
    if kind is None:
        return None
    market = Market.ON_DEMAND if str(row.detail).startswith("on-demand") else Market.SPOT
    return hedge.ZoneEvent(
        zone=ZoneKey(row.provider, row.region, row.zone), kind=kind, at=row.at, market=market
    )


class ReplicaZoneHistory:
    def __init__(self, store: AsyncStore) -> None:
        self._store = store
        self._events: list[hedge.ZoneEvent] = []

    @property
    def events(self) -> Sequence[hedge.ZoneEvent]:
        return self._events

    async def load(self, now: float) -> None:
        rows = await self._store.zone_events(since=now - hedge.DEFAULT_BAD_ZONE_SECONDS)
        self._events.extend(e for e in map(from_row, rows) if e is not None)

    async def record(self, row: ReplicaRow, kind: hedge.ZoneEventKind, now: float) -> None:
        ev = hedge.ZoneEvent(
            zone=ZoneKey(row.provider, row.region, row.zone), kind=kind, at=now, market=row.market
        )
        horizon = now - hedge.DEFAULT_BAD_ZONE_SECONDS
        self._events = [e for e in [*self._events, ev] if e.at >= horizon]
        await self._store.add_zone_event(
            provider=row.provider,
            region=row.region,
            zone=row.zone,
            kind=TO_STORE[kind],
            at=now,
            detail=f"{row.market} replica {row.key}",
        )
