"""Jobs and their attempts.

A job's status and an attempt's status change only through :func:`~spotd.store.cas.compare_and_set`
(``transition_job`` / ``transition_attempt``). ``create_attempt`` writes the *intent* — the
attempt and one instance row per node, ``instance_id`` still None — in one transaction before
any provider call: a daemon killed mid-launch finds rows without an instance id and finishes the
launch, idempotent by key. The job controller writes it with ``start_attempt``: the job to
STARTING and the intent in the same transaction; and an attempt whose every node runs moves
with its job and its zone's history in one (``attempt_running``). Each transaction is a trip
to the daemon's one store thread, which a burst of launches keeps busy.

``create_job`` is the launch's insert: the project's limits are checked and the
job inserted in one transaction (see :mod:`spotd.store.projects`), so no number of listeners
or daemons can take a project over its quota between the check and the insert.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Insert, Select, bindparam, func, or_, select

from spotd.store.base import StoreBase
from spotd.store.cas import (
    Note,
    SetTo,
    checked_fields,
    compare_and_set,
    enum_value,
    fetch,
    find,
    set_fields,
)
from spotd.store.errors import StaleTransition
from spotd.store.job_inserts import ATTEMPTS, JOBS, AttemptIntent, insert_attempt, insert_job
from spotd.store.projects import Admit, admitted
from spotd.store.rows import AttemptRow, InstanceRow, JobRow, current_attempt_of
from spotd.store.tables import Instance, ZoneEvent, table_of
from spotd.types import (
    FINAL_PHASES,
    TERMINAL_JOB_STATUSES,
    AttemptStatus,
    EndReason,
    JobStatus,
    ZoneEventKind,
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


# a job's current attempt and its instance rows, as the job's worker reads them
Watched = tuple[AttemptRow, list[InstanceRow]]
_WATCHED = frozenset({JobStatus.STARTING, JobStatus.RUNNING})


@functools.cache
def _zone_event_insert() -> Insert:
    stmt: Insert = table_of(ZoneEvent).insert()
    return stmt


@functools.cache
def _attempt_nodes() -> Select[Any]:
    it = table_of(Instance)
    return select(it).where(it.c.attempt_id == bindparam("k_attempt")).order_by(it.c.node_rank)


@functools.cache
def _job_attempts() -> Select[Any]:
    at = ATTEMPTS.table
    return select(at).where(at.c.job_id == bindparam("k_job")).order_by(at.c.attempt)


@functools.cache
def _started_at_sql() -> ColumnElement[Any]:
    return func.coalesce(ATTEMPTS.table.c.started_at, bindparam("v_started_at"))


def _started_at(now: float) -> SetTo:
    """An attempt's ``started_at``: the first start stands."""
    return SetTo(_started_at_sql(), {"v_started_at": now})


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
            return insert_job(
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

    def job_state(self, job_id: int) -> tuple[JobRow | None, Watched | None]:
        """The job and, while it is STARTING or RUNNING, its current attempt with the attempt's
        instance rows (node order, replaced nodes' too): what the job's worker looks at, in
        one read."""
        with self._read() as conn:
            job = find(conn, JOBS, job_id)
            if job is None or job.status not in _WATCHED or not job.current_attempt:
                return job, None
            attempt = find(conn, ATTEMPTS, f"j{job_id}-a{job.current_attempt}")
            if attempt is None:
                return job, None
            nodes = conn.execute(_attempt_nodes(), {"k_attempt": attempt.id}).mappings()
            return job, (attempt, [InstanceRow.from_mapping(m) for m in nodes])

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

    def job_counts(self) -> dict[JobStatus, int]:
        """How many jobs are in each status (statuses without a job are absent): one
        ``GROUP BY``, not every job's row, so a metrics scrape costs the same at any count."""
        jt = JOBS.table
        with self._read() as conn:
            rows = conn.execute(select(jt.c.status, func.count()).group_by(jt.c.status))
            return {JobStatus(status): n for status, n in rows}

    def job_page(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        project: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        deadline_only: bool = False,
        nodes: bool = True,
    ) -> JobPage:
        """Jobs newest first (only ``statuses``, only ``project``'s, only ids below ``before``,
        at most ``limit``, only those with a deadline), their attempts and (unless not
        ``nodes``) their current attempts' instances: one query each, in one read, so a
        listing costs the same three statements at 10 or 10,000 jobs."""
        jt, at, it = JOBS.table, ATTEMPTS.table, table_of(Instance)
        q = select(jt).order_by(jt.c.id.desc())
        if statuses is not None:
            q = q.where(jt.c.status.in_([enum_value(s) for s in statuses]))
        if deadline_only:
            q = q.where(jt.c.deadline.is_not(None))
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
            if not nodes:
                return JobPage(jobs=jobs, attempts=attempts, more=more)
            current = {
                cur.id for j in jobs if (cur := current_attempt_of(j, attempts.get(j.id, [])))
            }
            instances: dict[str, list[InstanceRow]] = {}
            rows = conn.execute(
                select(it)
                .where(_of_jobs(it.c.job_id, jobs))
                .order_by(it.c.attempt_id, it.c.node_rank)
            )
            for m in rows.mappings():
                if m["attempt_id"] in current:
                    instances.setdefault(m["attempt_id"], []).append(InstanceRow.from_mapping(m))
        return JobPage(jobs=jobs, attempts=attempts, nodes=instances, more=more)

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

    def reapable_nodes(self, provider: str) -> list[tuple[AttemptRow, InstanceRow]]:
        """(attempt, node) for each node not yet marked terminated on ``provider`` that no
        attempt needs: the nodes of ended attempts, and of attempts not ended whose job is
        (a return to spot launched beside on-demand, left by a daemon stopped before the
        hand-over, in a job that then finished or was cancelled). What the reaper must still
        finish off, in one query (not one per live instance and tick)."""
        at, it, jt = ATTEMPTS.table, table_of(Instance), JOBS.table
        ended = [s.value for s in TERMINAL_JOB_STATUSES]
        q = (
            select(at, it)
            .join(it, it.c.attempt_id == at.c.id)
            .join(jt, jt.c.id == at.c.job_id)
            .where(
                at.c.provider == provider,
                it.c.terminated.is_(False),
                or_(at.c.status == AttemptStatus.ENDED.value, jt.c.status.in_(ended)),
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

    def active_jobs(self, *, owner: str | None = None) -> list[JobRow]:
        """Jobs not in a terminal status, oldest first (the order workers are started in);
        ``owner``: only those that daemon runs (several daemons on one database)."""
        jt = JOBS.table
        q = (
            select(jt)
            .where(jt.c.status.not_in([s.value for s in TERMINAL_JOB_STATUSES]))
            .order_by(jt.c.id)
        )
        if owner is not None:
            q = q.where(jt.c.owner == owner)
        with self._read() as conn:
            return [JobRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def active_job_ids(self, *, owner: str | None = None) -> list[int]:
        """The ids of ``active_jobs`` (the workers' sweep reads them every few seconds)."""
        jt = JOBS.table
        q = select(jt.c.id).where(jt.c.status.not_in([s.value for s in TERMINAL_JOB_STATUSES]))
        if owner is not None:
            q = q.where(jt.c.owner == owner)
        with self._read() as conn:
            return [int(i) for i in conn.execute(q.order_by(jt.c.id)).scalars()]

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

    def create_attempt(self, intent: AttemptIntent) -> AttemptRow:
        """Write the intent: the attempt (PROVISIONING) and its instance rows, atomically.
        Called before any provider call."""
        with self._write() as conn:
            return insert_attempt(conn, intent)

    def start_attempt(
        self, intent: AttemptIntent, *, from_: Collection[JobStatus], reason: str
    ) -> tuple[JobRow, AttemptRow, list[InstanceRow]]:
        """A placement, in one transaction: the job moves from one of ``from_`` to STARTING
        (``current_attempt``: the intent's ``attempt``) and the attempt's intent is written as by
        :meth:`create_attempt`. Returns the job, the attempt and its instance rows (node
        order). :class:`StaleTransition` (a cancel came first): nothing is written."""
        placed = {"message": reason, "current_attempt": intent.attempt, "next_try_at": None}
        with self._write() as conn:
            job = compare_and_set(
                conn,
                JOBS,
                intent.job_id,
                from_=from_,
                to=JobStatus.STARTING,
                reason=reason,
                now=intent.now,
                values=placed,
                data={"fields": placed},
            )
            row = insert_attempt(conn, intent)
            nodes = conn.execute(_attempt_nodes(), {"k_attempt": row.id}).mappings()
            return job, row, [InstanceRow.from_mapping(m) for m in nodes]

    def hand_over(
        self,
        job_id: int,
        *,
        old_attempt_id: str,
        new_attempt: int,
        reason: str,
        now: float,
        recoveries: int,
    ) -> JobRow:
        """Make before break, in one transaction: a RUNNING job moves to STARTING on
        ``new_attempt`` (launched beside it), and the attempt it ran on ENDs (MIGRATED). A
        daemon killed right after finds the old attempt ended and the reaper stops its
        instances. :class:`StaleTransition` (a cancel or a loss came first, or the old
        attempt's run already exited: its result decides the job, not a move): nothing is
        written."""
        placed = {"message": reason, "current_attempt": new_attempt, "recoveries": recoveries}
        ended = {"ended_at": now, "end_reason": EndReason.MIGRATED.value, "end_detail": reason}
        it = table_of(Instance)
        with self._write() as conn:
            done = conn.execute(
                select(it.c.phase)
                .where(it.c.attempt_id == old_attempt_id, it.c.phase.in_(sorted(FINAL_PHASES)))
                .limit(1)
            ).first()
            if done is not None:
                raise StaleTransition(
                    what="attempt",
                    row_id=old_attempt_id,
                    current=f"RUNNING, its agent {done[0]}",
                    expected=[AttemptStatus.RUNNING.value],
                    to=AttemptStatus.ENDED.value,
                )
            job = compare_and_set(
                conn,
                JOBS,
                job_id,
                from_=[JobStatus.RUNNING],
                to=JobStatus.STARTING,
                reason=reason,
                now=now,
                values=placed,
                data={"fields": placed},
            )
            compare_and_set(
                conn,
                ATTEMPTS,
                old_attempt_id,
                from_=[AttemptStatus.RUNNING],
                to=AttemptStatus.ENDED,
                reason=f"{EndReason.MIGRATED}: {reason}",
                now=now,
                values=ended,
                data={"end_reason": ended["end_reason"]},
            )
            return job

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
            values["started_at"] = _started_at(now)
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

    def attempt_running(
        self, /, job_id: int, attempt_id: str, *, now: float, reason: str, **fields: Any
    ) -> JobRow:
        """Every node of the attempt runs its task, in one transaction: the attempt moves to
        RUNNING (through SETTING_UP, with both events, if it was still PROVISIONING), the job
        STARTING → RUNNING (``reason``, ``fields``), and its zone gets a LAUNCHED event (the
        market as detail) for the risk model. :class:`StaleTransition`: nothing is written."""
        values = checked_fields(JOBS, fields)
        values.setdefault("message", reason)
        with self._write() as conn:
            attempt = fetch(conn, ATTEMPTS, attempt_id, for_update=True)
            if attempt.status == AttemptStatus.PROVISIONING:
                compare_and_set(
                    conn,
                    ATTEMPTS,
                    attempt_id,
                    from_=[AttemptStatus.PROVISIONING],
                    to=AttemptStatus.SETTING_UP,
                    reason="every agent reported",
                    now=now,
                    values={},
                    data={"end_reason": None},
                )
            compare_and_set(
                conn,
                ATTEMPTS,
                attempt_id,
                from_=[AttemptStatus.SETTING_UP],
                to=AttemptStatus.RUNNING,
                reason="run started on every node",
                now=now,
                values={"started_at": _started_at(now)},
                data={"end_reason": None},
            )
            job = compare_and_set(
                conn,
                JOBS,
                job_id,
                from_=[JobStatus.STARTING],
                to=JobStatus.RUNNING,
                reason=reason,
                now=now,
                values=values,
                data={"fields": values},
            )
            conn.execute(
                _zone_event_insert(),
                {
                    "provider": attempt.provider,
                    "region": attempt.region,
                    "zone": attempt.zone,
                    "kind": ZoneEventKind.LAUNCHED.value,
                    "at": now,
                    "detail": attempt.market,
                },
            )
            return job

    def every_attempt(self, *, project: str | None = None) -> list[AttemptRow]:
        """Every attempt (of ``project``'s jobs only, if given), by job and attempt, in one
        query: what a cost report reads (not one query per job)."""
        at, jt = ATTEMPTS.table, JOBS.table
        q = select(at).order_by(at.c.job_id, at.c.attempt)
        if project is not None:
            q = q.where(at.c.job_id.in_(select(jt.c.id).where(jt.c.project == project)))
        with self._read() as conn:
            return [AttemptRow.from_mapping(m) for m in conn.execute(q).mappings()]

    def attempts(self, job_id: int) -> list[AttemptRow]:
        """The job's attempts, first to last."""
        with self._read() as conn:
            rows = conn.execute(_job_attempts(), {"k_job": job_id}).mappings()
            return [AttemptRow.from_mapping(m) for m in rows]

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
