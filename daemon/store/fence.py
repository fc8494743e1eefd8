"""A daemon's fence: the check at the start of every write transaction when several daemons
share one database (the protocol is described in :mod:`spotd.store.leases`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Float, cast, extract, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from spotd.store.errors import Fenced
from spotd.store.tables import Daemon, table_of

__all__ = ["Fence", "check_fence", "db_now"]

_D = table_of(Daemon)


@dataclass(frozen=True, slots=True)
class Fence:
    """What every write of this daemon is checked against."""

    daemon_id: str
    epoch: int


def db_now(conn: Connection) -> float:
    """The database's clock, in epoch seconds (the leases' only clock)."""
    expr: ColumnElement[float]
    if conn.dialect.name == "postgresql":
        expr = cast(extract("epoch", func.clock_timestamp()), Float)
    else:
        expr = literal_column("(julianday('now') - 2440587.5) * 86400.0")
    return float(conn.execute(select(expr)).scalar_one())


def check_fence(conn: Connection, fence: Fence) -> None:
    """Go on only if ``fence`` still holds the lease: its row locked FOR SHARE until commit,
    so a takeover (an UPDATE of that row) waits for this transaction."""
    now = db_now(conn)
    row = conn.execute(
        select(_D.c.epoch, _D.c.expires_at)
        .where(_D.c.id == fence.daemon_id)
        .with_for_update(read=True)
    ).first()
    if row is None or row.epoch != fence.epoch:
        raise Fenced(
            f"daemon {fence.daemon_id}: its work was taken over (epoch {fence.epoch} is no "
            f"longer its own): lease lost, nothing written"
        )
    if row.expires_at <= now:
        raise Fenced(
            f"daemon {fence.daemon_id}: its lease expired {now - row.expires_at:.1f} s ago: "
            f"lease lost, nothing written"
        )
