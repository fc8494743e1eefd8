"""Projects (tenants): a name, a GPU quota and the hash of the project's API token.

Quota decisions live in ``spotd.control.quota``; the store only keeps the rows.
"""

from __future__ import annotations

from sqlalchemy import select

from spotd.store.base import StoreBase
from spotd.store.cas import Subject, fetch, write_event
from spotd.store.errors import ProjectExists
from spotd.store.rows import ProjectRow
from spotd.store.tables import Project, table_of

__all__ = ["PROJECTS", "ProjectStore"]

PROJECTS = Subject(what="project", table=table_of(Project), key="name", row=ProjectRow.from_mapping)


class ProjectStore(StoreBase):
    """The projects part of :class:`~spotd.store.Store`."""

    def create_project(
        self, *, name: str, gpu_quota: float | None, token_hash: str, now: float
    ) -> ProjectRow:
        """Raises :class:`ProjectExists` if the name is taken."""
        pt = PROJECTS.table
        with self._write() as conn:
            if conn.execute(select(pt.c.name).where(pt.c.name == name)).first() is not None:
                raise ProjectExists(f"project {name!r} exists")
            conn.execute(
                pt.insert().values(
                    name=name, gpu_quota=gpu_quota, token_hash=token_hash, created_at=now
                )
            )
            write_event(
                conn,
                kind="project.create",
                message=f"project {name!r} created, GPU quota "
                + ("unlimited" if gpu_quota is None else f"{gpu_quota:g}"),
                now=now,
                data={"project": name, "gpu_quota": gpu_quota},
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
