"""A day of zone history for placement, read from the store once and then only what is new,
and held digested.

Every placement ranks zones by their history (``spotd.recovery.history``): a day of zone events,
one of which is written for every launch. Read whole for each placement, that was one more
row per job already placed, so submitting ten thousand jobs read some fifty million rows; this
asks the store only for rows written since the newest it holds
(``EventStore.zone_events(after_id=...)``), and holds them as a ``history.ZoneDigest``: the
latest launch per zone, the failures and preemptions, the runs folded into one per zone — so a
placement walks a few events per zone, not one per job ever placed that day, and what aged
out of the window leaves the digest as it is read. Every ``full_every`` seconds it reads the
window whole again, so a row that committed out of id order (several writers on one
PostgreSQL) or one retention deleted cannot linger.
"""

from __future__ import annotations

import asyncio

from spotd.recovery import history
from spotd.store import AsyncStore

__all__ = ["ZoneHistoryCache"]


class ZoneHistoryCache:
    """The zone events of the last ``window`` seconds, digested (``history.ZoneDigest``)."""

    def __init__(self, store: AsyncStore, *, window: float, full_every: float = 60.0) -> None:
        self._store = store
        self._window = window
        self._full_every = full_every
        self._digest = history.ZoneDigest()
        self._last_id = 0  # the newest row held
        self._full_at: float | None = None
        self._lock = asyncio.Lock()  # one refresh at a time: concurrent placements share it

    async def read(self, now: float) -> list[history.ZoneEvent]:
        """Events whose summaries (``zone_penalties``, ``region_penalties``,
        ``preemption_risk``) are those of the window's every event, oldest first."""
        since = now - self._window
        async with self._lock:
            if self._full_at is None or now - self._full_at >= self._full_every:
                self._digest, self._last_id, self._full_at = history.ZoneDigest(), 0, now
            rows = await self._store.zone_events(since=since, after_id=self._last_id)
            self._digest.drop_before(since)
            for r in rows:  # the store's order: (at, id)
                self._digest.add(history.ZoneEvent.from_row(r), order=r.id)
                self._last_id = max(self._last_id, r.id)
            return list(self._digest.events())
