"""A day of zone history for placement, read from the store once and then only what is new.

Every placement ranks zones by their history (``spotd.recovery.history``): a day of zone events,
one of which is written for every launch. Read whole for each placement, that was one more
row per job already placed, so submitting ten thousand jobs read some fifty million rows; this
keeps the converted events (by id, so a row is held once however many placements ask at the
same moment) and asks the store only for rows written since the newest it holds
(``EventStore.zone_events(after_id=...)``), dropping what fell out of the window. Every
``full_every`` seconds it reads the window whole again, so a row that committed out of id order
(several writers on one PostgreSQL) or one retention deleted cannot linger.
"""

from __future__ import annotations

import asyncio

from spotd.recovery import history
from spotd.store import AsyncStore

__all__ = ["ZoneHistoryCache"]


class ZoneHistoryCache:
    """The zone events of the last ``window`` seconds, oldest first."""

    def __init__(self, store: AsyncStore, *, window: float, full_every: float = 60.0) -> None:
        self._store = store
        self._window = window
        self._full_every = full_every
        self._events: dict[int, history.ZoneEvent] = {}
        self._ordered: list[history.ZoneEvent] = []
        self._last_id = 0  # the newest row held
        self._full_at: float | None = None
        self._lock = asyncio.Lock()  # one refresh at a time: concurrent placements share it

    async def read(self, now: float) -> list[history.ZoneEvent]:
        since = now - self._window
        async with self._lock:
            if self._full_at is None or now - self._full_at >= self._full_every:
                self._events, self._ordered, self._last_id, self._full_at = {}, [], 0, now
            rows = await self._store.zone_events(since=since, after_id=self._last_id)
            aged = (  # oldest first: only when the oldest held fell out of the window
                [i for i, e in self._events.items() if e.at < since]
                if self._ordered and self._ordered[0].at < since
                else []
            )
            for i in aged:
                del self._events[i]
            fresh = sorted(rows, key=lambda r: (r.at, r.id))
            new = [history.ZoneEvent.from_row(r) for r in fresh]
            self._events.update((r.id, e) for r, e in zip(fresh, new, strict=True))
            self._last_id = max([self._last_id, *(r.id for r in fresh)])
            if aged or (new and self._ordered and new[0].at < self._ordered[-1].at):
                self._ordered = [self._events[i] for i in sorted(self._events, key=self._order_key)]
            else:  # the usual case: what is new is also the latest
                self._ordered.extend(new)
            return list(self._ordered)

    def _order_key(self, event_id: int) -> tuple[float, int]:
        return (self._events[event_id].at, event_id)
