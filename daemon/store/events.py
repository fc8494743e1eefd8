"""The event log and the zone history.

Events are written by the store itself beside every change (see :mod:`spotd.store.cas`);
:meth:`EventStore.add_event` is for what happens outside a row change (a note from the
controller). Zone events feed ``spotd.recovery.history``: where capacity was lost, and when.

Neither table is kept forever: ``prune_events`` and ``prune_zone_events`` delete rows older
than a cutoff, at most ``limit`` per call (one short transaction each), and the retention loop
(``spotd.control.retention``) calls them until a call deletes less than a full batch — so the
writer lock is never held for long, and other store calls run between two batches.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, Table, bindparam, select

from spotd.store.base import StoreBase
from spotd.store.cas import enum_value, write_event
from spotd.store.rows import EventRow, ZoneEventRow
from spotd.store.tables import Event, ZoneEvent, table_of

__all__ = ["PRUNE_BATCH", "EventStore"]

PRUNE_BATCH = 5000  # rows deleted per statement: a bounded write lock


@functools.cache
def _zone_events_after() -> Select[Any]:  # built once: read at every placement
    zt = table_of(ZoneEvent)
    return select(zt).where(zt.c.id > bindparam("k_after")).order_by(zt.c.id)


@functools.cache
def _zone_events_since() -> Select[Any]:
    zt = table_of(ZoneEvent)
    return select(zt).where(zt.c.at >= bindparam("k_since")).order_by(zt.c.at, zt.c.id)


class EventStore(StoreBase):
    """The events and zone-history part of :class:`~spotd.store.Store`."""

    def add_event(
        self,
        *,
        kind: str,
        message: str,
        now: float,
        job_id: int | None = None,
        attempt_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> EventRow:
        with self._write() as conn:
            return write_event(
                conn,
                kind=kind,
                message=message,
                now=now,
                job_id=job_id,
                attempt_id=attempt_id,
                data=data,
            )

    def events(
        self, *, job_id: int | None = None, since_id: int = 0, limit: int | None = None
    ) -> list[EventRow]:
        """Events in the order they were written; ``since_id`` for tailing."""
        et = table_of(Event)
        q = select(et).where(et.c.id > since_id).order_by(et.c.id)
        if job_id is not None:
            q = q.where(et.c.job_id == job_id)
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            return [EventRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def service_events(self, service_id: int, *, since_id: int = 0) -> list[EventRow]:
        """The service's events and its replicas', in the order they were written."""
        et = table_of(Event)
        q = select(et).where(et.c.service_id == service_id, et.c.id > since_id).order_by(et.c.id)
        with self._read() as conn:
            return [EventRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def add_zone_event(
        self, *, provider: str, region: str, zone: str, kind: str, at: float, detail: str = ""
    ) -> ZoneEventRow:
        values = {
            "provider": provider,
            "region": region,
            "zone": zone,
            "kind": enum_value(kind),
            "at": at,
            "detail": detail,
        }
        zt = table_of(ZoneEvent)
        with self._write() as conn:
            res = conn.execute(zt.insert().values(**values).returning(zt.c.id))
            return ZoneEventRow.from_mapping({"id": int(res.scalar_one()), **values})

    def zone_events(self, *, since: float, after_id: int = 0) -> list[ZoneEventRow]:
        """Zone history at or after ``since``, oldest first; ``after_id``: only rows written
        after that one (what a reader that kept the rest asks for: found by the id's range,
        not by walking the window's index of times, which at 10,000 launches a day was every
        row of the day at every placement)."""
        q = _zone_events_after() if after_id else _zone_events_since()
        with self._read() as conn:
            found = conn.execute(q, {"k_after": after_id, "k_since": since}).mappings()
            rows = [ZoneEventRow.from_mapping(m) for m in found]
        if after_id:
            rows = sorted((r for r in rows if r.at >= since), key=lambda r: (r.at, r.id))
        return rows

    def prune_events(self, *, before: float, limit: int = PRUNE_BATCH) -> int:
        """Delete up to ``limit`` of the oldest events written before ``before``; how many."""
        return self._prune(table_of(Event), before=before, limit=limit)

    def prune_zone_events(self, *, before: float, limit: int = PRUNE_BATCH) -> int:
        """Delete up to ``limit`` of the oldest zone events before ``before``; how many."""
        return self._prune(table_of(ZoneEvent), before=before, limit=limit)

    def _prune(self, table: Table, *, before: float, limit: int) -> int:
        oldest = select(table.c.id).where(table.c.at < before).order_by(table.c.id).limit(limit)
        with self._write() as conn:
            res = conn.execute(table.delete().where(table.c.id.in_(oldest.scalar_subquery())))
            return int(res.rowcount)
