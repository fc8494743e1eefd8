"""Pools: their workers (managed jobs), the jobs queued on them, and each job's attempts.

A pool job changes status only with a guarded update (``… WHERE status IN (…)``) and an event
in the same transaction, like every other row here. Its event goes to the worker's managed job
(``job_id`` is the worker's), so ``spotctl jobs events <worker>`` shows what the worker ran.

What an attempt's end does to its job (SUCCEEDED, FAILED, or QUEUED again) is the caller's
decision (``Decide``: ``spotd.control.pool_queue.after_attempt``), made inside the transaction
that ends the attempt, over the job's attempts counted there.

The one step that must not race is ``claim_pool_job``: the job moves QUEUED → RUNNING and its
attempt is inserted in one write transaction, so two workers asking at once (on one daemon or
two sharing the database) can never both get it.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, func, select, update

from spotd.store.base import StoreBase
from spotd.store.cas import write_event
from spotd.store.errors import NotFound, OverQuota, StoreError
from spotd.store.tables import Pool, PoolAttempt, PoolJob, PoolWorker, table_of

__all__ = [
    "Decide",
    "PoolAttemptRow",
    "PoolEnd",
    "PoolExists",
    "PoolJobRow",
    "PoolJobStatus",
    "PoolRow",
    "PoolStatus",
    "PoolStore",
    "PoolWorkerRow",
]


class PoolStatus(enum.StrEnum):
    UP = "UP"  # its workers are kept up; jobs queued on it run
    DOWN = "DOWN"  # `spotctl jobs pool down`: workers cancelled, queued jobs cancelled


class PoolJobStatus(enum.StrEnum):
    QUEUED = "QUEUED"  # waiting for a free worker (again, after a preemption)
    RUNNING = "RUNNING"  # an attempt runs on a worker
    SUCCEEDED = "SUCCEEDED"  # run exited 0
    FAILED = "FAILED"  # run exited non-zero
    CANCELLED = "CANCELLED"  # cancelled, or the pool went down first

    @property
    def is_terminal(self) -> bool:
        return self in (PoolJobStatus.SUCCEEDED, PoolJobStatus.FAILED, PoolJobStatus.CANCELLED)


class PoolEnd(enum.StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    PREEMPTED = "PREEMPTED"  # the worker's instance went away: the job was queued again
    CANCELLED = "CANCELLED"


class PoolExists(StoreError):
    """A pool of that name is up already."""


def _pick(cls: type, m: Mapping[Any, Any]) -> dict[str, Any]:
    return {f.name: m[f.name] for f in fields(cls)}


@dataclass(frozen=True, slots=True)
class PoolRow:
    id: int
    name: str
    project: str
    status: PoolStatus
    workers: int
    spec_json: str
    spec_redacted_json: str
    created_at: float
    ended_at: float | None

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> PoolRow:
        return cls(**{**_pick(cls, m), "status": PoolStatus(m["status"])})


@dataclass(frozen=True, slots=True)
class PoolWorkerRow:
    job_id: int
    pool_id: int
    slot: int

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> PoolWorkerRow:
        return cls(**_pick(cls, m))


@dataclass(frozen=True, slots=True)
class PoolJobRow:
    id: int
    pool_id: int
    name: str
    status: PoolJobStatus
    rank: int
    num_jobs: int
    run: str
    envs_json: str
    secret_names_json: str
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    attempts: int
    exit_code: int | None
    message: str
    max_restarts_on_errors: int

    @property
    def envs(self) -> dict[str, str]:
        out: dict[str, str] = json.loads(self.envs_json)
        return out

    @property
    def secret_names(self) -> list[str]:
        out: list[str] = json.loads(self.secret_names_json)
        return out

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> PoolJobRow:
        return cls(**{**_pick(cls, m), "status": PoolJobStatus(m["status"])})


@dataclass(frozen=True, slots=True)
class PoolAttemptRow:
    id: str
    pool_job_id: int
    attempt: int
    worker_job_id: int
    instance_key: str
    started_at: float
    ended_at: float | None
    end_reason: PoolEnd | None
    exit_code: int | None

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> PoolAttemptRow:
        end = m["end_reason"]
        return cls(**{**_pick(cls, m), "end_reason": None if end is None else PoolEnd(end)})


POOLS = table_of(Pool)
WORKERS = table_of(PoolWorker)
PJOBS = table_of(PoolJob)
PATTEMPTS = table_of(PoolAttempt)

# (the job, its attempts that failed and that were lost with their worker, the one ending
# now included; its exit code, None when lost) -> the job's next status and why
Decide = Callable[[PoolJobRow, int, int, int | None], tuple[PoolJobStatus, str]]


def pool_attempt_id(job_id: int, attempt: int) -> str:
    return f"q{job_id}-a{attempt}"


def _job(conn: Connection, job_id: int) -> PoolJobRow:
    m = conn.execute(select(PJOBS).where(PJOBS.c.id == job_id)).mappings().first()
    if m is None:
        raise NotFound(f"no pool job {job_id}")
    return PoolJobRow.from_mapping(m)


def _attempt(conn: Connection, aid: str) -> PoolAttemptRow | None:
    m = conn.execute(select(PATTEMPTS).where(PATTEMPTS.c.id == aid)).mappings().first()
    return None if m is None else PoolAttemptRow.from_mapping(m)


def _move(
    conn: Connection,
    job_id: int,
    *,
    from_: Collection[PoolJobStatus],
    to: PoolJobStatus,
    reason: str,
    now: float,
    worker_job_id: int | None,
    values: Mapping[str, Any],
) -> PoolJobRow | None:
    """The guarded status change with its event; None: the job was not in ``from_``."""
    res = conn.execute(
        update(PJOBS)
        .where(PJOBS.c.id == job_id, PJOBS.c.status.in_([s.value for s in from_]))
        .values(status=to.value, **values)
    )
    if res.rowcount != 1:
        return None
    row = _job(conn, job_id)
    write_event(
        conn,
        kind="pool_job.status",
        message=f"pool job {job_id} (rank {row.rank}) → {to}: {reason}",
        now=now,
        job_id=worker_job_id,
        data={"pool_job_id": job_id, "pool_id": row.pool_id, "to": to.value},
    )
    return row


def _end_attempt(
    conn: Connection, aid: str, end: PoolEnd, now: float, exit_code: int | None = None
) -> bool:
    res = conn.execute(
        update(PATTEMPTS)
        .where(PATTEMPTS.c.id == aid, PATTEMPTS.c.ended_at.is_(None))
        .values(ended_at=now, end_reason=end.value, exit_code=exit_code)
    )
    return bool(res.rowcount == 1)


class PoolStore(StoreBase):
    """The pools part of :class:`~spotd.store.Store`."""

    # -- pools -------------------------------------------------------------------------

    def create_pool(
        self,
        *,
        name: str,
        project: str,
        workers: int,
        spec_json: str,
        spec_redacted_json: str,
        now: float,
    ) -> PoolRow:
        """A new pool, UP; :class:`PoolExists` if one of that name is up."""
        with self._write() as conn:
            if self._up(conn, name) is not None:
                raise PoolExists(f"a pool named {name} is up already")
            res = conn.execute(
                POOLS.insert()
                .values(
                    name=name,
                    project=project,
                    status=PoolStatus.UP.value,
                    workers=workers,
                    spec_json=spec_json,
                    spec_redacted_json=spec_redacted_json,
                    created_at=now,
                )
                .returning(POOLS.c.id)
            )
            pid = int(res.scalar_one())
            write_event(
                conn,
                kind="pool.status",
                message=f"pool {name} up: {workers} workers",
                now=now,
                data={"pool_id": pid},
            )
            m = conn.execute(select(POOLS).where(POOLS.c.id == pid)).mappings().one()
            return PoolRow.from_mapping(m)

    @staticmethod
    def _up(conn: Connection, name: str) -> PoolRow | None:
        m = (
            conn.execute(
                select(POOLS).where(POOLS.c.name == name, POOLS.c.status == PoolStatus.UP.value)
            )
            .mappings()
            .first()
        )
        return None if m is None else PoolRow.from_mapping(m)

    def pool_by_name(self, name: str) -> PoolRow | None:
        """The pool of that name that is up; None if there is none."""
        with self._read() as conn:
            return self._up(conn, name)

    def get_pool(self, pool_id: int) -> PoolRow | None:
        with self._read() as conn:
            m = conn.execute(select(POOLS).where(POOLS.c.id == pool_id)).mappings().first()
            return None if m is None else PoolRow.from_mapping(m)

    def list_pools(self, *, project: str | None = None) -> list[PoolRow]:
        """Pools that are up (a project's only, when given), oldest first."""
        q = select(POOLS).where(POOLS.c.status == PoolStatus.UP.value).order_by(POOLS.c.id)
        if project is not None:
            q = q.where(POOLS.c.project == project)
        with self._read() as conn:
            return [PoolRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def set_pool_workers(self, pool_id: int, workers: int, *, now: float) -> None:
        with self._write() as conn:
            conn.execute(update(POOLS).where(POOLS.c.id == pool_id).values(workers=workers))
            write_event(
                conn,
                kind="pool.update",
                message=f"pool {pool_id}: {workers} workers",
                now=now,
                data={"pool_id": pool_id},
            )

    def pool_down(self, pool_id: int, *, now: float) -> list[PoolWorkerRow]:
        """UP → DOWN; its queued and running jobs are cancelled (their open attempts end).
        The workers, whose jobs the caller cancels; [] if the pool was down already."""
        with self._write() as conn:
            res = conn.execute(
                update(POOLS)
                .where(POOLS.c.id == pool_id, POOLS.c.status == PoolStatus.UP.value)
                .values(status=PoolStatus.DOWN.value, ended_at=now)
            )
            if res.rowcount != 1:
                return []
            live = [PoolJobStatus.QUEUED.value, PoolJobStatus.RUNNING.value]
            ids = (
                conn.execute(
                    select(PJOBS.c.id).where(PJOBS.c.pool_id == pool_id, PJOBS.c.status.in_(live))
                )
                .scalars()
                .all()
            )
            for jid in ids:
                for aid in conn.execute(
                    select(PATTEMPTS.c.id).where(
                        PATTEMPTS.c.pool_job_id == jid, PATTEMPTS.c.ended_at.is_(None)
                    )
                ).scalars():
                    _end_attempt(conn, aid, PoolEnd.CANCELLED, now)
                _move(
                    conn,
                    jid,
                    from_=[PoolJobStatus.QUEUED, PoolJobStatus.RUNNING],
                    to=PoolJobStatus.CANCELLED,
                    reason="the pool went down",
                    now=now,
                    worker_job_id=None,
                    values={"ended_at": now},
                )
            write_event(
                conn,
                kind="pool.status",
                message=f"pool {pool_id} down",
                now=now,
                data={"pool_id": pool_id},
            )
            q = select(WORKERS).where(WORKERS.c.pool_id == pool_id)
            return [PoolWorkerRow.from_mapping(m) for m in conn.execute(q).mappings()]

    # -- workers -----------------------------------------------------------------------

    def add_pool_worker(self, *, job_id: int, pool_id: int, slot: int) -> PoolWorkerRow:
        with self._write() as conn:
            conn.execute(WORKERS.insert().values(job_id=job_id, pool_id=pool_id, slot=slot))
        return PoolWorkerRow(job_id=job_id, pool_id=pool_id, slot=slot)

    def pool_workers(self, pool_id: int) -> list[PoolWorkerRow]:
        q = select(WORKERS).where(WORKERS.c.pool_id == pool_id).order_by(WORKERS.c.job_id)
        with self._read() as conn:
            return [PoolWorkerRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def pool_worker(self, job_id: int) -> PoolWorkerRow | None:
        with self._read() as conn:
            m = conn.execute(select(WORKERS).where(WORKERS.c.job_id == job_id)).mappings().first()
            return None if m is None else PoolWorkerRow.from_mapping(m)

    # -- jobs --------------------------------------------------------------------------

    def add_pool_jobs(
        self,
        *,
        pool_id: int,
        name: str,
        run: str,
        envs: Mapping[str, str],
        secret_names: Sequence[str],
        num_jobs: int,
        now: float,
        max_restarts_on_errors: int = 0,
        max_active: int | None = None,
    ) -> list[PoolJobRow]:
        """``num_jobs`` copies of one job, ranks 0 .. num_jobs-1, QUEUED. ``OverQuota`` (and
        nothing written) when the pool would then hold more than ``max_active`` queued or
        running jobs: counted in the same transaction as the insert."""
        with self._write() as conn:
            pool = conn.execute(select(POOLS.c.status).where(POOLS.c.id == pool_id)).scalar()
            if pool != PoolStatus.UP.value:
                raise NotFound(f"no pool {pool_id} up")
            if max_active is not None:
                active = conn.execute(
                    select(func.count())
                    .select_from(PJOBS)
                    .where(PJOBS.c.pool_id == pool_id)
                    .where(
                        PJOBS.c.status.in_(
                            [PoolJobStatus.QUEUED.value, PoolJobStatus.RUNNING.value]
                        )
                    )
                ).scalar_one()
                if active + num_jobs > max_active:
                    raise OverQuota(
                        f"the pool holds {active} queued or running jobs; {num_jobs} more would "
                        f"pass its limit of {max_active}: wait for some to finish",
                        {"active": active, "asked": num_jobs, "limit": max_active},
                    )
            ids = []
            for rank in range(num_jobs):
                res = conn.execute(
                    PJOBS.insert()
                    .values(
                        pool_id=pool_id,
                        name=name,
                        status=PoolJobStatus.QUEUED.value,
                        rank=rank,
                        num_jobs=num_jobs,
                        run=run,
                        envs_json=json.dumps(dict(envs)),
                        secret_names_json=json.dumps(list(secret_names)),
                        submitted_at=now,
                        max_restarts_on_errors=max_restarts_on_errors,
                    )
                    .returning(PJOBS.c.id)
                )
                ids.append(int(res.scalar_one()))
            write_event(
                conn,
                kind="pool_job.status",
                message=f"{num_jobs} job(s) {name} queued on pool {pool_id}: {ids[0]}..{ids[-1]}",
                now=now,
                data={"pool_id": pool_id, "pool_job_ids": ids},
            )
            return [_job(conn, i) for i in ids]

    def pool_jobs(
        self, pool_id: int, *, statuses: Collection[PoolJobStatus] | None = None
    ) -> list[PoolJobRow]:
        q = select(PJOBS).where(PJOBS.c.pool_id == pool_id).order_by(PJOBS.c.id)
        if statuses is not None:
            q = q.where(PJOBS.c.status.in_([s.value for s in statuses]))
        with self._read() as conn:
            return [PoolJobRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def get_pool_job(self, job_id: int) -> PoolJobRow | None:
        with self._read() as conn:
            m = conn.execute(select(PJOBS).where(PJOBS.c.id == job_id)).mappings().first()
            return None if m is None else PoolJobRow.from_mapping(m)

    def pool_attempts(self, pool_id: int, *, open_only: bool = False) -> list[PoolAttemptRow]:
        """The attempts of the pool's jobs, by job then attempt."""
        q = (
            select(PATTEMPTS)
            .join(PJOBS, PJOBS.c.id == PATTEMPTS.c.pool_job_id)
            .where(PJOBS.c.pool_id == pool_id)
            .order_by(PATTEMPTS.c.pool_job_id, PATTEMPTS.c.attempt)
        )
        if open_only:
            q = q.where(PATTEMPTS.c.ended_at.is_(None))
        with self._read() as conn:
            return [PoolAttemptRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def open_pool_attempt(self, instance_key: str) -> PoolAttemptRow | None:
        """What the worker on that instance is running now, if anything."""
        q = select(PATTEMPTS).where(
            PATTEMPTS.c.instance_key == instance_key, PATTEMPTS.c.ended_at.is_(None)
        )
        with self._read() as conn:
            m = conn.execute(q).mappings().first()
            return None if m is None else PoolAttemptRow.from_mapping(m)

    def claim_pool_job(
        self, job_id: int, *, worker_job_id: int, instance_key: str, now: float
    ) -> PoolAttemptRow | None:
        """QUEUED → RUNNING with a new attempt on the worker, in one transaction; None when
        the job is no longer queued (another worker took it, the pool went down)."""
        with self._write() as conn:
            job = _job(conn, job_id)
            n = job.attempts + 1
            moved = _move(
                conn,
                job_id,
                from_=[PoolJobStatus.QUEUED],
                to=PoolJobStatus.RUNNING,
                reason=f"attempt {n} on worker job {worker_job_id} ({instance_key})",
                now=now,
                worker_job_id=worker_job_id,
                values={"attempts": n, "started_at": job.started_at or now},
            )
            if moved is None:
                return None
            aid = pool_attempt_id(job_id, n)
            conn.execute(
                PATTEMPTS.insert().values(
                    id=aid,
                    pool_job_id=job_id,
                    attempt=n,
                    worker_job_id=worker_job_id,
                    instance_key=instance_key,
                    started_at=now,
                )
            )
            return _attempt(conn, aid)

    def finish_pool_attempt(
        self, aid: str, *, instance_key: str, exit_code: int, now: float, decide: Decide
    ) -> PoolJobRow | None:
        """The worker on ``instance_key`` reports the attempt's exit: RUNNING → what
        ``decide`` says (SUCCEEDED, FAILED, or QUEUED for a restart on error). None (nothing
        written) if the attempt is not open on that instance: a report sent twice, or one
        about an attempt already given back to the queue or cancelled."""
        with self._write() as conn:
            att = _attempt(conn, aid)
            if att is None or att.ended_at is not None or att.instance_key != instance_key:
                return None
            ok = exit_code == 0
            _end_attempt(conn, aid, PoolEnd.SUCCEEDED if ok else PoolEnd.FAILED, now, exit_code)
            return _after(conn, att, decide, exit_code, now, f"attempt {att.attempt}")

    def requeue_pool_attempt(
        self, aid: str, *, reason: str, now: float, decide: Decide
    ) -> PoolJobRow | None:
        """The attempt's worker instance is gone: end it (PREEMPTED) and queue the job again,
        or fail it when ``decide`` says it was lost too often. None if the attempt was no
        longer open."""
        with self._write() as conn:
            att = _attempt(conn, aid)
            if att is None or not _end_attempt(conn, aid, PoolEnd.PREEMPTED, now):
                return None
            return _after(conn, att, decide, None, now, f"attempt {att.attempt}: {reason}")

    def cancel_pool_job(self, job_id: int, *, reason: str, now: float) -> PoolJobRow | None:
        """QUEUED or RUNNING → CANCELLED, its open attempt ended CANCELLED (its worker stops
        it at its next exchange: ``pool_attempt``). None if the job had ended already."""
        with self._write() as conn:
            open_ = conn.execute(
                select(PATTEMPTS).where(
                    PATTEMPTS.c.pool_job_id == job_id, PATTEMPTS.c.ended_at.is_(None)
                )
            ).mappings()
            worker = None
            for m in list(open_):
                _end_attempt(conn, m["id"], PoolEnd.CANCELLED, now)
                worker = int(m["worker_job_id"])
            return _move(
                conn,
                job_id,
                from_=[PoolJobStatus.QUEUED, PoolJobStatus.RUNNING],
                to=PoolJobStatus.CANCELLED,
                reason=reason,
                now=now,
                worker_job_id=worker,
                values={"ended_at": now, "message": reason},
            )

    def pool_attempt(self, aid: str) -> PoolAttemptRow | None:
        with self._read() as conn:
            return _attempt(conn, aid)


def _after(
    conn: Connection,
    att: PoolAttemptRow,
    decide: Decide,
    exit_code: int | None,
    now: float,
    what: str,
) -> PoolJobRow | None:
    """The job of the attempt just ended moved where ``decide`` says."""
    ends = Counter(
        conn.execute(
            select(PATTEMPTS.c.end_reason).where(PATTEMPTS.c.pool_job_id == att.pool_job_id)
        ).scalars()
    )
    job = _job(conn, att.pool_job_id)
    to, why = decide(job, ends[PoolEnd.FAILED.value], ends[PoolEnd.PREEMPTED.value], exit_code)
    values: dict[str, Any] = {"message": why}
    if exit_code is not None:
        values["exit_code"] = exit_code
    if to.is_terminal:
        values["ended_at"] = now
    return _move(
        conn,
        att.pool_job_id,
        from_=[PoolJobStatus.RUNNING],
        to=to,
        reason=f"{why} ({what})",
        now=now,
        worker_job_id=att.worker_job_id,
        values=values,
    )
