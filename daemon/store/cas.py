"""Compare-and-set, and the event that goes with every change.

Every status change in the store is one call to :func:`compare_and_set`, whatever the table:

1. ``UPDATE … SET status=to, … WHERE key=? AND status IN (from_) RETURNING …`` (PostgreSQL
   locks the row; SQLite's write transaction already holds the database with ``BEGIN
   IMMEDIATE``); no row matched: :class:`StaleTransition`, naming the status actually found
   (or :class:`NotFound`), and nothing is written;
2. insert the ``<what>.status`` event in the same transaction.

So a cancel from the API racing a preemption seen by the controller fails loudly in one of the
two instead of one silently overwriting the other; and there is no transition without its event,
nor an event for a transition that did not happen. :func:`set_fields` is the same minus the
guard, for bookkeeping that does not change the status (counters, the LB's pid, offsets).

Tables are described once, as a :class:`Subject`; the helpers never name a table themselves.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    Connection,
    Insert,
    RowMapping,
    Select,
    Table,
    Update,
    bindparam,
    select,
    update,
)
from sqlalchemy.sql import ColumnElement

from spotd.store.errors import NotFound, StaleTransition
from spotd.store.rows import EventRow
from spotd.store.tables import Event, table_of

__all__ = [
    "Note",
    "SetTo",
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


# The statements below are built once per table and run with parameters. A statement built
# per call is built, coerced and keyed again by SQLAlchemy every time: about 150 µs for a
# guarded UPDATE on this kind of machine against 50 µs for a built one, on paths a busy daemon
# runs thousands of times a second (``bench/fleet.py``'s submit rate is bound by them).
# ``k_*`` names the parameters of the WHERE clause; every other parameter of an UPDATE is a
# column it sets.


@functools.cache
def _by_key(table: Table, key: str, for_update: bool) -> Select[Any]:
    q = select(table).where(table.c[key] == bindparam("k_row"))
    return q.with_for_update() if for_update else q


@functools.cache
def _status_by_key(table: Table, key: str, for_update: bool) -> Select[Any]:
    q = select(table.c.status).where(table.c[key] == bindparam("k_row"))
    return q.with_for_update() if for_update else q


@functools.cache
def _update_by_key(table: Table, key: str, guarded: bool) -> Update:
    q = update(table).where(table.c[key] == bindparam("k_row"))
    if guarded:
        q = q.where(table.c.status.in_(bindparam("k_from", expanding=True)))
    return q.returning(*table.c)


@functools.cache
def _event_insert() -> Insert:
    et = table_of(Event)
    stmt: Insert = et.insert().returning(et.c.id)
    return stmt


@dataclass(frozen=True, slots=True)
class SetTo:
    """A column set to a SQL expression (``coalesce(started_at, :v_started_at)``) that is built
    once, with the parameters it takes on this call: the statement it goes in is then built
    once per shape too."""

    sql: ColumnElement[Any]
    params: Mapping[str, Any]


@functools.cache
def _with_exprs(stmt: Update, exprs: tuple[tuple[str, ColumnElement[Any]], ...]) -> Update:
    """``stmt`` setting ``exprs`` too: one per shape, since both are built once (cached by
    identity)."""
    return stmt.values(**dict(exprs))


def _updated(
    conn: Connection, stmt: Update, values: Mapping[str, Any], **where: Any
) -> RowMapping | None:
    """Run a built UPDATE … RETURNING: it sets ``values``, and its WHERE takes ``where``."""
    exprs = {k: v for k, v in values.items() if isinstance(v, SetTo)}
    params = {k: v for k, v in values.items() if k not in exprs}
    if exprs:
        stmt = _with_exprs(stmt, tuple(sorted((k, v.sql) for k, v in exprs.items())))
        for v in exprs.values():
            params.update(v.params)
    return conn.execute(stmt, {**params, **where}).mappings().first()


def find(
    conn: Connection, subject: Subject[RowT], row_id: object, *, for_update: bool = False
) -> RowT | None:
    q = _by_key(subject.table, subject.key, for_update)
    m = conn.execute(q, {"k_row": row_id}).mappings().first()
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
    res = conn.execute(_event_insert(), values)
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

    Two statements when ``from_`` is one status (the common case: the guarded ``UPDATE …
    RETURNING`` the row, then the event); with several, the status found is read first
    (``FOR UPDATE``) so the event can name it. The status actually found is read only when the
    guard fails, for the error.
    """
    t = subject.table
    expected = [enum_value(s) for s in from_]
    found: str | None = expected[0] if len(expected) == 1 else None
    if found is None:
        found = conn.execute(_status_by_key(t, subject.key, True), {"k_row": row_id}).scalar()
        if found is None:
            raise NotFound(f"no {subject.what} {row_id}")
    m = _updated(
        conn,
        _update_by_key(t, subject.key, True),
        {**values, "status": enum_value(to)},
        k_row=row_id,
        k_from=expected,
    )
    if m is None:
        current = conn.execute(_status_by_key(t, subject.key, False), {"k_row": row_id}).scalar()
        if current is None:
            raise NotFound(f"no {subject.what} {row_id}")
        raise StaleTransition(
            what=subject.what, row_id=row_id, current=current, expected=expected, to=str(to)
        )
    write_event(
        conn,
        kind=f"{subject.what}.status",
        message=f"{found} → {to}: {reason}",
        now=now,
        data={"from": found, "to": enum_value(to), **(data or {})},
        **{event_col: m[col] for event_col, col in subject.links},
    )
    return subject.row(m)


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
    if values:
        m = _updated(conn, _update_by_key(subject.table, subject.key, False), values, k_row=row_id)
        if m is None:
            raise NotFound(f"no {subject.what} {row_id}")
        row = subject.row(m)
    else:
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
