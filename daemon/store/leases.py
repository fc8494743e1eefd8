"""Several daemons on one database: leases, fencing epochs and takeover.

Each daemon holds one lease, its row in the ``daemon`` table: ``expires_at`` (the database's
clock, so the daemons' clocks never have to agree) and an ``epoch``, bumped when the daemon
joins and when another daemon takes its work over. The daemon's store carries a
:class:`Fence` (its id and epoch), and **every write transaction begins with the fence**: the
daemon's row is read ``FOR SHARE`` and the transaction goes on only if the epoch is still the
daemon's and the lease has not expired; otherwise :class:`~spotd.store.errors.Fenced` and
nothing is written. A takeover bumps the dead daemon's epoch with an ``UPDATE`` of that row,
which waits for any transaction holding the share lock: so the dead daemon's writes all commit
before the takeover, or fail after it — a daemon paused past its lease (SIGSTOP, a long GC, a
partition) cannot write when it wakes up, whatever it believed.

A job or service is run by its ``owner``. A daemon that joins keeps what it owned (a restart
within the lease: nobody took it yet); every live daemon takes over, each pass, its share of
what is owned by daemons whose lease expired (or by nobody: rows from a single daemon), so the
work of a dead daemon spreads over the living within about ``lease + pass`` seconds. Rows are
claimed ``FOR UPDATE SKIP LOCKED``: two daemons taking over at once never wait on each other
nor claim one row twice.

A daemon that joins a cluster already running gets new submissions through the API at once,
but the running jobs stay where they are unless the load is evened: a daemon holding more than
its share (``spotd.control.cluster.surplus``) hands some of its RUNNING jobs over — each job's
own worker, between two steps, clears the owner (``release_job``, fenced) and stops — and the
daemons below their share claim them at their next pass as they claim a dead daemon's.

A daemon counts in the shares (and for the pools' leader) only once it is *ready*: its first
takeover pass, which the daemon makes once its controllers watch what it owns, stamps
``ready_at``; joining clears it. Counted from the join, a daemon still starting (adopting ten
thousand jobs, listing every region) was handed jobs by the others that then waited, unwatched,
for its start. Its own rows are never taken from it while it starts: claims go by the lease.

On SQLite these functions work too (one writer: the fence is trivially serialised), but only
PostgreSQL is supported for several daemons (``spotd.config``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import (
    Connection,
    Select,
    Table,
    func,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from spotd.store.base import StoreBase
from spotd.store.cas import write_event
from spotd.store.errors import Fenced
from spotd.store.fence import Fence, check_fence, db_now
from spotd.store.rows import ServiceStatus
from spotd.store.tables import Daemon, Job, Service, table_of
from spotd.types import TERMINAL_JOB_STATUSES, JobStatus

__all__ = ["WAKE_CHANNEL", "DaemonRow", "JobShares", "LeaseStore", "Takeover"]

WAKE_CHANNEL = "spotd_wake"  # LISTEN/NOTIFY: "j<job id>" or "s<service id>" changed

# rows of a kind claimed in one takeover (the next pass, a second later, claims more): one
# transaction claiming thousands (an event row each) outlasted the claiming daemon's own
# lease on a remote database, and the daemon that took the work over was fenced (an HA review
# measured 2,000 rows at 3 ms a round trip: 6 s, against a 5 s lease)
CLAIM_MAX = 500
_D = table_of(Daemon)
_J = table_of(Job)
_S = table_of(Service)
_ACTIVE_JOB = _J.c.status.not_in([s.value for s in TERMINAL_JOB_STATUSES])
_LIVE_SERVICE = _S.c.status != ServiceStatus.DOWN.value


@dataclass(frozen=True, slots=True)
class DaemonRow:
    id: str
    epoch: int
    url: str
    started_at: float
    renewed_at: float
    expires_at: float
    alive: bool  # the lease had not expired when read (the database's clock)
    ready: bool  # it has made its first takeover pass since it joined (module docstring)
    jobs: int  # active jobs it owns
    services: int  # live services it owns


@dataclass(frozen=True, slots=True)
class JobShares:
    mine: int  # active jobs this daemon runs
    total: int  # active jobs
    live: int  # ready daemons whose lease holds (at least 1)


@dataclass(frozen=True, slots=True)
class Takeover:
    """What one pass took over, from whom."""

    jobs: tuple[int, ...] = ()
    services: tuple[int, ...] = ()
    from_: tuple[str, ...] = ()  # the daemons (or "nobody") it came from
    live: tuple[str, ...] = ()  # the ready daemons whose lease held, this one included


class LeaseStore(StoreBase):
    """The leases part of :class:`~spotd.store.Store`."""

    def join_cluster(self, daemon_id: str, *, url: str, lease_seconds: float) -> Fence:
        """Take (or take back) ``daemon_id``'s lease with a new epoch, and fence every write
        of this store with it. What the daemon owned and nobody took over is still its own."""
        with self._write(fenced=False) as conn:
            now = db_now(conn)
            row = conn.execute(
                select(_D.c.epoch).where(_D.c.id == daemon_id).with_for_update()
            ).first()
            values = {
                "url": url,
                "started_at": now,
                "renewed_at": now,
                "expires_at": now + lease_seconds,
                "ready_at": None,  # not counted in the shares until its first takeover pass
            }
            if row is None:
                epoch = 1
                conn.execute(_D.insert().values(id=daemon_id, epoch=epoch, **values))
            else:
                epoch = int(row.epoch) + 1
                conn.execute(update(_D).where(_D.c.id == daemon_id).values(epoch=epoch, **values))
        self.fence = Fence(daemon_id, epoch)
        return self.fence

    def renew_lease(self, lease_seconds: float) -> float:
        """Extend the lease; the new expiry (the database's clock). :class:`Fenced` if it
        lapsed or was taken over: the daemon must stop."""
        fence = self._require_fence()
        with self._write(fenced=False) as conn:
            now = db_now(conn)
            res = conn.execute(
                update(_D)
                .where(
                    _D.c.id == fence.daemon_id,
                    _D.c.epoch == fence.epoch,
                    _D.c.expires_at > now,
                )
                .values(renewed_at=now, expires_at=now + lease_seconds)
            )
            if res.rowcount != 1:
                check_fence(conn, fence)  # raises, naming which
                raise Fenced(f"daemon {fence.daemon_id}: lease lost")
            return now + lease_seconds

    def leave_cluster(self) -> None:
        """Give the lease up at once (a clean stop): the others take the work over at their
        next pass instead of waiting for the lease to run out."""
        fence = self.fence
        if fence is None:
            return
        with self._write(fenced=False) as conn:
            conn.execute(
                update(_D)
                .where(_D.c.id == fence.daemon_id, _D.c.epoch == fence.epoch)
                .values(expires_at=0.0)
            )
        self.fence = None

    def take_over(self) -> Takeover:
        """Claim this daemon's share of the jobs and services whose owner's lease expired (or
        that have no owner). Fenced: only a daemon that holds its lease takes over."""
        fence = self._require_fence()
        with self._write() as conn:
            now = db_now(conn)
            # fence the dead first: the UPDATE waits for their in-flight writes, and any
            # write they try afterwards finds a foreign epoch
            dead = (
                conn.execute(
                    update(_D)
                    .where(_D.c.expires_at > 0, _D.c.expires_at <= now, _D.c.id != fence.daemon_id)
                    .values(epoch=_D.c.epoch + 1, expires_at=0.0)
                    .returning(_D.c.id)
                )
                .scalars()
                .all()
            )
            conn.execute(  # this daemon watches its work now: count it in the shares
                update(_D)
                .where(_D.c.id == fence.daemon_id, _D.c.ready_at.is_(None))
                .values(ready_at=now)
            )
            live = select(_D.c.id).where(_D.c.expires_at > now)
            ready = live.where(_D.c.ready_at.is_not(None))
            alive = tuple(sorted(conn.execute(ready).scalars().all()))
            n_live = max(1, len(alive))
            jobs = _claim(conn, _J, _ACTIVE_JOB, live, n_live, fence.daemon_id)
            services = _claim(conn, _S, _LIVE_SERVICE, live, n_live, fence.daemon_id)
            owners = sorted({o or "nobody" for _, o in jobs + services} | set(dead))
            for job_id, old in jobs:
                write_event(
                    conn,
                    kind="job.owner",
                    message=f"now run by daemon {fence.daemon_id} ({_why(old)})",
                    now=now,
                    job_id=job_id,
                    data={"from": old, "to": fence.daemon_id},
                )
            for service_id, old in services:
                write_event(
                    conn,
                    kind="service.owner",
                    message=f"now run by daemon {fence.daemon_id} (from {old or 'no daemon'})",
                    now=now,
                    service_id=service_id,
                    data={"from": old, "to": fence.daemon_id},
                )
        return Takeover(
            jobs=tuple(j for j, _ in jobs),
            services=tuple(s for s, _ in services),
            from_=tuple(owners),
            live=alive,
        )

    def daemons(self) -> list[DaemonRow]:
        """Every daemon that ever joined, with what it runs now."""
        with self._read() as conn:
            now = db_now(conn)
            jobs = _owned(conn, _J, _ACTIVE_JOB)
            services = _owned(conn, _S, _LIVE_SERVICE)
            return [
                DaemonRow(
                    id=m["id"],
                    epoch=m["epoch"],
                    url=m["url"],
                    started_at=m["started_at"],
                    renewed_at=m["renewed_at"],
                    expires_at=m["expires_at"],
                    alive=m["expires_at"] > now,
                    ready=m["ready_at"] is not None,
                    jobs=jobs.get(m["id"], 0),
                    services=services.get(m["id"], 0),
                )
                for m in conn.execute(select(_D).order_by(_D.c.id)).mappings()
            ]

    def job_shares(self) -> JobShares:
        """How the active jobs are spread: this daemon's, all, and the live daemons."""
        fence = self._require_fence()
        with self._read() as conn:
            now = db_now(conn)
            mine, total = conn.execute(
                select(func.count().filter(_J.c.owner == fence.daemon_id), func.count()).where(
                    _ACTIVE_JOB
                )
            ).one()
            live = conn.execute(
                select(func.count())
                .select_from(_D)
                .where(_D.c.expires_at > now, _D.c.ready_at.is_not(None))
            ).scalar_one()
        return JobShares(mine=int(mine), total=int(total), live=max(1, int(live)))

    def movable_jobs(self, limit: int) -> list[int]:
        """Up to ``limit`` of this daemon's RUNNING jobs, newest first: the ones it may hand
        to another daemon (a job being placed or launched stays where its intent was made)."""
        fence = self._require_fence()
        with self._read() as conn:
            q = (
                select(_J.c.id)
                .where(_J.c.owner == fence.daemon_id, _J.c.status == JobStatus.RUNNING.value)
                .order_by(_J.c.id.desc())
                .limit(limit)
            )
            return [int(i) for i in conn.execute(q).scalars()]

    def release_job(self, job_id: int, *, why: str) -> bool:
        """Give up running ``job_id`` (still this daemon's and RUNNING): no owner, for a daemon
        below its share to claim at its next pass. False: it was not (it changed meanwhile)."""
        fence = self._require_fence()
        with self._write() as conn:
            done = conn.execute(
                update(_J)
                .where(
                    _J.c.id == job_id,
                    _J.c.owner == fence.daemon_id,
                    _J.c.status == JobStatus.RUNNING.value,
                )
                .values(owner=None)
            ).rowcount
            if done:
                write_event(
                    conn,
                    kind="job.owner",
                    message=f"released by daemon {fence.daemon_id}: {why}",
                    now=db_now(conn),
                    job_id=job_id,
                    data={"from": fence.daemon_id, "to": None},
                )
        return bool(done)

    def notify_wake(self, payload: str) -> None:
        """Tell every daemon listening (``spotd.control.cluster``) that ``payload`` ("j12",
        "s3") changed: its owner wakes its worker at once. PostgreSQL only; elsewhere a no-op
        (one daemon: the wake was local)."""
        if self.dialect != "postgresql":
            return
        with self._read() as conn:
            conn.execute(select(func.pg_notify(WAKE_CHANNEL, payload)))

    def _require_fence(self) -> Fence:
        if self.fence is None:
            raise RuntimeError("join_cluster first: this store holds no lease")
        return self.fence


def _why(old: str | None) -> str:
    return "it had no owner" if old is None else f"{old} stopped renewing its lease"


def _claim(
    conn: Connection,
    t: Table,
    active: ColumnElement[bool],
    live: Select[tuple[str]],
    n_live: int,
    me: str,
) -> list[tuple[int, str | None]]:
    """Claim active rows whose owner is not alive (or that have none), up to this daemon's
    fair share of all the active rows (``ceil(active / live daemons)`` less what it runs).
    While a dead daemon's rows wait, at least one: they are never left behind a live daemon
    that does not claim its share. Rows released to even the load (no owner) go only to
    daemons below their share, so the daemon that released them does not take them back."""
    dead = active & t.c.owner.is_not(None) & t.c.owner.not_in(live)
    orphan = active & (t.c.owner.is_(None) | t.c.owner.not_in(live))
    count = select(func.count()).select_from(t)
    if not conn.execute(count.where(orphan)).scalar_one():
        return []
    total = conn.execute(count.where(active)).scalar_one()
    mine = conn.execute(count.where(active, t.c.owner == me)).scalar_one()
    share = math.ceil(total / n_live) - mine
    if share < 1:
        if not conn.execute(count.where(dead)).scalar_one():
            return []
        share = 1
    rows = conn.execute(
        select(t.c.id, t.c.owner)
        .where(orphan)
        .order_by(t.c.id)
        .limit(min(share, CLAIM_MAX))
        .with_for_update(skip_locked=True)
    ).all()
    ids = [r.id for r in rows]
    if ids:
        conn.execute(update(t).where(t.c.id.in_(ids)).values(owner=me))
    return [(int(r.id), r.owner) for r in rows]


def _owned(conn: Connection, t: Table, active: ColumnElement[bool]) -> dict[str, int]:
    q = select(t.c.owner, func.count()).where(active, t.c.owner.is_not(None)).group_by(t.c.owner)
    return {str(o): int(n) for o, n in conn.execute(q).all()}
