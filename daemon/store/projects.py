"""Projects (tenants): a name, the hash of the project's API token, and its limits.

Quota decisions live in ``spotd.control.quota``; the store keeps the rows and makes the check
and the insert one transaction. :func:`admitted` is that transaction's first half, shared by
``create_job`` (given ``admit``) and ``create_service``: it locks the project's row, reads what the
project holds, and asks the caller's ``admit``, so two launches of one project — through two
listeners, two daemons on one PostgreSQL, or two stores on one SQLite file — are decided one
after the other, each seeing the other's row:

- PostgreSQL: ``SELECT … FROM project WHERE name=? FOR UPDATE`` holds the second launch until
  the first commits; its counts, read after (READ COMMITTED reads anew per statement), include
  the first launch's row.
- SQLite: the write transaction is ``BEGIN IMMEDIATE``, so the whole database is the lock.

A project without a row (``default``, unless the admin created it) has no limits and nothing
to lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, case, func, select

from spotd.store.base import StoreBase
from spotd.store.cas import Subject, fetch, find, write_event
from spotd.store.errors import OverQuota, ProjectExists
from spotd.store.rows import ProjectRow, ProjectUsage, ServiceStatus
from spotd.store.tables import Job, Project, Service, table_of
from spotd.types import TERMINAL_JOB_STATUSES, JobStatus

__all__ = ["LIMITS", "PROJECTS", "Admit", "ProjectStore", "admitted", "usage"]

PROJECTS = Subject(what="project", table=table_of(Project), key="name", row=ProjectRow.from_mapping)

# The limits of a project row; None: unlimited.
LIMITS = frozenset({"gpu_quota", "max_jobs", "max_nodes_per_job", "max_services"})

# Decides, inside the inserting transaction, whether a project (None: it has no row) that holds
# ``ProjectUsage`` may take one more job or service: None admits it, an OverQuota is raised
# instead of the insert.
Admit = Callable[[ProjectRow | None, ProjectUsage], OverQuota | None]

_HOLDING_SERVICE = (ServiceStatus.DOWN.value, ServiceStatus.FAILED.value)  # these hold nothing
_ACTIVE_JOB = tuple(sorted(s.value for s in JobStatus if s not in TERMINAL_JOB_STATUSES))


def usage(conn: Connection, project: str) -> ProjectUsage:
    """What ``project`` holds now: active jobs, live services, and the GPUs they reserve."""
    jt, st = table_of(Job), table_of(Service)
    jobs = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(jt.c.gpus), 0.0),
            func.coalesce(func.sum(case((jt.c.gpus > 0, 1), else_=0)), 0),
        ).where(
            jt.c.project == project,
            jt.c.status.in_(_ACTIVE_JOB),  # IN, not NOT IN: index seeks (ix_job_project_status)
        )
    ).one()
    services = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(st.c.gpus), 0.0),
            func.coalesce(func.sum(case((st.c.gpus > 0, 1), else_=0)), 0),
        ).where(st.c.project == project, st.c.status.not_in(_HOLDING_SERVICE))
    ).one()
    return ProjectUsage(
        gpus=float(jobs[1]) + float(services[1]),
        jobs=int(jobs[0]),
        gpu_jobs=int(jobs[2]),
        services=int(services[0]),
        gpu_services=int(services[2]),
    )


def admitted(conn: Connection, project: str, admit: Admit) -> None:
    """Lock ``project``'s row, read its usage, and raise what ``admit`` refuses with.

    Call first in the write transaction that then inserts the job or service. A project
    without a row has no limits, so what it holds is not counted (``ProjectUsage()``): with
    ten thousand active jobs in ``default`` that count was the most of every launch's insert.
    """
    row = find(conn, PROJECTS, project, for_update=True)
    refusal = admit(row, ProjectUsage() if row is None else usage(conn, project))
    if refusal is not None:
        raise refusal


class ProjectStore(StoreBase):
    """The projects part of :class:`~spotd.store.Store`."""

    def create_project(
        self,
        *,
        name: str,
        gpu_quota: float | None,
        token_hash: str,
        now: float,
        max_jobs: int | None = None,
        max_nodes_per_job: int | None = None,
        max_services: int | None = None,
    ) -> ProjectRow:
        """Raises :class:`ProjectExists` if the name is taken."""
        pt = PROJECTS.table
        limits = {
            "gpu_quota": gpu_quota,
            "max_jobs": max_jobs,
            "max_nodes_per_job": max_nodes_per_job,
            "max_services": max_services,
        }
        with self._write() as conn:
            if conn.execute(select(pt.c.name).where(pt.c.name == name)).first() is not None:
                raise ProjectExists(f"project {name!r} exists")
            conn.execute(
                pt.insert().values(name=name, token_hash=token_hash, created_at=now, **limits)
            )
            write_event(
                conn,
                kind="project.create",
                message=f"project {name!r} created, {_limits_text(limits)}",
                now=now,
                data={"project": name, **limits},
            )
            return fetch(conn, PROJECTS, name)

    def update_project(self, /, name: str, *, now: float, **limits: float | None) -> ProjectRow:
        """Set some of the project's limits (None: unlimited); the others stay.

        A lower limit never stops what runs: it refuses the next launch. Raises
        :class:`NotFound` if there is no such project, TypeError for an unknown limit.
        """
        bad = set(limits) - LIMITS
        if bad:
            raise TypeError(f"not project limits: {sorted(bad)} (limits: {sorted(LIMITS)})")
        pt = PROJECTS.table
        with self._write() as conn:
            fetch(conn, PROJECTS, name, for_update=True)
            if limits:
                conn.execute(pt.update().where(pt.c.name == name).values(**limits))
            write_event(
                conn,
                kind="project.update",
                message=f"project {name!r}: {_limits_text(limits) or 'nothing changed'}",
                now=now,
                data={"project": name, **limits},
            )
            return fetch(conn, PROJECTS, name)

    def get_project(self, name: str) -> ProjectRow | None:
        return self._get(PROJECTS, name)

    def project_by_token_hash(self, token_hash: str) -> ProjectRow | None:
        pt = PROJECTS.table
        with self._read() as conn:
            m = conn.execute(select(pt).where(pt.c.token_hash == token_hash)).mappings().first()
            return None if m is None else ProjectRow.from_mapping(m)

    def list_projects(self) -> list[ProjectRow]:
        pt = PROJECTS.table
        with self._read() as conn:
            rows = conn.execute(select(pt).order_by(pt.c.name)).mappings()
            return [ProjectRow.from_mapping(m) for m in rows]

    def project_usage(self, name: str) -> ProjectUsage:
        """What the project holds now (all zeros for a project with nothing active)."""
        with self._read() as conn:
            return usage(conn, name)


def _limits_text(limits: dict[str, Any]) -> str:
    names = {
        "gpu_quota": "GPU quota",
        "max_jobs": "active jobs",
        "max_nodes_per_job": "nodes per job",
        "max_services": "live services",
    }
    return ", ".join(
        f"{names[k]} {'unlimited' if v is None else f'{v:g}'}"
        for k, v in limits.items()
        if k in names
    )
