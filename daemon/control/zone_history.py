"""The zone events the replica planner reads: kept in memory for ``DEFAULT_BAD_ZONE_SECONDS``
and written to the store's zone-event table, which the job controller's placement reads too.

Both controllers speak one vocabulary (``spotd.types.ZoneEventKind``): a failed launch is
LAUNCH_FAILED, a replica that became READY says the zone launches (LAUNCHED), and a restarted
daemon reads the rows back as they were written. The planner reads only the kinds it decides
on (``hedge.PLANNER_KINDS``); the market is kept in the event's detail
(``"on-demand replica s1-r3"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from spotd.serve import hedge
from spotd.store import AsyncStore, ReplicaRow, ZoneEventRow
from spotd.types import Market, ZoneEventKind, ZoneKey


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

    async def record(self, row: ReplicaRow, kind: ZoneEventKind, now: float) -> None:
        ev = hedge.ZoneEvent(
            zone=ZoneKey(row.provider, row.region, row.zone), kind=kind, at=now, market=row.market
        )
        horizon = now - hedge.DEFAULT_BAD_ZONE_SECONDS
        self._events = [e for e in [*self._events, ev] if e.at >= horizon]
        await self._store.add_zone_event(
            provider=row.provider,
            region=row.region,
            zone=row.zone,
            kind=kind.value,
            at=now,
            detail=f"{row.market} replica {row.key}",
        )
