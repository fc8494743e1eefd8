"""The SQLModel tables: the database's shape today.

A fresh database is created from these models at once (migration 1); an older one is brought
here by the later migrations in :mod:`spotd.store.migrations`. So: when a model changes, append
a migration too. Enum columns hold the enum's string value, so a renamed Python member never
rewrites history.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Index
from sqlalchemy.orm import registry as sa_registry
from sqlmodel import Field, SQLModel

from spotd.types import InstanceState

# A private registry, so these tables never mix with other SQLModel metadata in the process.


class _Table(SQLModel, registry=sa_registry()):
    pass


METADATA = _Table.metadata


class Job(_Table, table=True):
    __tablename__ = "job"
    # a project's active jobs, found by seeks (its quota's count), not by walking its history
    __table_args__ = (Index("ix_job_project_status", "project", "status"),)  # version 8

    id: int | None = Field(default=None, primary_key=True)
    name: str
    task_id: str = Field(unique=True)  # stable across recoveries (SKYPILOT_TASK_ID)
    status: str = Field(index=True)  # JobStatus value
    spec_json: str  # the full task, secrets included: what the agents get
    spec_redacted_json: str  # the task with secret values masked: what users see
    resources: str = ""
    project: str = Field(default="default", index=True)
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
    gpus: float = 0.0  # GPUs reserved against the project's quota while active (version 4)
    # the daemon that runs it, with several daemons on one database (spotd.control.cluster);
    # None: one daemon runs everything (version 11)
    owner: str | None = Field(default=None, index=True)
    # the newest checkpoint an agent reported (spotd.control.deadline): its attempt, when the
    # agent synced it (the agent's clock) and when a daemon received it (that daemon's); in
    # the row, so a restarted daemon, or another one the job moves to, knows it (version 13)
    checkpoint_attempt: int | None = None
    checkpoint_synced_at: float | None = None
    checkpoint_received_at: float | None = None


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
    # the agent's config, held for the instance's one bootstrap (version 6; None once used)
    agent_json: str | None = None
    bootstrapped_at: float | None = None  # when its bootstrap token was used
    # when the provider's answer to the launch was recorded (version 10): a listing taken
    # before it may rightly not show the instance (Observation.covers)
    launched_at: float | None = None


class Event(_Table, table=True):
    __tablename__ = "event"

    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)  # retention deletes by age (version 5)
    job_id: int | None = Field(default=None, index=True)  # no FK: the log outlives anything
    attempt_id: str | None = None
    kind: str  # "job.status", "attempt.status", "job.update", "preemption", ...
    message: str
    data_json: str = "{}"
    service_id: int | None = Field(default=None, index=True)  # service events (version 2)
    daemon: str | None = None  # the daemon that wrote it, with several daemons (version 11)


class ZoneEvent(_Table, table=True):
    __tablename__ = "zone_event"

    id: int | None = Field(default=None, primary_key=True)
    provider: str
    region: str
    zone: str
    kind: str  # recovery.history.ZoneEventKind value
    at: float = Field(index=True)
    detail: str = ""


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
    owner: str | None = Field(default=None, index=True)  # its daemon, like job.owner (version 11)
    target: int = 0  # the autoscaler's target replica count
    upscale_since: float | None = None
    downscale_since: float | None = None
    project: str = Field(default="default", index=True)  # the tenant it belongs to (version 4)
    gpus: float = 0.0  # GPUs reserved against the project's quota while live (version 4)


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
    max_jobs: int | None = None  # active jobs at once (version 4); None: unlimited
    max_nodes_per_job: int | None = None  # num_nodes of one job (version 4); None: unlimited
    max_services: int | None = None  # live services at once (version 4); None: unlimited


class Pool(_Table, table=True):
    """A pool of workers that queued jobs run on (version 7): see spotd.control.pools."""

    __tablename__ = "pool"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)  # unique among pools that are not DOWN
    project: str = Field(default="default", index=True)
    status: str = Field(index=True)  # PoolStatus value
    workers: int  # how many workers it keeps up
    spec_json: str  # the workers' task, secrets included (each worker is a managed job of it)
    spec_redacted_json: str
    created_at: float
    ended_at: float | None = None


class PoolWorker(_Table, table=True):
    """A worker of a pool: a managed job whose agent runs the pool's jobs (version 7)."""

    __tablename__ = "pool_worker"

    job_id: int = Field(foreign_key="job.id", primary_key=True)
    pool_id: int = Field(foreign_key="pool.id", index=True)
    slot: int  # 0 .. workers-1; a slot whose job ended gets a new one (spotd.control.pools)


class PoolJob(_Table, table=True):
    """A job queued on a pool (version 7)."""

    __tablename__ = "pool_job"

    id: int | None = Field(default=None, primary_key=True)
    pool_id: int = Field(foreign_key="pool.id", index=True)
    name: str
    status: str = Field(index=True)  # PoolJobStatus value
    rank: int = 0  # $SKYPILOT_JOB_RANK among the copies of one launch
    num_jobs: int = 1  # $SKYPILOT_NUM_JOBS
    run: str
    envs_json: str = "{}"  # the job's envs and secrets (never shown)
    secret_names_json: str = "[]"
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    attempts: int = 0
    exit_code: int | None = None
    message: str = ""
    max_restarts_on_errors: int = 0  # failed runs queued again (version 9)


class PoolAttempt(_Table, table=True):
    """One run of a pool job on one worker's instance (version 7)."""

    __tablename__ = "pool_attempt"

    id: str = Field(primary_key=True)  # "q<pool job>-a<n>"
    pool_job_id: int = Field(foreign_key="pool_job.id", index=True)
    attempt: int
    worker_job_id: int = Field(foreign_key="job.id", index=True)
    instance_key: str = Field(index=True)  # the worker's instance that runs it
    started_at: float
    ended_at: float | None = None
    end_reason: str | None = None  # PoolEnd value
    exit_code: int | None = None


class Daemon(_Table, table=True):
    """One daemon of several on one database, and its lease (version 11): see
    spotd.store.leases. Times are the database's clock, so daemons' clocks never disagree."""

    __tablename__ = "daemon"

    id: str = Field(primary_key=True)  # SPOTD_DAEMON_ID
    epoch: int = 0  # bumped by every join and every takeover: the fencing token
    url: str = ""  # where its API answers (for operators)
    started_at: float = 0.0
    renewed_at: float = 0.0
    expires_at: float = 0.0  # 0: given up (a clean stop) or taken over
    ready_at: float | None = None  # its first takeover pass since it joined (version 14)


class DashboardSession(_Table, table=True):
    """A dashboard sign-in (version 12): see spotd.dashboard.auth. In the database, so every
    daemon on it knows it and a restart signs nobody out; the cookie's id is kept only as its
    SHA-256, so reading the database does not hand out sessions."""

    __tablename__ = "dashboard_session"

    id_hash: str = Field(primary_key=True)
    project: str | None = None  # None: the admin
    # a fingerprint of the token it was signed in with: a rotated token ends its sessions
    credential: str = ""
    csrf: str
    created_at: float
    used_at: float = Field(index=True)  # the least recently used goes first


class LoginLink(_Table, table=True):
    """A one-time dashboard login link (version 12), kept as the SHA-256 of its code."""

    __tablename__ = "login_link"

    code_hash: str = Field(primary_key=True)
    project: str | None = None  # None: the admin
    credential: str = ""  # the fingerprint of the token that asked for it
    expires_at: float = Field(index=True)


class SchemaVersion(_Table, table=True):
    __tablename__ = "schema_version"

    version: int = Field(primary_key=True)


def table_of(model: type[SQLModel]) -> Any:
    """The Core table of a SQLModel class (typed Any: SQLModel hides ``__table__``)."""
    return model.__table__  # type: ignore[attr-defined]
