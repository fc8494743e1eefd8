"""The state store: jobs, attempts, instances, events and zone history, in SQLite or PostgreSQL.

Everything the daemon must not forget lives here, so a daemon killed at any point restarts into
the same picture. Three habits keep that picture trustworthy:

- **compare-and-set transitions.** A status changes only through ``transition_job`` /
  ``transition_attempt``, which run ``UPDATE … WHERE id=? AND status IN (…)`` and raise
  :class:`StaleTransition` (naming the status actually found) when no row matched. A cancel
  from the API racing a preemption seen by the controller therefore fails loudly in one of the
  two instead of one silently overwriting the other.
- **the event goes with the change.** The Event row describing a transition is inserted in the
  same transaction as the UPDATE: there is no transition without its event and no event for a
  transition that did not happen.
- **intent before action.** ``create_attempt`` writes the attempt and one Instance row per node
  (``instance_id`` still None) in one transaction *before* any provider call; a daemon killed
  mid-launch finds rows without an instance id and finishes the launch, idempotent by key.

The store never reads the clock: every timestamp (float epoch seconds) is passed in as
``now``/``at``, so tests run on a fake clock. Rows come back as frozen dataclasses detached from
any session, with enum columns converted back to their enums (the database holds the enum's
string value, so a renamed Python member never rewrites history).

``Store`` is synchronous (SQLAlchemy Core over the SQLModel tables). ``AsyncStore`` mirrors it
for the event loop by running every call on one dedicated single-thread executor: it is the one
adapter in the daemon allowed a thread, and the single thread serialises SQLite writers.

SQLite specifics: WAL journal (readers never block the writer), foreign keys on, a busy
timeout, and write transactions opened with ``BEGIN IMMEDIATE`` so a read-then-write cannot be
overtaken by another connection (a second ``Store`` on the same file, e.g. a restarted daemon
or a CLI reading the file). PostgreSQL: the row is read ``FOR UPDATE`` before the CAS update,
and migrations hold an advisory lock.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import json
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, ParamSpec, TypeVar

from spotd.serve.replica_state import ReplicaStatus
from spotd.types import (
    TERMINAL_JOB_STATUSES,
    AttemptStatus,
    EndReason,
    InstanceState,
    JobStatus,
    Market,
)
from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import registry as sa_registry
from sqlmodel import Field, SQLModel

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "AsyncStore",
    "AttemptRow",
    "EventRow",
    "InstanceRow",
    "JobRow",
    "NotFound",
    "ProjectExists",
    "ProjectRow",
    "ReplicaRow",
    "SchemaTooNew",
    "ServiceExists",
    "ServiceRow",
    "ServiceStatus",
    "StaleTransition",
    "Store",
    "StoreError",
    "ZoneEventRow",
]


# -- errors ------------------------------------------------------------------------------


class StoreError(Exception):
    """Base class of the store's own errors."""


class StaleTransition(StoreError):
    """A compare-and-set transition found the row in a state it did not expect.

    Raised instead of overwriting: whoever gets it re-reads the row and decides again.
    """

    def __init__(
        self, *, what: str, row_id: object, current: str, expected: Collection[str], to: str
    ) -> None:
        self.what = what
        self.row_id = row_id
        self.current = current
        self.expected = tuple(expected)
        self.to = to
        super().__init__(
            f"{what} {row_id}: cannot move to {to}: it is {current}, "
            f"expected one of {', '.join(sorted(self.expected)) or '(none)'}"
        )


class NotFound(StoreError, LookupError):
    """The job, attempt or instance named does not exist."""


class SchemaTooNew(StoreError):
    """The database was written by a newer spotd than this one."""


class ServiceExists(StoreError):
    """A live service already has that name."""


class ProjectExists(StoreError):
    """A project of that name exists already."""


# -- tables ------------------------------------------------------------------------------
# A private registry, so these tables never mix with other SQLModel metadata in the process.


class _Table(SQLModel, registry=sa_registry()):
    pass


METADATA = _Table.metadata


class Job(_Table, table=True):
    __tablename__ = "job"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    task_id: str = Field(unique=True)  # stable across recoveries (SKYPILOT_TASK_ID)
    status: str = Field(index=True)  # JobStatus value
    spec_json: str  # the full task, secrets included: what the agents get
    spec_redacted_json: str  # the task with secret values masked: what users see
    resources: str = ""
    project: str = "default"
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    recoveries: int = 0
    preemptions: int = 0
    user_restarts: int = 0
    infra_failures: int = 0
    current_attempt: int = 0  # 0 = no attempt yet
    message: str = ""  # the reason of the last status change (or the last wait)
    failed_launches: int = 0  # consecutive, reset when an attempt starts running
    first_failure_at: float | None = None
    next_try_at: float | None = None
    work_done_seconds: float = 0.0
    deadline: float | None = None


class Attempt(_Table, table=True):
    __tablename__ = "attempt"

    id: str = Field(primary_key=True)  # "j<job>-a<n>"
    job_id: int = Field(foreign_key="job.id", index=True)
    attempt: int  # n, 1-based
    status: str  # AttemptStatus value
    provider: str
    region: str
    zone: str
    instance_type: str
    market: str  # Market value
    price_per_hour: float
    num_nodes: int
    created_at: float
    started_at: float | None = None  # set when it reaches RUNNING
    ended_at: float | None = None  # set when it reaches ENDED
    end_reason: str | None = None  # EndReason value
    end_detail: str = ""


class Instance(_Table, table=True):
    __tablename__ = "instance"

    key: str = Field(primary_key=True)  # "j<job>-a<n>-n<rank>": our idempotency key
    attempt_id: str = Field(foreign_key="attempt.id", index=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    node_rank: int
    provider: str
    instance_id: str | None = None  # None until the provider answered the launch
    region: str
    zone: str
    state: str = InstanceState.PENDING.value
    token: str = Field(unique=True)  # the agent's bearer token
    created_at: float
    last_heartbeat_at: float | None = None
    phase: str | None = None  # as reported by the agent: setup, run, exited, ...
    exit_code: int | None = None
    notice_deadline: float | None = None
    log_offset: int = 0  # bytes of the node's log received
    terminated: bool = Field(default=False, index=True)
    terminated_at: float | None = None
    gpus_json: str | None = None  # the agent's latest GPU samples (version 3); "[]": no GPU
    gpus_at: float | None = None  # when they were reported


class Event(_Table, table=True):
    __tablename__ = "event"

    id: int | None = Field(default=None, primary_key=True)
    at: float
    job_id: int | None = Field(default=None, index=True)  # no FK: the log outlives anything
    attempt_id: str | None = None
    kind: str  # "job.status", "attempt.status", "job.update", "preemption", ...
    message: str
    data_json: str = "{}"
    service_id: int | None = Field(default=None, index=True)  # service events (version 2)


class ZoneEvent(_Table, table=True):
    __tablename__ = "zone_event"

    id: int | None = Field(default=None, primary_key=True)
    provider: str
    region: str
    zone: str
    kind: str  # recovery.history.ZoneEventKind value
    at: float = Field(index=True)
    detail: str = ""


class ServiceStatus(enum.StrEnum):
    STARTING = "STARTING"  # accepted; no replica has been READY yet
    READY = "READY"  # at least one replica is READY behind the load balancer
    NO_REPLICA = "NO_REPLICA"  # none READY now (lost, or scaled to zero): the LB queues
    SHUTTING_DOWN = "SHUTTING_DOWN"  # `serve down`: replicas and the LB are being stopped
    DOWN = "DOWN"  # every replica and the LB are gone (terminal)
    FAILED = "FAILED"  # the service cannot run (its LB could not start); replicas stopped

    @property
    def is_terminal(self) -> bool:
        return self in (ServiceStatus.DOWN,)


class Service(_Table, table=True):
    __tablename__ = "service"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)  # unique among services that are not DOWN
    status: str = Field(index=True)  # ServiceStatus value
    version: int = 1  # the newest version: every new replica runs it
    update_mode: str = "rolling"  # how the newest version replaces older ones
    spec_json: str  # the newest version's task, secrets included
    spec_redacted_json: str
    created_at: float
    ended_at: float | None = None
    message: str = ""
    lb_port: int  # the endpoint users call
    lb_control_port: int  # the LB's control API (127.0.0.1)
    lb_token: str  # bearer token of the LB's control API
    lb_pid: int | None = None  # the LB process (its own session: it outlives the daemon)
    lb_start_ticks: int | None = None  # so a recycled pid is never taken for the LB
    target: int = 0  # the autoscaler's target replica count
    upscale_since: float | None = None
    downscale_since: float | None = None


class ServiceVersion(_Table, table=True):
    __tablename__ = "service_version"

    service_id: int = Field(foreign_key="service.id", primary_key=True)
    version: int = Field(primary_key=True)
    spec_json: str
    mode: str = "rolling"
    created_at: float


class Replica(_Table, table=True):
    __tablename__ = "replica"

    key: str = Field(primary_key=True)  # "s<service>-r<replica>": the instance key too
    service_id: int = Field(foreign_key="service.id", index=True)
    replica_id: int  # per service, increasing; never reused
    version: int
    status: str = Field(index=True)  # serve.replica_state.ReplicaStatus value
    provider: str
    region: str
    zone: str
    instance_type: str
    market: str  # Market value
    price_per_hour: float
    port: int  # where the replica's server listens ($SPOTD_REPLICA_PORT)
    instance_id: str | None = None  # None until the provider answered the launch
    url: str = ""  # http://address:port once the instance runs
    token: str = Field(unique=True)  # the agent's bearer token
    created_at: float
    started_at: float | None = None  # instance running (STARTING)
    ready_at: float | None = None  # first READY
    ended_at: float | None = None  # reached a terminal status
    message: str = ""
    last_heartbeat_at: float | None = None
    phase: str | None = None  # as reported by the agent
    exit_code: int | None = None
    notice_deadline: float | None = None
    log_offset: int = 0


class Project(_Table, table=True):
    """A tenant (version 3): see spotd.control.quota."""

    __tablename__ = "project"

    name: str = Field(primary_key=True)
    gpu_quota: float | None = None  # None: unlimited
    token_hash: str = Field(unique=True)  # sha256 of the project's API token
    created_at: float


class SchemaVersion(_Table, table=True):
    __tablename__ = "schema_version"

    version: int = Field(primary_key=True)


# -- rows: detached, frozen snapshots ----------------------------------------------------


def _opt(kind: type[enum.StrEnum], value: str | None) -> Any:
    return None if value is None else kind(value)


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    name: str
    task_id: str
    status: JobStatus
    spec_json: str
    spec_redacted_json: str
    resources: str
    project: str
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    recoveries: int
    preemptions: int
    user_restarts: int
    infra_failures: int
    current_attempt: int
    message: str
    failed_launches: int
    first_failure_at: float | None
    next_try_at: float | None
    work_done_seconds: float
    deadline: float | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @classmethod
    def _from(cls, m: Mapping[Any, Any]) -> JobRow:
        return cls(**{**_pick(cls, m), "status": JobStatus(m["status"])})


@dataclass(frozen=True, slots=True)
class AttemptRow:
    id: str
    job_id: int
    attempt: int
    status: AttemptStatus
    provider: str
    region: str
    zone: str
    instance_type: str
    market: Market
    price_per_hour: float
    num_nodes: int
    created_at: float
    started_at: float | None
    ended_at: float | None
    end_reason: EndReason | None
    end_detail: str

    @classmethod
    def _from(cls, m: Mapping[Any, Any]) -> AttemptRow:
        return cls(
            **{
                **_pick(cls, m),
                "status": AttemptStatus(m["status"]),
                "market": Market(m["market"]),
                "end_reason": _opt(EndReason, m["end_reason"]),
            }
        )


@dataclass(frozen=True, slots=True)
class InstanceRow:
    key: str
    attempt_id: str
    job_id: int
    node_rank: int
    provider: str
    instance_id: str | None
    region: str
    zone: str
    state: str
    token: str
    created_at: float
    last_heartbeat_at: float | None
    phase: str | None
    exit_code: int | None
    notice_deadline: float | None
    log_offset: int
    terminated: bool
    terminated_at: float | None
    gpus_json: str | None = None
    gpus_at: float | None = None

    @classmethod
    def _from(cls, m: Mapping[Any, Any]) -> InstanceRow:
        return cls(**{**_pick(cls, m), "terminated": bool(m["terminated"])})


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: float
    job_id: int | None
    attempt_id: str | None
    kind: str
    message: str
    data_json: str
    service_id: int | None

    @property
    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.data_json or "{}")
        return loaded

    @classmethod
    def _from(cls, m: Mapping[Any, Any]) -> EventRow:
        return cls(**_pick(cls, m))


@dataclass(frozen=True, slots=True)
class ZoneEventRow:
    id: int
    provider: str
    region: str
    zone: str
    kind: str
    at: float
    detail: str

    @classmethod
    def _from(cls, m: Mapping[Any, Any]) -> ZoneEventRow:
        return cls(**_pick(cls, m))


@dataclass(frozen=True, slots=True)
class ServiceRow:
    id: int
    name: str
    status: ServiceStatus
    version: int
    update_mode: str
    spec_json: str
    spec_redacted_json: str
    created_at: float
    ended_at: float | None
    message: str
    lb_port: int
    lb_control_port: int
    lb_token: str
    lb_pid: int | None
    lb_start_ticks: int | None
    target: int
    upscale_since: float | None
    downscale_since: float | None

    @classmethod
    def _from(cls, m: Mapping[Any, Any]) -> ServiceRow:
        return cls(**{**_pick(cls, m), "status": ServiceStatus(m["status"])})


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    key: str
    service_id: int
    replica_id: int
    version: int
    status: ReplicaStatus
    provider: str
    region: str
    zone: str
    instance_type: str
    market: Market
    price_per_hour: float
    port: int
    instance_id: str | None
    url: str
    token: str
    created_at: float
    started_at: float | None
    ready_at: float | None
    ended_at: float | None
    message: str
    last_heartbeat_at: float | None
    phase: str | None
    exit_code: int | None
    notice_deadline: float | None
    log_offset: int

    @classmethod
    def _from(cls, m: Mapping[Any, Any]) -> ReplicaRow:
        return cls(
            **{
                **_pick(cls, m),
                "status": ReplicaStatus(m["status"]),
                "market": Market(m["market"]),
            }
        )


def _pick(cls: type, m: Mapping[Any, Any]) -> dict[str, Any]:
    return {f.name: m[f.name] for f in fields(cls)}


@dataclass(frozen=True, slots=True)
class ProjectRow:
    name: str
    gpu_quota: float | None
    token_hash: str
    created_at: float

    @classmethod
    def _from(cls, m: Mapping[Any, Any]) -> ProjectRow:
        return cls(**_pick(cls, m))


# -- migrations --------------------------------------------------------------------------


def _create_all(conn: Connection) -> None:
    METADATA.create_all(conn)


# (version, migrate(connection)), applied in order inside one transaction at open. A fresh
# database runs version 1 only, which creates the tables as the models above describe them
# today, and is stamped LATEST_VERSION; later entries (ALTER TABLE ...) run only for databases
# stamped with an older version. So: when a model changes, append a migration here too.
def _v2_services(conn: Connection) -> None:
    """Services: the service, service_version and replica tables, and event.service_id."""
    conn.exec_driver_sql("ALTER TABLE event ADD COLUMN service_id INTEGER")
    conn.exec_driver_sql("CREATE INDEX ix_event_service_id ON event (service_id)")
    METADATA.create_all(
        conn, tables=[_t(Service), _t(ServiceVersion), _t(Replica)]
    )


def _v3_gpus_and_projects(conn: Connection) -> None:
    """GPU telemetry on instances (instance.gpus_json, gpus_at) and the project table."""
    conn.exec_driver_sql("ALTER TABLE instance ADD COLUMN gpus_json TEXT")
    conn.exec_driver_sql("ALTER TABLE instance ADD COLUMN gpus_at FLOAT")
    METADATA.create_all(conn, tables=[_t(Project)])


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _create_all),
    (2, _v2_services),
    (3, _v3_gpus_and_projects),
]
LATEST_VERSION = MIGRATIONS[-1][0]

_PG_MIGRATION_LOCK = 0x5B07D  # pg_advisory_xact_lock key: one migrator at a time


def _enum_value(v: Any) -> Any:
    return v.value if isinstance(v, enum.Enum) else v


_JOB_SETTABLE = frozenset(Job.model_fields) - {"id", "status", "task_id"}


def _check_job_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    bad = set(values) - _JOB_SETTABLE
    if bad:
        hint = " (status changes go through transition_job)" if "status" in bad else ""
        raise TypeError(f"not settable job fields: {sorted(bad)}{hint}")
    return {k: _enum_value(v) for k, v in values.items()}


def _dumps(data: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(data or {}), default=str, sort_keys=True)


# -- the synchronous store ---------------------------------------------------------------


class Store:
    """Synchronous access to the state database. Open with :meth:`Store.open`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._closed = False
        self.dialect = engine.dialect.name  # "sqlite" or "postgresql"

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect, configure and migrate.

        ``sqlite:////abs/path/state.db`` or ``postgresql+psycopg://user@/db?host=/run/dir``.
        Raises :class:`SchemaTooNew` if the database was written by a newer spotd.
        """
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ValueError(
                    "an in-memory SQLite store would vanish with its connection: "
                    "use a file, e.g. sqlite:////abs/path/state.db"
                )
            engine = create_engine(parsed, connect_args={"check_same_thread": False})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        elif backend == "postgresql":
            engine = create_engine(parsed, pool_pre_ping=True)
        else:
            raise ValueError(f"unsupported database URL {url!r}: use sqlite:// or postgresql://")
        store = cls(engine)
        try:
            store._migrate()
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    @property
    def engine(self) -> Engine:
        return self._engine

    def schema_version(self) -> int:
        with self._read() as conn:
            return _current_version(conn)

    def _migrate(self) -> None:
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            current = _current_version(conn)
            if current > LATEST_VERSION:
                raise SchemaTooNew(
                    f"the database {self._engine.url.render_as_string(hide_password=True)} has "
                    f"schema version {current}, newer than this spotd knows ({LATEST_VERSION}): "
                    "upgrade spotd, or point it at another database"
                )
            if current == LATEST_VERSION:
                return
            if current == 0:
                MIGRATIONS[0][1](conn)  # a fresh database: the current shape at once
            else:
                for version, migrate in MIGRATIONS:
                    if version > current:
                        migrate(conn)
            conn.execute(SchemaVersion.__table__.delete())  # type: ignore[attr-defined]
            conn.execute(
                SchemaVersion.__table__.insert().values(version=LATEST_VERSION)  # type: ignore[attr-defined]
            )

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreError("the store is closed")
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreError("the store is closed")
        with self._engine.connect() as conn:
            conn.execution_options(spotd_write=True)  # BEGIN IMMEDIATE on SQLite
            with conn.begin():
                yield conn

    @staticmethod
    def _event(
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
        values = {
            "at": now,
            "job_id": job_id,
            "attempt_id": attempt_id,
            "kind": kind,
            "message": message,
            "data_json": _dumps(data),
            "service_id": service_id,
        }
        res = conn.execute(_t(Event).insert().values(**values).returning(_t(Event).c.id))
        return EventRow(id=int(res.scalar_one()), **values)  # type: ignore[arg-type]

    # -- jobs --------------------------------------------------------------------------

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
    ) -> JobRow:
        """Store a new PENDING job and its first event.

        ``task_id`` is ``task_id_prefix + str(id)``, e.g. prefix "spotd-1a2b-j" gives
        "spotd-1a2b-j7": it needs the id, so it is set in the same transaction as the insert.
        """
        jt = _t(Job)
        with self._write() as conn:
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
                    message="submitted",
                )
                .returning(jt.c.id)
            )
            job_id = int(res.scalar_one())
            conn.execute(
                jt.update().where(jt.c.id == job_id).values(task_id=f"{task_id_prefix}{job_id}")
            )
            self._event(
                conn,
                kind="job.status",
                message=f"→ PENDING: submitted {name!r} ({resources})",
                now=submitted_at,
                job_id=job_id,
                data={"from": None, "to": JobStatus.PENDING.value},
            )
            return self._job(conn, job_id)

    def get_job(self, job_id: int) -> JobRow | None:
        with self._read() as conn:
            m = conn.execute(select(_t(Job)).where(_t(Job).c.id == job_id)).mappings().first()
            return None if m is None else JobRow._from(m)

    def list_jobs(
        self, *, statuses: Collection[JobStatus] | None = None, limit: int | None = None
    ) -> list[JobRow]:
        """Jobs, newest first, optionally only those in ``statuses``."""
        jt = _t(Job)
        q = select(jt).order_by(jt.c.id.desc())
        if statuses is not None:
            q = q.where(jt.c.status.in_([_enum_value(s) for s in statuses]))
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            return [JobRow._from(m) for m in conn.execute(q).mappings()]

    def active_jobs(self) -> list[JobRow]:
        """Jobs not in a terminal status, oldest first (the order workers are started in)."""
        jt = _t(Job)
        q = (
            select(jt)
            .where(jt.c.status.not_in([s.value for s in TERMINAL_JOB_STATUSES]))
            .order_by(jt.c.id)
        )
        with self._read() as conn:
            return [JobRow._from(m) for m in conn.execute(q).mappings()]

    def transition_job(
        self,
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
        values = _check_job_fields(fields)
        values.setdefault("message", reason)
        expected = [_enum_value(s) for s in from_]
        jt = _t(Job)
        with self._write() as conn:
            current = conn.execute(
                select(jt.c.status).where(jt.c.id == job_id).with_for_update()
            ).scalar_one_or_none()
            if current is None:
                raise NotFound(f"no job {job_id}")
            res = conn.execute(
                update(jt)
                .where(jt.c.id == job_id, jt.c.status.in_(expected))
                .values(status=_enum_value(to), **values)
            )
            if res.rowcount != 1:
                raise StaleTransition(
                    what="job", row_id=job_id, current=current, expected=expected, to=str(to)
                )
            self._event(
                conn,
                kind="job.status",
                message=f"{current} → {to}: {reason}",
                now=now,
                job_id=job_id,
                data={"from": current, "to": _enum_value(to), "fields": values},
            )
            return self._job(conn, job_id)

    def update_job_fields(
        self, job_id: int, *, now: float, event: str | None = None, **fields: Any
    ) -> JobRow:
        """Non-status bookkeeping (counters, next_try_at, message). ``event``: also log it."""
        values = _check_job_fields(fields)
        jt = _t(Job)
        with self._write() as conn:
            if values:
                res = conn.execute(update(jt).where(jt.c.id == job_id).values(**values))
                if res.rowcount != 1:
                    raise NotFound(f"no job {job_id}")
            row = self._job(conn, job_id)
            if event is not None:
                self._event(
                    conn, kind="job.update", message=event, now=now, job_id=job_id,
                    data={"fields": values},
                )
            return row

    @staticmethod
    def _job(conn: Connection, job_id: int) -> JobRow:
        m = conn.execute(select(_t(Job)).where(_t(Job).c.id == job_id)).mappings().first()
        if m is None:
            raise NotFound(f"no job {job_id}")
        return JobRow._from(m)

    # -- attempts and their instances --------------------------------------------------

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
                _t(Attempt)
                .insert()
                .values(
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
                    _t(Instance).insert(),
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
            self._event(
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
            return self._attempt(conn, aid)

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
        expected = [_enum_value(s) for s in from_]
        at = _t(Attempt)
        with self._write() as conn:
            cur = conn.execute(
                select(at.c.status, at.c.job_id, at.c.started_at)
                .where(at.c.id == attempt_id)
                .with_for_update()
            ).first()
            if cur is None:
                raise NotFound(f"no attempt {attempt_id}")
            values: dict[str, Any] = {"status": _enum_value(to)}
            if to == AttemptStatus.RUNNING and cur.started_at is None:
                values["started_at"] = now
            if to == AttemptStatus.ENDED:
                values.update(ended_at=now, end_reason=_enum_value(end_reason),
                              end_detail=end_detail)
            res = conn.execute(
                update(at).where(at.c.id == attempt_id, at.c.status.in_(expected)).values(**values)
            )
            if res.rowcount != 1:
                raise StaleTransition(
                    what="attempt", row_id=attempt_id, current=cur.status, expected=expected,
                    to=str(to),
                )
            self._event(
                conn,
                kind="attempt.status",
                message=f"{cur.status} → {to}: {reason}",
                now=now,
                job_id=cur.job_id,
                attempt_id=attempt_id,
                data={"from": cur.status, "to": _enum_value(to), "end_reason": values.get("end_reason")},
            )
            return self._attempt(conn, attempt_id)

    def attempts(self, job_id: int) -> list[AttemptRow]:
        """The job's attempts, first to last."""
        at = _t(Attempt)
        with self._read() as conn:
            rows = conn.execute(select(at).where(at.c.job_id == job_id).order_by(at.c.attempt))
            return [AttemptRow._from(m) for m in rows.mappings()]

    def get_attempt(self, attempt_id: str) -> AttemptRow | None:
        at = _t(Attempt)
        with self._read() as conn:
            m = conn.execute(select(at).where(at.c.id == attempt_id)).mappings().first()
            return None if m is None else AttemptRow._from(m)

    @staticmethod
    def _attempt(conn: Connection, attempt_id: str) -> AttemptRow:
        at = _t(Attempt)
        m = conn.execute(select(at).where(at.c.id == attempt_id)).mappings().first()
        if m is None:
            raise NotFound(f"no attempt {attempt_id}")
        return AttemptRow._from(m)

    # -- instances ---------------------------------------------------------------------

    def set_instance_id(self, key: str, instance_id: str, *, state: str | None = None) -> InstanceRow:
        """Record the provider's id for our key. Idempotent; a *different* id fails loudly."""
        it = _t(Instance)
        with self._write() as conn:
            row = self._instance(conn, key, for_update=True)
            if row.instance_id is not None and row.instance_id != instance_id:
                raise StoreError(
                    f"instance {key} already has provider id {row.instance_id}, got {instance_id}"
                )
            values: dict[str, Any] = {"instance_id": instance_id}
            if state is not None:
                values["state"] = _enum_value(state)
            conn.execute(update(it).where(it.c.key == key).values(**values))
            return self._instance(conn, key)

    def instances(
        self,
        *,
        attempt_id: str | None = None,
        job_id: int | None = None,
        live_only: bool = False,
    ) -> list[InstanceRow]:
        """Instance rows ordered by attempt and node rank; ``live_only``: not terminated."""
        it = _t(Instance)
        q = select(it).order_by(it.c.job_id, it.c.attempt_id, it.c.node_rank)
        if attempt_id is not None:
            q = q.where(it.c.attempt_id == attempt_id)
        if job_id is not None:
            q = q.where(it.c.job_id == job_id)
        if live_only:
            q = q.where(it.c.terminated.is_(False))
        with self._read() as conn:
            return [InstanceRow._from(m) for m in conn.execute(q).mappings()]

    def get_instance(self, key: str) -> InstanceRow | None:
        with self._read() as conn:
            m = conn.execute(select(_t(Instance)).where(_t(Instance).c.key == key)).mappings()
            first = m.first()
            return None if first is None else InstanceRow._from(first)

    def instance_by_token(self, token: str) -> InstanceRow | None:
        if not token:
            return None
        it = _t(Instance)
        with self._read() as conn:
            m = conn.execute(select(it).where(it.c.token == token)).mappings().first()
            return None if m is None else InstanceRow._from(m)

    def record_heartbeat(
        self,
        key: str,
        *,
        now: float,
        phase: str | None,
        exit_code: int | None,
        notice_deadline: float | None,
        gpus_json: str | None = None,
    ) -> InstanceRow:
        """An agent reported. None leaves a field as it was: an exit code or a notice, once
        reported, is not unreported by a later heartbeat that omits it."""
        values: dict[str, Any] = {"last_heartbeat_at": now}
        if gpus_json is not None:
            values.update(gpus_json=gpus_json, gpus_at=now)
        if phase is not None:
            values["phase"] = phase
        if exit_code is not None:
            values["exit_code"] = exit_code
        if notice_deadline is not None:
            values["notice_deadline"] = notice_deadline
        return self._update_instance(key, values)

    def set_log_offset(self, key: str, offset: int) -> InstanceRow:
        return self._update_instance(key, {"log_offset": offset})

    def mark_instance_terminated(self, key: str, *, now: float) -> InstanceRow:
        """Idempotent: the first call's time stands."""
        it = _t(Instance)
        with self._write() as conn:
            row = self._instance(conn, key, for_update=True)
            if not row.terminated:
                conn.execute(
                    update(it)
                    .where(it.c.key == key)
                    .values(terminated=True, terminated_at=now,
                            state=InstanceState.TERMINATED.value)
                )
            return self._instance(conn, key)

    def _update_instance(self, key: str, values: Mapping[str, Any]) -> InstanceRow:
        it = _t(Instance)
        with self._write() as conn:
            res = conn.execute(update(it).where(it.c.key == key).values(**values))
            if res.rowcount != 1:
                raise NotFound(f"no instance {key}")
            return self._instance(conn, key)

    @staticmethod
    def _instance(conn: Connection, key: str, *, for_update: bool = False) -> InstanceRow:
        it = _t(Instance)
        q = select(it).where(it.c.key == key)
        if for_update:
            q = q.with_for_update()
        m = conn.execute(q).mappings().first()
        if m is None:
            raise NotFound(f"no instance {key}")
        return InstanceRow._from(m)

    # -- events and zone history -------------------------------------------------------

    def add_event(
        self,
        *,
        kind: str,
        message: str,
        now: float,
        job_id: int | None = None,
        attempt_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> EventRow:
        with self._write() as conn:
            return self._event(
                conn, kind=kind, message=message, now=now, job_id=job_id,
                attempt_id=attempt_id, data=data,
            )

    def events(
        self, *, job_id: int | None = None, since_id: int = 0, limit: int | None = None
    ) -> list[EventRow]:
        """Events in the order they were written; ``since_id`` for tailing."""
        et = _t(Event)
        q = select(et).where(et.c.id > since_id).order_by(et.c.id)
        if job_id is not None:
            q = q.where(et.c.job_id == job_id)
        if limit is not None:
            q = q.limit(limit)
        with self._read() as conn:
            return [EventRow._from(m) for m in conn.execute(q).mappings()]

    def add_zone_event(
        self, *, provider: str, region: str, zone: str, kind: str, at: float, detail: str = ""
    ) -> ZoneEventRow:
        values = {
            "provider": provider, "region": region, "zone": zone,
            "kind": _enum_value(kind), "at": at, "detail": detail,
        }
        zt = _t(ZoneEvent)
        with self._write() as conn:
            res = conn.execute(zt.insert().values(**values).returning(zt.c.id))
            return ZoneEventRow(id=int(res.scalar_one()), **values)

    def zone_events(self, *, since: float) -> list[ZoneEventRow]:
        """Zone history at or after ``since``, oldest first."""
        zt = _t(ZoneEvent)
        q = select(zt).where(zt.c.at >= since).order_by(zt.c.at, zt.c.id)
        with self._read() as conn:
            return [ZoneEventRow._from(m) for m in conn.execute(q).mappings()]

    # -- projects (tenants) -----------------------------------------------------------

    def create_project(
        self, *, name: str, gpu_quota: float | None, token_hash: str, now: float
    ) -> ProjectRow:
        """Raises :class:`ProjectExists` if the name is taken."""
        pt = _t(Project)
        with self._write() as conn:
            if conn.execute(select(pt.c.name).where(pt.c.name == name)).first() is not None:
                raise ProjectExists(f"project {name!r} exists")
            conn.execute(
                pt.insert().values(
                    name=name, gpu_quota=gpu_quota, token_hash=token_hash, created_at=now
                )
            )
            self._event(
                conn, kind="project.create",
                message=f"project {name!r} created, GPU quota "
                + ("unlimited" if gpu_quota is None else f"{gpu_quota:g}"),
                now=now, data={"project": name, "gpu_quota": gpu_quota},
            )
            return ProjectRow._from(conn.execute(select(pt).where(pt.c.name == name)).mappings().one())

    def get_project(self, name: str) -> ProjectRow | None:
        pt = _t(Project)
        with self._read() as conn:
            m = conn.execute(select(pt).where(pt.c.name == name)).mappings().first()
            return None if m is None else ProjectRow._from(m)

    def project_by_token_hash(self, token_hash: str) -> ProjectRow | None:
        pt = _t(Project)
        with self._read() as conn:
            m = conn.execute(select(pt).where(pt.c.token_hash == token_hash)).mappings().first()
            return None if m is None else ProjectRow._from(m)

    def list_projects(self) -> list[ProjectRow]:
        pt = _t(Project)
        with self._read() as conn:
            return [ProjectRow._from(m) for m in conn.execute(select(pt).order_by(pt.c.name)).mappings()]

    # -- services and replicas ---------------------------------------------------------

    def create_service(
        self,
        *,
        name: str,
        spec_json: str,
        spec_redacted_json: str,
        lb_port: int,
        lb_control_port: int,
        lb_token: str,
        target: int,
        now: float,
    ) -> ServiceRow:
        """Store a new STARTING service (version 1) and its first event.

        Raises :class:`ServiceExists` while a service of that name is not DOWN.
        """
        st = _t(Service)
        with self._write() as conn:
            live = conn.execute(
                select(st.c.id).where(
                    st.c.name == name, st.c.status != ServiceStatus.DOWN.value
                )
            ).first()
            if live is not None:
                raise ServiceExists(f"a service named {name!r} exists (id {live.id})")
            res = conn.execute(
                st.insert()
                .values(
                    name=name, status=ServiceStatus.STARTING.value, version=1,
                    update_mode="rolling", spec_json=spec_json,
                    spec_redacted_json=spec_redacted_json, created_at=now, message="submitted",
                    lb_port=lb_port, lb_control_port=lb_control_port, lb_token=lb_token,
                    target=target,
                )
                .returning(st.c.id)
            )
            sid = int(res.scalar_one())
            conn.execute(
                _t(ServiceVersion).insert().values(
                    service_id=sid, version=1, spec_json=spec_json, mode="rolling", created_at=now
                )
            )
            self._event(
                conn, kind="service.status",
                message=f"→ STARTING: service {name!r} up, endpoint port {lb_port}",
                now=now, service_id=sid, data={"from": None, "to": ServiceStatus.STARTING.value},
            )
            return self._service(conn, sid)

    def get_service(self, service_id: int) -> ServiceRow | None:
        st = _t(Service)
        with self._read() as conn:
            m = conn.execute(select(st).where(st.c.id == service_id)).mappings().first()
            return None if m is None else ServiceRow._from(m)

    def service_by_name(self, name: str) -> ServiceRow | None:
        """The live service of that name, else the newest one that had it."""
        st = _t(Service)
        q = select(st).where(st.c.name == name).order_by(
            (st.c.status == ServiceStatus.DOWN.value), st.c.id.desc()
        )
        with self._read() as conn:
            m = conn.execute(q).mappings().first()
            return None if m is None else ServiceRow._from(m)

    def list_services(self, *, live_only: bool = False) -> list[ServiceRow]:
        """Services, oldest first; ``live_only``: not DOWN."""
        st = _t(Service)
        q = select(st).order_by(st.c.id)
        if live_only:
            q = q.where(st.c.status != ServiceStatus.DOWN.value)
        with self._read() as conn:
            return [ServiceRow._from(m) for m in conn.execute(q).mappings()]

    _SERVICE_SETTABLE = frozenset(
        {"message", "lb_pid", "lb_start_ticks", "target", "upscale_since", "downscale_since",
         "ended_at"}
    )

    def transition_service(
        self,
        service_id: int,
        *,
        from_: Collection[ServiceStatus],
        to: ServiceStatus,
        reason: str,
        now: float,
        **fields: Any,
    ) -> ServiceRow:
        """Compare-and-set the service's status (and ``fields``), with its event."""
        bad = set(fields) - self._SERVICE_SETTABLE
        if bad:
            raise TypeError(f"not settable service fields: {sorted(bad)}")
        values = {k: _enum_value(v) for k, v in fields.items()}
        values.setdefault("message", reason)
        if ServiceStatus(to).is_terminal:
            values.setdefault("ended_at", now)
        expected = [_enum_value(s) for s in from_]
        st = _t(Service)
        with self._write() as conn:
            current = conn.execute(
                select(st.c.status).where(st.c.id == service_id).with_for_update()
            ).scalar_one_or_none()
            if current is None:
                raise NotFound(f"no service {service_id}")
            res = conn.execute(
                update(st)
                .where(st.c.id == service_id, st.c.status.in_(expected))
                .values(status=_enum_value(to), **values)
            )
            if res.rowcount != 1:
                raise StaleTransition(
                    what="service", row_id=service_id, current=current, expected=expected,
                    to=str(to),
                )
            self._event(
                conn, kind="service.status", message=f"{current} → {to}: {reason}", now=now,
                service_id=service_id,
                data={"from": current, "to": _enum_value(to), "fields": values},
            )
            return self._service(conn, service_id)

    def update_service_fields(
        self, service_id: int, *, now: float, event: str | None = None, **fields: Any
    ) -> ServiceRow:
        """Non-status bookkeeping (LB pid, autoscaler state). ``event``: also log it."""
        bad = set(fields) - self._SERVICE_SETTABLE
        if bad:
            raise TypeError(f"not settable service fields: {sorted(bad)}")
        st = _t(Service)
        with self._write() as conn:
            if fields:
                res = conn.execute(update(st).where(st.c.id == service_id).values(**fields))
                if res.rowcount != 1:
                    raise NotFound(f"no service {service_id}")
            row = self._service(conn, service_id)
            if event is not None:
                self._event(
                    conn, kind="service.update", message=event, now=now, service_id=service_id,
                    data={"fields": dict(fields)},
                )
            return row

    def add_service_version(
        self,
        service_id: int,
        *,
        spec_json: str,
        spec_redacted_json: str,
        mode: str,
        now: float,
    ) -> ServiceRow:
        """A new version becomes the newest: new replicas run it; ``mode`` says how the older
        ones leave. Only a live (not SHUTTING_DOWN/DOWN/FAILED) service can be updated."""
        st = _t(Service)
        live = (ServiceStatus.STARTING, ServiceStatus.READY, ServiceStatus.NO_REPLICA)
        with self._write() as conn:
            cur = conn.execute(
                select(st.c.status, st.c.version).where(st.c.id == service_id).with_for_update()
            ).first()
            if cur is None:
                raise NotFound(f"no service {service_id}")
            if cur.status not in {s.value for s in live}:
                raise StaleTransition(
                    what="service", row_id=service_id, current=cur.status,
                    expected=[s.value for s in live], to="a new version",
                )
            version = int(cur.version) + 1
            conn.execute(
                _t(ServiceVersion).insert().values(
                    service_id=service_id, version=version, spec_json=spec_json, mode=mode,
                    created_at=now,
                )
            )
            conn.execute(
                update(st).where(st.c.id == service_id).values(
                    version=version, update_mode=mode, spec_json=spec_json,
                    spec_redacted_json=spec_redacted_json,
                )
            )
            self._event(
                conn, kind="service.version", message=f"version {version} ({mode} update)",
                now=now, service_id=service_id, data={"version": version, "mode": mode},
            )
            return self._service(conn, service_id)

    def service_version_spec(self, service_id: int, version: int) -> str | None:
        vt = _t(ServiceVersion)
        with self._read() as conn:
            return conn.execute(
                select(vt.c.spec_json).where(vt.c.service_id == service_id, vt.c.version == version)
            ).scalar_one_or_none()

    @staticmethod
    def _service(conn: Connection, service_id: int) -> ServiceRow:
        st = _t(Service)
        m = conn.execute(select(st).where(st.c.id == service_id)).mappings().first()
        if m is None:
            raise NotFound(f"no service {service_id}")
        return ServiceRow._from(m)

    def create_replica(
        self,
        *,
        service_id: int,
        version: int,
        provider: str,
        region: str,
        zone: str,
        instance_type: str,
        market: Market | str,
        price_per_hour: float,
        port: int,
        token: str,
        now: float,
    ) -> ReplicaRow:
        """Write the intent for one replica (PROVISIONING, no instance id yet), before any
        provider call. Its id is the service's highest replica id + 1 (never reused)."""
        rt = _t(Replica)
        market_value = Market(market).value
        with self._write() as conn:
            top = conn.execute(
                select(rt.c.replica_id).where(rt.c.service_id == service_id)
                .order_by(rt.c.replica_id.desc()).limit(1)
            ).scalar_one_or_none()
            rid = int(top or 0) + 1
            key = f"s{service_id}-r{rid}"
            conn.execute(
                rt.insert().values(
                    key=key, service_id=service_id, replica_id=rid, version=version,
                    status=ReplicaStatus.PROVISIONING.value, provider=provider, region=region,
                    zone=zone, instance_type=instance_type, market=market_value,
                    price_per_hour=price_per_hour, port=port, token=token, created_at=now,
                    url="", message="", log_offset=0,
                )
            )
            self._event(
                conn, kind="replica.status",
                message=(
                    f"→ PROVISIONING: replica {rid} (v{version}) in {provider}/{region}/{zone}, "
                    f"{instance_type} {market_value} ${price_per_hour:.4f}/h"
                ),
                now=now, service_id=service_id, attempt_id=key,
                data={"from": None, "to": ReplicaStatus.PROVISIONING.value},
            )
            return self._replica(conn, key)

    _REPLICA_SETTABLE = frozenset(
        {"instance_id", "url", "started_at", "ready_at", "message", "notice_deadline"}
    )

    def transition_replica(
        self,
        key: str,
        *,
        from_: Collection[ReplicaStatus],
        to: ReplicaStatus,
        reason: str,
        now: float,
        **fields: Any,
    ) -> ReplicaRow:
        """Compare-and-set a replica's status (and ``fields``), with its event. A terminal
        status sets ``ended_at``."""
        bad = set(fields) - self._REPLICA_SETTABLE
        if bad:
            raise TypeError(f"not settable replica fields: {sorted(bad)}")
        values = dict(fields)
        values.setdefault("message", reason)
        if ReplicaStatus(to).is_terminal:
            values["ended_at"] = now
        expected = [_enum_value(s) for s in from_]
        rt = _t(Replica)
        with self._write() as conn:
            cur = conn.execute(
                select(rt.c.status, rt.c.service_id).where(rt.c.key == key).with_for_update()
            ).first()
            if cur is None:
                raise NotFound(f"no replica {key}")
            res = conn.execute(
                update(rt).where(rt.c.key == key, rt.c.status.in_(expected))
                .values(status=_enum_value(to), **values)
            )
            if res.rowcount != 1:
                raise StaleTransition(
                    what="replica", row_id=key, current=cur.status, expected=expected, to=str(to)
                )
            self._event(
                conn, kind="replica.status", message=f"{cur.status} → {to}: {reason}", now=now,
                service_id=cur.service_id, attempt_id=key,
                data={"from": cur.status, "to": _enum_value(to)},
            )
            return self._replica(conn, key)

    def update_replica_fields(self, key: str, **fields: Any) -> ReplicaRow:
        bad = set(fields) - self._REPLICA_SETTABLE
        if bad:
            raise TypeError(f"not settable replica fields: {sorted(bad)}")
        rt = _t(Replica)
        with self._write() as conn:
            res = conn.execute(update(rt).where(rt.c.key == key).values(**fields))
            if res.rowcount != 1:
                raise NotFound(f"no replica {key}")
            return self._replica(conn, key)

    def record_replica_heartbeat(
        self,
        key: str,
        *,
        now: float,
        phase: str | None,
        exit_code: int | None,
        notice_deadline: float | None,
        log_offset: int,
    ) -> ReplicaRow:
        """A replica's agent reported; None leaves a field as it was (see record_heartbeat)."""
        values: dict[str, Any] = {"last_heartbeat_at": now, "log_offset": log_offset}
        if phase is not None:
            values["phase"] = phase
        if exit_code is not None:
            values["exit_code"] = exit_code
        if notice_deadline is not None:
            values["notice_deadline"] = notice_deadline
        rt = _t(Replica)
        with self._write() as conn:
            res = conn.execute(update(rt).where(rt.c.key == key).values(**values))
            if res.rowcount != 1:
                raise NotFound(f"no replica {key}")
            return self._replica(conn, key)

    def replicas(self, *, service_id: int | None = None, live_only: bool = False) -> list[ReplicaRow]:
        """Replicas by service and id; ``live_only``: not in a terminal status."""
        rt = _t(Replica)
        q = select(rt).order_by(rt.c.service_id, rt.c.replica_id)
        if service_id is not None:
            q = q.where(rt.c.service_id == service_id)
        if live_only:
            q = q.where(rt.c.status.not_in([s.value for s in ReplicaStatus if s.is_terminal]))
        with self._read() as conn:
            return [ReplicaRow._from(m) for m in conn.execute(q).mappings()]

    def get_replica(self, key: str) -> ReplicaRow | None:
        rt = _t(Replica)
        with self._read() as conn:
            m = conn.execute(select(rt).where(rt.c.key == key)).mappings().first()
            return None if m is None else ReplicaRow._from(m)

    @staticmethod
    def _replica(conn: Connection, key: str) -> ReplicaRow:
        rt = _t(Replica)
        m = conn.execute(select(rt).where(rt.c.key == key)).mappings().first()
        if m is None:
            raise NotFound(f"no replica {key}")
        return ReplicaRow._from(m)

    def service_events(self, service_id: int, *, since_id: int = 0) -> list[EventRow]:
        et = _t(Event)
        q = select(et).where(et.c.service_id == service_id, et.c.id > since_id).order_by(et.c.id)
        with self._read() as conn:
            return [EventRow._from(m) for m in conn.execute(q).mappings()]


def _t(model: type[SQLModel]) -> Any:
    """The Core table of a SQLModel class (typed Any: SQLModel hides ``__table__``)."""
    return model.__table__  # type: ignore[attr-defined]


def _current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(SchemaVersion.__tablename__):
        return 0
    v = conn.execute(select(_t(SchemaVersion).c.version)).scalars().all()
    return max(v, default=0)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # take transaction control away from the sqlite3 module: _sqlite_on_begin emits BEGIN
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so a read-then-write transaction cannot be
    # overtaken between its SELECT and its UPDATE (and waits on busy_timeout instead of failing
    # with SQLITE_BUSY_SNAPSHOT when another connection committed in between).
    write = conn.get_execution_options().get("spotd_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# -- the asyncio adapter -----------------------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")


class AsyncStore:
    """:class:`Store` for the event loop: every call runs on one dedicated store thread.

    One thread, so calls run one at a time in the order they were made (SQLite has one writer
    anyway) and the loop never blocks on disk or network I/O. This is the daemon's one place
    where a thread is allowed.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotd-store")

    @classmethod
    async def open(cls, url: str) -> AsyncStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotd-store")
        try:
            store = await asyncio.get_running_loop().run_in_executor(executor, Store.open, url)
        finally:
            executor.shutdown(wait=False)
        return cls(store)

    async def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    async def close(self) -> None:
        try:
            await self._call(self.store.close)
        finally:
            self._executor.shutdown(wait=True)

    async def schema_version(self) -> int:
        return await self._call(self.store.schema_version)

    # jobs
    async def create_job(
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
    ) -> JobRow:
        return await self._call(
            self.store.create_job, name=name, task_id_prefix=task_id_prefix,
            spec_json=spec_json, spec_redacted_json=spec_redacted_json, resources=resources,
            submitted_at=submitted_at, project=project, deadline=deadline,
        )

    async def get_job(self, job_id: int) -> JobRow | None:
        return await self._call(self.store.get_job, job_id)

    async def list_jobs(
        self, *, statuses: Collection[JobStatus] | None = None, limit: int | None = None
    ) -> list[JobRow]:
        return await self._call(self.store.list_jobs, statuses=statuses, limit=limit)

    async def active_jobs(self) -> list[JobRow]:
        return await self._call(self.store.active_jobs)

    async def transition_job(
        self,
        job_id: int,
        *,
        from_: Collection[JobStatus],
        to: JobStatus,
        reason: str,
        now: float,
        **fields: Any,
    ) -> JobRow:
        return await self._call(
            self.store.transition_job, job_id, from_=from_, to=to, reason=reason, now=now,
            **fields,
        )

    async def update_job_fields(
        self, job_id: int, *, now: float, event: str | None = None, **fields: Any
    ) -> JobRow:
        return await self._call(
            self.store.update_job_fields, job_id, now=now, event=event, **fields
        )

    # attempts
    async def create_attempt(
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
        return await self._call(
            self.store.create_attempt, job_id=job_id, attempt=attempt, provider=provider,
            region=region, zone=zone, instance_type=instance_type, market=market,
            price_per_hour=price_per_hour, num_nodes=num_nodes, now=now, instances=instances,
        )

    async def transition_attempt(
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
        return await self._call(
            self.store.transition_attempt, attempt_id, from_=from_, to=to, reason=reason,
            now=now, end_reason=end_reason, end_detail=end_detail,
        )

    async def attempts(self, job_id: int) -> list[AttemptRow]:
        return await self._call(self.store.attempts, job_id)

    async def get_attempt(self, attempt_id: str) -> AttemptRow | None:
        return await self._call(self.store.get_attempt, attempt_id)

    # instances
    async def set_instance_id(
        self, key: str, instance_id: str, *, state: str | None = None
    ) -> InstanceRow:
        return await self._call(self.store.set_instance_id, key, instance_id, state=state)

    async def instances(
        self,
        *,
        attempt_id: str | None = None,
        job_id: int | None = None,
        live_only: bool = False,
    ) -> list[InstanceRow]:
        return await self._call(
            self.store.instances, attempt_id=attempt_id, job_id=job_id, live_only=live_only
        )

    async def get_instance(self, key: str) -> InstanceRow | None:
        return await self._call(self.store.get_instance, key)

    async def instance_by_token(self, token: str) -> InstanceRow | None:
        return await self._call(self.store.instance_by_token, token)

    async def record_heartbeat(
        self,
        key: str,
        *,
        now: float,
        phase: str | None,
        exit_code: int | None,
        notice_deadline: float | None,
        gpus_json: str | None = None,
    ) -> InstanceRow:
        return await self._call(
            self.store.record_heartbeat, key, now=now, phase=phase, exit_code=exit_code,
            notice_deadline=notice_deadline, gpus_json=gpus_json,
        )

    async def set_log_offset(self, key: str, offset: int) -> InstanceRow:
        return await self._call(self.store.set_log_offset, key, offset)

    async def mark_instance_terminated(self, key: str, *, now: float) -> InstanceRow:
        return await self._call(self.store.mark_instance_terminated, key, now=now)

    # events and zone history
    async def add_event(
        self,
        *,
        kind: str,
        message: str,
        now: float,
        job_id: int | None = None,
        attempt_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> EventRow:
        return await self._call(
            self.store.add_event, kind=kind, message=message, now=now, job_id=job_id,
            attempt_id=attempt_id, data=data,
        )

    async def events(
        self, *, job_id: int | None = None, since_id: int = 0, limit: int | None = None
    ) -> list[EventRow]:
        return await self._call(self.store.events, job_id=job_id, since_id=since_id, limit=limit)

    async def add_zone_event(
        self, *, provider: str, region: str, zone: str, kind: str, at: float, detail: str = ""
    ) -> ZoneEventRow:
        return await self._call(
            self.store.add_zone_event, provider=provider, region=region, zone=zone, kind=kind,
            at=at, detail=detail,
        )

    async def zone_events(self, *, since: float) -> list[ZoneEventRow]:
        return await self._call(self.store.zone_events, since=since)

    # projects
    async def create_project(
        self, *, name: str, gpu_quota: float | None, token_hash: str, now: float
    ) -> ProjectRow:
        return await self._call(
            self.store.create_project, name=name, gpu_quota=gpu_quota, token_hash=token_hash,
            now=now,
        )

    async def get_project(self, name: str) -> ProjectRow | None:
        return await self._call(self.store.get_project, name)

    async def project_by_token_hash(self, token_hash: str) -> ProjectRow | None:
        return await self._call(self.store.project_by_token_hash, token_hash)

    async def list_projects(self) -> list[ProjectRow]:
        return await self._call(self.store.list_projects)

    # services and replicas
    async def create_service(self, **kw: Any) -> ServiceRow:
        return await self._call(functools.partial(self.store.create_service, **kw))

    async def get_service(self, service_id: int) -> ServiceRow | None:
        return await self._call(self.store.get_service, service_id)

    async def service_by_name(self, name: str) -> ServiceRow | None:
        return await self._call(self.store.service_by_name, name)

    async def list_services(self, *, live_only: bool = False) -> list[ServiceRow]:
        return await self._call(self.store.list_services, live_only=live_only)

    async def transition_service(
        self,
        service_id: int,
        *,
        from_: Collection[ServiceStatus],
        to: ServiceStatus,
        reason: str,
        now: float,
        **fields: Any,
    ) -> ServiceRow:
        return await self._call(
            self.store.transition_service, service_id, from_=from_, to=to, reason=reason,
            now=now, **fields,
        )

    async def update_service_fields(
        self, service_id: int, *, now: float, event: str | None = None, **fields: Any
    ) -> ServiceRow:
        return await self._call(
            self.store.update_service_fields, service_id, now=now, event=event, **fields
        )

    async def add_service_version(
        self, service_id: int, *, spec_json: str, spec_redacted_json: str, mode: str, now: float
    ) -> ServiceRow:
        return await self._call(
            self.store.add_service_version, service_id, spec_json=spec_json,
            spec_redacted_json=spec_redacted_json, mode=mode, now=now,
        )

    async def service_version_spec(self, service_id: int, version: int) -> str | None:
        return await self._call(self.store.service_version_spec, service_id, version)

    async def create_replica(self, **kw: Any) -> ReplicaRow:
        return await self._call(functools.partial(self.store.create_replica, **kw))

    async def transition_replica(
        self,
        key: str,
        *,
        from_: Collection[ReplicaStatus],
        to: ReplicaStatus,
        reason: str,
        now: float,
        **fields: Any,
    ) -> ReplicaRow:
        return await self._call(
            self.store.transition_replica, key, from_=from_, to=to, reason=reason, now=now,
            **fields,
        )

    async def update_replica_fields(self, key: str, **fields: Any) -> ReplicaRow:
        return await self._call(self.store.update_replica_fields, key, **fields)

    async def record_replica_heartbeat(
        self,
        key: str,
        *,
        now: float,
        phase: str | None,
        exit_code: int | None,
        notice_deadline: float | None,
        log_offset: int,
    ) -> ReplicaRow:
        return await self._call(
            self.store.record_replica_heartbeat, key, now=now, phase=phase, exit_code=exit_code,
            notice_deadline=notice_deadline, log_offset=log_offset,
        )

    async def replicas(
        self, *, service_id: int | None = None, live_only: bool = False
    ) -> list[ReplicaRow]:
        return await self._call(self.store.replicas, service_id=service_id, live_only=live_only)

    async def get_replica(self, key: str) -> ReplicaRow | None:
        return await self._call(self.store.get_replica, key)

    async def service_events(self, service_id: int, *, since_id: int = 0) -> list[EventRow]:
        return await self._call(self.store.service_events, service_id, since_id=since_id)
