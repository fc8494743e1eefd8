"""Jobs and their attempts.

A job's status and an attempt's status change only through :func:`~spotd.store.cas.compare_and_set`
(``transition_job`` / ``transition_attempt``). ``create_attempt`` writes the *intent* — the
attempt and one instance row per node, ``instance_id`` still None — in one transaction before
any provider call: a daemon killed mid-launch finds rows without an instance id and finishes the
launch, idempotent by key.

``create_job`` is the launch's insert: the project's limits are checked and the
job inserted in one transaction (see :mod:`spotd.store.projects`), so no number of listeners
or daemons can take a project over its quota between the check and the insert.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select

from spotd.store.base import StoreBase
from spotd.store.cas import (
    Note,
    Subject,
    checked_fields,
    compare_and_set,
    enum_value,
    fetch,
    set_fields,
    write_event,
)
from spotd.store.projects import Admit, admitted
from spotd.store.rows import AttemptRow, InstanceRow, JobRow
from spotd.store.tables import Attempt, Instance, Job, table_of
from spotd.types import (
    TERMINAL_JOB_STATUSES,
    AttemptStatus,
    EndReason,
    InstanceState,
    JobStatus,
    Market,
)

__all__ = ["ATTEMPTS", "JOBS", "JobPage", "JobStore"]


MAX_BOUND_IDS = 1000  # a page's job ids go to the database as parameters up to this many


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs, newest first, with what a listing shows of each: three queries in
    all, however many jobs (``JobStore.job_page``)."""

    jobs: list[JobRow]
    attempts: Mapping[int, list[AttemptRow]] = field(default_factory=dict)  # by job, in order
    nodes: Mapping[str, list[InstanceRow]] = field(default_factory=dict)  # by current attempt
    more: bool = False  # jobs older than the last one remain (ask again with ``before``)


JOBS = Subject(
    what="job",
    table=table_of(Job),
    key="id",
    row=JobRow.from_mapping,
    links=(("job_id", "id"),),
    # gpus: the reservation is written once, by the insert that admitted the job
    settable=frozenset(Job.model_fields) - {"id", "status", "task_id", "gpus"},
)
ATTEMPTS = Subject(
    what="attempt",
    table=table_of(Attempt),
    key="id",
    row=AttemptRow.from_mapping,
    links=(("job_id", "job_id"), ("attempt_id", "id")),
)


class JobStore(StoreBase):
    """The jobs and attempts part of :class:`~spotd.store.Store`."""

    def create_job(
        self,
        *,
        name: str,
        task_id_prefix: str,
        spec_json: str,
        spec_redacted_json: str,
        resources: str,
        submitted_at: float,
        project: str = "default",
        deadline: float | None = None,
        gpus: float = 0.0,
        admit: Admit | None = None,
    ) -> JobRow:
        """Store a new PENDING job and its first event.

        ``admit`` (a launch passes one): the project's row is locked and what it holds is read,
        ``admit`` decides, and the job is inserted before anyone else may decide for that
        project; if it refuses, its :class:`OverQuota` is raised and nothing is written.
        Without it the project's limits are not consulted (migrations, tests, adoption).

        ``task_id`` is ``task_id_prefix + str(id)``, e.g. prefix "spotd-1a2b-j" gives
        "spotd-1a2b-j7": it needs the id, so it is set in the same transaction as the insert.
        ``gpus``: what it reserves against its project's quota while it is active.
        """
        with self._write() as conn:
            if admit is not None:
                admitted(conn, project, admit)
            return _insert_job(
                conn,
                name=name,
                task_id_prefix=task_id_prefix,
                spec_json=spec_json,
                spec_redacted_json=spec_redacted_json,
                resources=resources,
                submitted_at=submitted_at,
                project=project,
                deadline=deadline,
                gpus=gpus,
            )

    def get_job(self, job_id: int) -> JobRow | None:
        return self._get(JOBS, job_id)

    def require_job(self, job_id: int) -> JobRow:
        """The job; :class:`NotFound` ("no job 7") if there is none."""
        return self._require(JOBS, job_id)

    def list_jobs(
        self, *, statuses: Collection[JobStatus] | None = None, limit: int | None = None
    ) -> list[JobRow]:
        """Jobs, newest first, optionally only those in ``statuses``."""
        jt = JOBS.table
        q = select(jt).order_by(jt.c.id.desc())
        if statuses is not None:
            q = q.where(jt.c.status.in_([enum_value(s) for s in statuses]))
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            return [JobRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def job_page(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        project: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> JobPage:
        """Jobs newest first (only ``statuses``, only ``project``'s, only ids below ``before``,
        at most ``limit``), their attempts and their current attempts' instances: one query
        each, in one read, so a listing costs the same three statements at 10 or 10,000 jobs."""
        jt, at, it = JOBS.table, ATTEMPTS.table, table_of(Instance)
        q = select(jt).order_by(jt.c.id.desc())
        if statuses is not None:
            q = q.where(jt.c.status.in_([enum_value(s) for s in statuses]))
        if project is not None:
            q = q.where(jt.c.project == project)
        if before is not None:
            q = q.where(jt.c.id < before)
        if limit is not None:
            q = q.limit(limit + 1)  # one more: whether another page follows
        with self._read() as conn:
            jobs = [JobRow.from_mapping(m) for m in conn.execute(q).mappings()]
            more = limit is not None and len(jobs) > limit
            jobs = jobs[:limit] if limit is not None else jobs
            if not jobs:
                return JobPage(jobs=[], more=False)
            ids = {j.id for j in jobs}
            attempts: dict[int, list[AttemptRow]] = {}
            rows = conn.execute(
                select(at).where(_of_jobs(at.c.job_id, jobs)).order_by(at.c.job_id, at.c.attempt)
            )
            for m in rows.mappings():
                a = AttemptRow.from_mapping(m)
                if a.job_id in ids:
                    attempts.setdefault(a.job_id, []).append(a)
            current = {v[-1].id for v in attempts.values()}
            nodes: dict[str, list[InstanceRow]] = {}
            rows = conn.execute(
                select(it)
                .where(_of_jobs(it.c.job_id, jobs))
                .order_by(it.c.attempt_id, it.c.node_rank)
            )
            for m in rows.mappings():
                if m["attempt_id"] in current:
                    nodes.setdefault(m["attempt_id"], []).append(InstanceRow.from_mapping(m))
        return JobPage(jobs=jobs, attempts=attempts, nodes=nodes, more=more)

    def live_instance_keys(self) -> set[str]:
        """The keys of every instance not yet marked terminated (the reaper's "do we know
        it"), as one column: not ten thousand rows built twice a second."""
        it = table_of(Instance)
        with self._read() as conn:
            return set(conn.execute(select(it.c.key).where(it.c.terminated.is_(False))).scalars())

    def recorded_instance_keys(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` the store has a row for (live or terminated)."""
        it = table_of(Instance)
        wanted = sorted(keys)
        out: set[str] = set()
        with self._read() as conn:
            for i in range(0, len(wanted), MAX_BOUND_IDS):
                chunk = wanted[i : i + MAX_BOUND_IDS]
                out.update(conn.execute(select(it.c.key).where(it.c.key.in_(chunk))).scalars())
        return out

    def ended_attempts_live_nodes(self, provider: str) -> list[tuple[AttemptRow, InstanceRow]]:
        """(attempt, node) for each node not yet marked terminated of an ended attempt on
        ``provider``: what the reaper must still finish off, in one query (not one per live
        instance and tick)."""
        at, it = ATTEMPTS.table, table_of(Instance)
        q = (
            select(at, it)
            .join(it, it.c.attempt_id == at.c.id)
            .where(
                at.c.status == AttemptStatus.ENDED.value,
                at.c.provider == provider,
                it.c.terminated.is_(False),
            )
            .order_by(it.c.key)
        )
        with self._read() as conn:
            rows = conn.execute(q).all()
        na = len(at.c)
        return [
            (
                AttemptRow.from_mapping(dict(zip(at.c.keys(), r[:na], strict=True))),
                InstanceRow.from_mapping(dict(zip(it.c.keys(), r[na:], strict=True))),
            )
            for r in rows
        ]

    def active_jobs(self) -> list[JobRow]:
        """Jobs not in a terminal status, oldest first (the order workers are started in)."""
        jt = JOBS.table
        q = (
            select(jt)
            .where(jt.c.status.not_in([s.value for s in TERMINAL_JOB_STATUSES]))
            .order_by(jt.c.id)
        )
        with self._read() as conn:
            return [JobRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def jobs_ended_before(self, job_ids: Collection[int], *, before: float) -> list[int]:
        """Those of ``job_ids`` that reached a terminal status before ``before`` (retention
        deletes their attempt logs)."""
        jt = JOBS.table
        q = select(jt.c.id).where(
            jt.c.id.in_(list(job_ids)),
            jt.c.status.in_([s.value for s in TERMINAL_JOB_STATUSES]),
            func.coalesce(jt.c.ended_at, jt.c.submitted_at) < before,
        )
        with self._read() as conn:
            return sorted(int(i) for i in conn.execute(q).scalars())

    def transition_job(
        self,
        /,
        job_id: int,
        *,
        from_: Collection[JobStatus],
        to: JobStatus,
        reason: str,
        now: float,
        **fields: Any,
    ) -> JobRow:
        """Compare-and-set the job's status, set ``fields`` too, and write the event.

        ``message`` defaults to ``reason``. Raises :class:`StaleTransition` (nothing written)
        if the job is not in one of ``from_``; :class:`NotFound` if there is no such job.
        """
        values = checked_fields(JOBS, fields)
        values.setdefault("message", reason)
        with self._write() as conn:
            return compare_and_set(
                conn,
                JOBS,
                job_id,
                from_=from_,
                to=to,
                reason=reason,
                now=now,
                values=values,
                data={"fields": values},
            )

    def update_job_fields(
        self, /, job_id: int, *, now: float, event: str | None = None, **fields: Any
    ) -> JobRow:
        """Non-status bookkeeping (counters, next_try_at, message). ``event``: also log it."""
        values = checked_fields(JOBS, fields)
        note = None if event is None else Note(event, now)
        with self._write() as conn:
            return set_fields(conn, JOBS, job_id, values, note=note)

    # -- attempts ----------------------------------------------------------------------

    def create_attempt(
        self,
        *,
        job_id: int,
        attempt: int,
        provider: str,
        region: str,
        zone: str,
        instance_type: str,
        market: Market | str,
        price_per_hour: float,
        num_nodes: int,
        now: float,
        instances: Sequence[Mapping[str, Any]],
    ) -> AttemptRow:
        """Write the intent: the attempt (PROVISIONING) and its instance rows, atomically.

        ``instances``: one ``{"key", "node_rank", "token"}`` per node, ``instance_id`` unset
        until :meth:`set_instance_id`. Called before any provider call.
        """
        aid = f"j{job_id}-a{attempt}"
        market_value = Market(market).value
        with self._write() as conn:
            conn.execute(
                ATTEMPTS.table.insert().values(
                    id=aid,
                    job_id=job_id,
                    attempt=attempt,
                    status=AttemptStatus.PROVISIONING.value,
                    provider=provider,
                    region=region,
                    zone=zone,
                    instance_type=instance_type,
                    market=market_value,
                    price_per_hour=price_per_hour,
                    num_nodes=num_nodes,
                    created_at=now,
                    end_detail="",
                )
            )
            if instances:
                conn.execute(
                    table_of(Instance).insert(),
                    [
                        {
                            "key": i["key"],
                            "attempt_id": aid,
                            "job_id": job_id,
                            "node_rank": int(i["node_rank"]),
                            "provider": provider,
                            "instance_id": None,
                            "region": region,
                            "zone": zone,
                            "state": InstanceState.PENDING.value,
                            "token": i["token"],
                            "created_at": now,
                            "log_offset": 0,
                            "terminated": False,
                        }
                        for i in instances
                    ],
                )
            write_event(
                conn,
                kind="attempt.status",
                message=(
                    f"→ PROVISIONING: attempt {attempt} in {provider}/{region}/{zone}, "
                    f"{num_nodes}x {instance_type} {market_value} ${price_per_hour:.4f}/h"
                ),
                now=now,
                job_id=job_id,
                attempt_id=aid,
                data={"from": None, "to": AttemptStatus.PROVISIONING.value},
            )
            return fetch(conn, ATTEMPTS, aid)

    def transition_attempt(
        self,
        attempt_id: str,
        *,
        from_: Collection[AttemptStatus],
        to: AttemptStatus,
        reason: str,
        now: float,
        end_reason: EndReason | None = None,
        end_detail: str = "",
    ) -> AttemptRow:
        """Compare-and-set the attempt's status and write the event.

        Reaching RUNNING sets ``started_at`` (once); reaching ENDED sets ``ended_at`` and needs
        an ``end_reason``: an attempt never ends without saying why.
        """
        if (to == AttemptStatus.ENDED) != (end_reason is not None):
            raise ValueError("end_reason is required when, and only when, an attempt ENDs")
        values: dict[str, Any] = {}
        if to == AttemptStatus.RUNNING:  # the first start stands
            values["started_at"] = func.coalesce(ATTEMPTS.table.c.started_at, now)
        if to == AttemptStatus.ENDED:
            values.update(ended_at=now, end_reason=enum_value(end_reason), end_detail=end_detail)
        with self._write() as conn:
            return compare_and_set(
                conn,
                ATTEMPTS,
                attempt_id,
                from_=from_,
                to=to,
                reason=reason,
                now=now,
                values=values,
                data={"end_reason": values.get("end_reason")},
            )

    def attempts(self, job_id: int) -> list[AttemptRow]:
        """The job's attempts, first to last."""
        at = ATTEMPTS.table
        with self._read() as conn:
            rows = conn.execute(select(at).where(at.c.job_id == job_id).order_by(at.c.attempt))
            return [AttemptRow.from_mapping(m) for m in rows.mappings()]

    def get_attempt(self, attempt_id: str) -> AttemptRow | None:
        return self._get(ATTEMPTS, attempt_id)

    def require_attempt(self, attempt_id: str) -> AttemptRow:
        """The attempt; :class:`NotFound` ("no attempt j7-a2") if there is none."""
        return self._require(ATTEMPTS, attempt_id)


def _of_jobs(column: ColumnElement[int], jobs: Sequence[JobRow]) -> ColumnElement[bool]:
    """``column`` names one of ``jobs`` (newest first): a page's ids as parameters, a long
    listing's as their range (not 10,000 parameters; the caller drops what is not theirs)."""
    if len(jobs) <= MAX_BOUND_IDS:
        return column.in_(sorted(j.id for j in jobs))
    return column.between(jobs[-1].id, jobs[0].id)


def _insert_job(
    conn: Connection,
    *,
    name: str,
    task_id_prefix: str,
    spec_json: str,
    spec_redacted_json: str,
    resources: str,
    submitted_at: float,
    project: str,
    deadline: float | None,
    gpus: float,
) -> JobRow:
    jt = JOBS.table
    res = conn.execute(
        jt.insert()
        .values(
            name=name,
            task_id=f"pending-{uuid.uuid4().hex}",
            status=JobStatus.PENDING.value,
            spec_json=spec_json,
            spec_redacted_json=spec_redacted_json,
            resources=resources,
            project=project,
            submitted_at=submitted_at,
            deadline=deadline,
            gpus=gpus,
            message="submitted",
        )
        .returning(jt.c.id)
    )
    job_id = int(res.scalar_one())
    conn.execute(jt.update().where(jt.c.id == job_id).values(task_id=f"{task_id_prefix}{job_id}"))
    write_event(
        conn,
        kind="job.status",
        message=f"→ PENDING: submitted {name!r} ({resources})",
        now=submitted_at,
        job_id=job_id,
        data={"from": None, "to": JobStatus.PENDING.value, "project": project, "gpus": gpus},
    )
    return fetch(conn, JOBS, job_id)
