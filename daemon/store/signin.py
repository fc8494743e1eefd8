"""Dashboard sign-ins: sessions and one-time login links, in the database.

Kept here rather than in one daemon's memory so that every daemon on the database knows a
session (several daemons behind one address, any of them may answer a browser) and a restart
or a takeover signs nobody out. The policy — how long a session lives, how many there may be —
is the caller's (``spotd.dashboard.auth``); these methods apply what they are given.

A session also keeps a fingerprint of the token it was signed in with (``credential``); the
project's token hash is read with it, so the caller can end a session whose token changed.

Secrets never reach the database: a session id and a link code are stored as their SHA-256
(``id_hash``, ``code_hash``), computed by the caller. A link is spent by a ``DELETE …
RETURNING``: of two daemons redeeming one code at once, exactly one gets it.

Writes here are not fenced: a sign-in belongs to no daemon's work, and a daemon whose lease
lapsed still answers browsers correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy import ColumnElement, Connection, Table, delete, func, or_, select, update

from spotd.store.base import StoreBase
from spotd.store.tables import DashboardSession, LoginLink, Project, table_of

__all__ = ["LoginLinkRow", "SessionRow", "SignInStore", "session_fate"]


@dataclass(frozen=True, slots=True)
class SessionRow:
    id_hash: str
    project: str | None  # None: the admin
    credential: str  # a fingerprint of the token it was signed in with
    csrf: str
    created_at: float
    used_at: float
    # read with the session, not stored with it: the project's token hash now (None for the
    # admin, or a project that is gone)
    project_token_hash: str | None = None


@dataclass(frozen=True, slots=True)
class LoginLinkRow:
    project: str | None  # None: the admin
    credential: str
    expires_at: float


def session_fate(
    row: SessionRow, *, now: float, idle: float, max_age: float, touch_after: float
) -> Literal["expired", "fresh", "touch"]:
    """What a read of a session does: end it (idle longer than ``idle``, or older than
    ``max_age``), leave it (used within ``touch_after``), or move its last use to ``now``.
    The sweep on insert (``_expired``) applies the same two limits in SQL."""
    if now - row.used_at > idle or now - row.created_at > max_age:
        return "expired"
    return "fresh" if now - row.used_at <= touch_after else "touch"


class SignInStore(StoreBase):
    def add_session(self, row: SessionRow, *, idle: float, max_age: float, keep: int) -> None:
        """Insert ``row``; first drop the sessions idle longer than ``idle`` or older than
        ``max_age`` (at ``row.created_at``), then the least recently used beyond ``keep``."""
        t = table_of(DashboardSession)
        now = row.created_at
        with self._write(fenced=False) as conn:
            conn.execute(delete(t).where(_expired(now, idle=idle, max_age=max_age)))
            conn.execute(
                t.insert().values(
                    id_hash=row.id_hash,
                    project=row.project,
                    credential=row.credential,
                    csrf=row.csrf,
                    created_at=row.created_at,
                    used_at=row.used_at,
                )
            )
            _keep_newest(conn, t, t.c.used_at, t.c.id_hash, keep)

    def session(
        self, id_hash: str, *, now: float, idle: float, max_age: float, touch_after: float
    ) -> SessionRow | None:
        """The live session ``id_hash``, or None (an expired one is deleted). Its last use
        moves to ``now`` when it was more than ``touch_after`` ago: a page open for hours
        re-reads its session every second, and need not write it every second."""
        t, pt = table_of(DashboardSession), table_of(Project)
        with self._read() as conn:
            found = (
                conn.execute(
                    select(t, pt.c.token_hash.label("project_token_hash"))
                    .select_from(t.outerjoin(pt, pt.c.name == t.c.project))
                    .where(t.c.id_hash == id_hash)
                )
                .mappings()
                .first()
            )
        if found is None:
            return None
        row = SessionRow(**found)
        fate = session_fate(row, now=now, idle=idle, max_age=max_age, touch_after=touch_after)
        if fate == "expired":
            self.end_session(id_hash)
            return None
        if fate == "fresh":
            return row
        with self._write(fenced=False) as conn:
            conn.execute(update(t).where(t.c.id_hash == id_hash).values(used_at=now))
        return replace(row, used_at=now)

    def end_session(self, id_hash: str) -> None:
        t = table_of(DashboardSession)
        with self._write(fenced=False) as conn:
            conn.execute(delete(t).where(t.c.id_hash == id_hash))

    def count_sessions(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(table_of(DashboardSession))
                ).scalar_one()
            )

    def add_login_link(self, code_hash: str, row: LoginLinkRow, *, now: float, keep: int) -> None:
        """Insert a link; first drop the expired ones, then the oldest beyond ``keep``."""
        t = table_of(LoginLink)
        with self._write(fenced=False) as conn:
            conn.execute(delete(t).where(t.c.expires_at < now))
            conn.execute(
                t.insert().values(
                    code_hash=code_hash,
                    project=row.project,
                    credential=row.credential,
                    expires_at=row.expires_at,
                )
            )
            _keep_newest(conn, t, t.c.expires_at, t.c.code_hash, keep)

    def redeem_login_link(self, code_hash: str, *, now: float) -> LoginLinkRow | None:
        """Spend the link: its row, once, if it is there and not expired; else None."""
        t = table_of(LoginLink)
        with self._write(fenced=False) as conn:
            spent = conn.execute(
                delete(t)
                .where(t.c.code_hash == code_hash)
                .returning(t.c.project, t.c.credential, t.c.expires_at)
            ).first()
        if spent is None or now > spent.expires_at:
            return None
        return LoginLinkRow(spent.project, spent.credential, spent.expires_at)

    def count_login_links(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute(select(func.count()).select_from(table_of(LoginLink))).scalar_one()
            )


def _expired(now: float, *, idle: float, max_age: float) -> ColumnElement[bool]:
    t = table_of(DashboardSession)
    return or_(t.c.used_at < now - idle, t.c.created_at < now - max_age)


def _keep_newest(
    conn: Connection, t: Table, order: ColumnElement[float], key: ColumnElement[str], keep: int
) -> None:
    """Delete all but the ``keep`` rows of ``t`` newest by ``order`` (ties: by ``key``)."""
    newest = select(key).order_by(order.desc(), key.desc()).limit(keep)
    conn.execute(delete(t).where(key.not_in(newest.scalar_subquery())))
