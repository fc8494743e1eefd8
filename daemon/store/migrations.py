"""Schema versions: the ordered migrations and the runner that applies them at open.

``MIGRATIONS`` is ``(version, migrate(connection))`` in order, applied inside the one
transaction that opens the store. A fresh database runs version 1 only, which creates the
tables as :mod:`spotd.store.tables` describes them today, and is stamped ``LATEST_VERSION``;
the later entries (``ALTER TABLE …``) run only for databases stamped with an older version.
So: when a model changes, append a migration here too.

:func:`migrate` reads ``MIGRATIONS`` and ``LATEST_VERSION`` from this module when it runs, so
a test that patches them here sees the runner use its list.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy import Connection, inspect, select, update

from spotd.spec import Task
from spotd.store.errors import SchemaTooNew
from spotd.store.tables import (
    METADATA,
    Daemon,
    DashboardSession,
    Job,
    LoginLink,
    Pool,
    PoolAttempt,
    PoolJob,
    PoolWorker,
    Project,
    Replica,
    SchemaVersion,
    Service,
    ServiceVersion,
    table_of,
)
from spotd.types import TERMINAL_JOB_STATUSES

__all__ = ["LATEST_VERSION", "MIGRATIONS", "current_version", "migrate"]


def _create_all(conn: Connection) -> None:
    METADATA.create_all(conn)


def _v2_services(conn: Connection) -> None:
    """Services: the service, service_version and replica tables, and event.service_id."""
    conn.exec_driver_sql("ALTER TABLE event ADD COLUMN service_id INTEGER")
    conn.exec_driver_sql("CREATE INDEX ix_event_service_id ON event (service_id)")
    METADATA.create_all(
        conn, tables=[table_of(Service), table_of(ServiceVersion), table_of(Replica)]
    )


def _v3_gpus_and_projects(conn: Connection) -> None:
    """GPU telemetry on instances (instance.gpus_json, gpus_at) and the project table."""
    conn.exec_driver_sql("ALTER TABLE instance ADD COLUMN gpus_json TEXT")
    conn.exec_driver_sql("ALTER TABLE instance ADD COLUMN gpus_at FLOAT")
    METADATA.create_all(conn, tables=[table_of(Project)])


def _v4_project_limits(conn: Connection) -> None:
    """Quotas that hold: the GPUs each job and service reserves (job.gpus, service.gpus),
    services in a project (service.project), and the project's other limits.

    Jobs active across the upgrade get the reservation the old rule gave them, read from
    their stored task: the largest accelerator count it names × num_nodes. (The new rule needs
    the catalog, which a migration does not have, so a job that named only ``instance_type:``
    reserves nothing until it ends; every job launched after the upgrade is counted from its
    placements.) Existing services belong to ``default`` and reserve nothing.
    """
    for ddl in (
        "ALTER TABLE job ADD COLUMN gpus FLOAT NOT NULL DEFAULT 0",
        "CREATE INDEX ix_job_project ON job (project)",
        "ALTER TABLE service ADD COLUMN project VARCHAR NOT NULL DEFAULT 'default'",
        "ALTER TABLE service ADD COLUMN gpus FLOAT NOT NULL DEFAULT 0",
        "CREATE INDEX ix_service_project ON service (project)",
        "ALTER TABLE project ADD COLUMN max_jobs INTEGER",
        "ALTER TABLE project ADD COLUMN max_nodes_per_job INTEGER",
        "ALTER TABLE project ADD COLUMN max_services INTEGER",
    ):
        conn.exec_driver_sql(ddl)
    jt = table_of(Job)
    active = conn.execute(
        select(jt.c.id, jt.c.spec_json).where(
            jt.c.status.not_in([s.value for s in TERMINAL_JOB_STATUSES])
        )
    ).all()
    for job_id, spec_json in active:
        gpus = _old_rule_gpus(spec_json)
        if gpus:
            conn.execute(update(jt).where(jt.c.id == job_id).values(gpus=gpus))


def _v5_event_age_index(conn: Connection) -> None:
    """Retention deletes events by age (``spotd.control.retention``): index event.at, so each
    bounded batch finds its rows without scanning the table."""
    conn.exec_driver_sql("CREATE INDEX ix_event_at ON event (at)")


def _old_rule_gpus(spec_json: str) -> float:
    """What the quota counted before version 4: accelerators named × nodes (0 if unreadable)."""
    try:
        task = Task.model_validate(json.loads(spec_json))
    except (ValueError, ValidationError):
        return 0.0
    per_node = max((o.accelerator_count for o in task.resource_request().options), default=0.0)
    return float(per_node * task.num_nodes)


def _v6_agent_bootstrap(conn: Connection) -> None:
    """The agent config held for an instance's one bootstrap, and when it was used
    (instance.agent_json, instance.bootstrapped_at)."""
    conn.exec_driver_sql("ALTER TABLE instance ADD COLUMN agent_json TEXT")
    conn.exec_driver_sql("ALTER TABLE instance ADD COLUMN bootstrapped_at FLOAT")


def _v7_pools(conn: Connection) -> None:
    """Pools (``spotd.control.pools``): the pool, pool_worker, pool_job and pool_attempt
    tables."""
    tables = [table_of(t) for t in (Pool, PoolWorker, PoolJob, PoolAttempt)]
    METADATA.create_all(conn, tables=tables)


def _v8_job_project_status_index(conn: Connection) -> None:
    """A project's quota counts its active jobs at every launch: index (project, status), so
    the count seeks them instead of reading every job the project ever ran."""
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_job_project_status ON job (project, status)"
    )


def _v9_pool_job_restarts(conn: Connection) -> None:
    """A pool job's ``max_restarts_on_errors`` (its ``job_recovery``): how many failed runs
    are queued again before it is FAILED (pool_job.max_restarts_on_errors). Version 7 creates
    the pool tables from the current model, so an upgrade from before 7 has the column already.
    """
    columns = {c["name"] for c in inspect(conn).get_columns("pool_job")}
    if "max_restarts_on_errors" not in columns:
        conn.exec_driver_sql(
            "ALTER TABLE pool_job ADD COLUMN max_restarts_on_errors INTEGER NOT NULL DEFAULT 0"
        )


def _v10_instance_launched_at(conn: Connection) -> None:
    """When the provider's answer to an instance's launch was recorded (instance.launched_at):
    a listing counts as covering the instance only if it began after that, not after the
    intent was written (a long store queue between the two made starting instances look
    gone). Rows from before stay NULL and are judged from ``created_at``, as they were."""
    conn.exec_driver_sql("ALTER TABLE instance ADD COLUMN launched_at FLOAT")


def _v11_daemons(conn: Connection) -> None:
    """Several daemons on one database (``spotd.store.leases``): the daemon table and its
    leases, who runs each job and service (job.owner, service.owner) and who wrote each event
    (event.daemon)."""
    METADATA.create_all(conn, tables=[table_of(Daemon)])
    for table, column in (("job", "owner"), ("service", "owner"), ("event", "daemon")):
        columns = {c["name"] for c in inspect(conn).get_columns(table)}
        if column not in columns:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} VARCHAR")
    for table in ("job", "service"):
        conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS ix_{table}_owner ON {table} (owner)")


def _v12_dashboard_sign_ins(conn: Connection) -> None:
    """Dashboard sessions and login links in the database (they were in one daemon's memory)."""
    METADATA.create_all(conn, tables=[table_of(DashboardSession), table_of(LoginLink)])


def _v13_job_checkpoint(conn: Connection) -> None:
    """The newest checkpoint an agent reported, on the job (job.checkpoint_attempt,
    checkpoint_synced_at, checkpoint_received_at): it was in the memory of the daemon the agent
    reported to, which a restart loses and another daemon running the job never had."""
    columns = {c["name"] for c in inspect(conn).get_columns("job")}
    for column, kind in (
        ("checkpoint_attempt", "INTEGER"),
        ("checkpoint_synced_at", "FLOAT"),
        ("checkpoint_received_at", "FLOAT"),
    ):
        if column not in columns:
            conn.exec_driver_sql(f"ALTER TABLE job ADD COLUMN {column} {kind}")


def _v14_daemon_ready(conn: Connection) -> None:
    """When a daemon became ready (daemon.ready_at): one still starting is not counted in the
    shares, so no job is handed to it before it watches anything (``spotd.store.leases``).
    Daemons of the older version count as ready (they are running)."""
    columns = {c["name"] for c in inspect(conn).get_columns("daemon")}
    if "ready_at" not in columns:
        conn.exec_driver_sql("ALTER TABLE daemon ADD COLUMN ready_at FLOAT")
        conn.exec_driver_sql("UPDATE daemon SET ready_at = started_at")


MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (1, _create_all),
    (2, _v2_services),
    (3, _v3_gpus_and_projects),
    (4, _v4_project_limits),
    (5, _v5_event_age_index),
    (6, _v6_agent_bootstrap),
    (7, _v7_pools),
    (8, _v8_job_project_status_index),
    (9, _v9_pool_job_restarts),
    (10, _v10_instance_launched_at),
    (11, _v11_daemons),
    (12, _v12_dashboard_sign_ins),
    (13, _v13_job_checkpoint),
    (14, _v14_daemon_ready),
)
LATEST_VERSION = MIGRATIONS[-1][0]

_PG_MIGRATION_LOCK = 0x5B07D  # pg_advisory_xact_lock key: one migrator at a time


def current_version(conn: Connection) -> int:
    """The version the database is stamped with; 0 for a database spotd never opened."""
    if not inspect(conn).has_table(SchemaVersion.__tablename__):
        return 0
    v = conn.execute(select(table_of(SchemaVersion).c.version)).scalars().all()
    return max(v, default=0)


def migrate(conn: Connection, *, where: str) -> None:
    """Bring the database on ``conn`` (inside a write transaction) to ``LATEST_VERSION``.

    Raises :class:`SchemaTooNew` if a newer spotd wrote it; ``where`` names the database in
    that message (password hidden). On PostgreSQL an advisory lock makes concurrent openers
    migrate one after the other; the second then finds the work done.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    current = current_version(conn)
    if current > LATEST_VERSION:
        raise SchemaTooNew(
            f"the database {where} has schema version {current}, newer than this spotd knows "
            f"({LATEST_VERSION}): upgrade spotd, or point it at another database"
        )
    if current == LATEST_VERSION:
        return
    if current == 0:
        MIGRATIONS[0][1](conn)  # a fresh database: the current shape at once
    else:
        for version, step in MIGRATIONS:
            if version > current:
                step(conn)
    stamp = table_of(SchemaVersion)
    conn.execute(stamp.delete())
    conn.execute(stamp.insert().values(version=LATEST_VERSION))
