"""Compare-and-set, and the event that goes with every change.

Every status change in the store is one call to :func:`compare_and_set`, whatever the table:

1. read the row's status ``FOR UPDATE`` (PostgreSQL locks the row; SQLite's write transaction
   already holds the database with ``BEGIN IMMEDIATE``); no row: :class:`NotFound`;
2. ``UPDATE … SET status=to, … WHERE key=? AND status IN (from_)``; no row matched:
   :class:`StaleTransition`, naming the status actually found, and nothing is written;
3. insert the ``<what>.status`` event in the same transaction.

So a cancel from the API racing a preemption seen by the controller fails loudly in one of the
two instead of one silently overwriting the other; and there is no transition without its event,
nor an event for a transition that did not happen. :func:`set_fields` is the same minus the
guard, for bookkeeping that does not change the status (counters, the LB's pid, offsets).

Tables are described once, as a :class:`Subject`; the helpers never name a table themselves.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, select, update

from spotd.store.errors import NotFound, StaleTransition
from spotd.store.rows import EventRow
from spotd.store.tables import Event, table_of

__all__ = [
    "Note",
    "Subject",
    "checked_fields",
    "compare_and_set",
    "enum_value",
    "fetch",
    "find",
    "set_fields",
    "write_event",
]

RowT = TypeVar("RowT")


@dataclass(frozen=True, slots=True)
class Subject(Generic[RowT]):
    """One kind of row the store addresses by key.

    ``links`` says which of the row's own columns fill an event's ``job_id``, ``attempt_id``
    and ``service_id``: a replica's events, for instance, go to its service
    (``("service_id", "service_id")``) and name the replica in ``attempt_id``
    (``("attempt_id", "key")``). ``settable`` is what callers may set beside the status.
    """

    what: str  # "job": in messages, errors and event kinds ("job.status", "job.update")
    table: Any  # the Core table
    key: str  # its primary-key column
    row: Callable[[Mapping[Any, Any]], RowT]
    links: tuple[tuple[str, str], ...] = ()
    settable: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Note:
    """An event to write beside a field update: what happened, and when."""

    message: str
    at: float


def enum_value(v: Any) -> Any:
    """The database form of a value: an enum's string value, anything else as it is."""
    return v.value if isinstance(v, enum.Enum) else v


def checked_fields(subject: Subject[Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` in database form; a TypeError names any the caller may not set."""
    bad = set(fields) - subject.settable
    if bad:
        hint = f" (status changes go through transition_{subject.what})" if "status" in bad else ""
        raise TypeError(f"not settable {subject.what} fields: {sorted(bad)}{hint}")
    return {k: enum_value(v) for k, v in fields.items()}


def find(
    conn: Connection, subject: Subject[RowT], row_id: object, *, for_update: bool = False
) -> RowT | None:
    t = subject.table
    q = select(t).where(t.c[subject.key] == row_id)
    if for_update:
        q = q.with_for_update()
    m = conn.execute(q).mappings().first()
    return None if m is None else subject.row(m)


def fetch(
    conn: Connection, subject: Subject[RowT], row_id: object, *, for_update: bool = False
) -> RowT:
    """Like :func:`find`, but a missing row raises :class:`NotFound`."""
    row = find(conn, subject, row_id, for_update=for_update)
    if row is None:
        raise NotFound(f"no {subject.what} {row_id}")
    return row


def write_event(
    conn: Connection,
    *,
    kind: str,
    message: str,
    now: float,
    job_id: int | None = None,
    attempt_id: str | None = None,
    data: Mapping[str, Any] | None = None,
    service_id: int | None = None,
) -> EventRow:
    """Append one event row on ``conn``: it commits, or rolls back, with the change it logs."""
    values = {
        "at": now,
        "job_id": job_id,
        "attempt_id": attempt_id,
        "kind": kind,
        "message": message,
        "data_json": json.dumps(dict(data or {}), default=str, sort_keys=True),
        "service_id": service_id,
        # with several daemons on one database: which one wrote it (spotd.store.leases)
        "daemon": conn.get_execution_options().get("spotd_daemon"),
    }
    et = table_of(Event)
    res = conn.execute(et.insert().values(**values).returning(et.c.id))
    return EventRow.from_mapping({"id": int(res.scalar_one()), **values})


def compare_and_set(
    conn: Connection,
    subject: Subject[RowT],
    row_id: object,
    *,
    from_: Collection[enum.Enum | str],
    to: enum.Enum,
    reason: str,
    now: float,
    values: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
) -> RowT:
    """Move the row from one of ``from_`` to ``to``, set ``values``, write the event.

    The event is ``"<from> → <to>: <reason>"`` of kind ``<what>.status``; its data holds
    ``from`` and ``to`` and whatever ``data`` adds. Returns the row as it is now.
    """
    t = subject.table
    key = t.c[subject.key]
    expected = [enum_value(s) for s in from_]
    cur = conn.execute(
        select(t.c.status, *(t.c[col] for _, col in subject.links))
        .where(key == row_id)
        .with_for_update()
    ).first()
    if cur is None:
        raise NotFound(f"no {subject.what} {row_id}")
    res = conn.execute(
        update(t)
        .where(key == row_id, t.c.status.in_(expected))
        .values(status=enum_value(to), **values)
    )
    if res.rowcount != 1:
        raise StaleTransition(
            what=subject.what, row_id=row_id, current=cur.status, expected=expected, to=str(to)
        )
    write_event(
        conn,
        kind=f"{subject.what}.status",
        message=f"{cur.status} → {to}: {reason}",
        now=now,
        data={"from": cur.status, "to": enum_value(to), **(data or {})},
        **{event_col: getattr(cur, col) for event_col, col in subject.links},
    )
    return fetch(conn, subject, row_id)


def set_fields(
    conn: Connection,
    subject: Subject[RowT],
    row_id: object,
    values: Mapping[str, Any],
    *,
    note: Note | None = None,
) -> RowT:
    """Set ``values`` whatever the status (nothing to set still checks the row exists).

    ``note``: also write a ``<what>.update`` event whose data holds the fields set.
    """
    t = subject.table
    if values:
        res = conn.execute(update(t).where(t.c[subject.key] == row_id).values(**values))
        if res.rowcount != 1:
            raise NotFound(f"no {subject.what} {row_id}")
    row = fetch(conn, subject, row_id)
    if note is not None:
        write_event(
            conn,
            kind=f"{subject.what}.update",
            message=note.message,
            now=note.at,
            data={"fields": dict(values)},
            **{event_col: getattr(row, col) for event_col, col in subject.links},
        )
    return row
