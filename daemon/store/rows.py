"""Rows as the store hands them out: frozen snapshots detached from any session.

Enum columns come back as their enums (the database holds the string value); every row
mirrors its table field for field (a test holds them to it).
"""

from __future__ import annotations

import enum
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

from spotd.serve.replica_state import ReplicaStatus
from spotd.types import TERMINAL_JOB_STATUSES, AttemptStatus, EndReason, JobStatus, Market

__all__ = [
    "AttemptRow",
    "EventRow",
    "InstanceRow",
    "JobRow",
    "ProjectRow",
    "ProjectUsage",
    "ReplicaRow",
    "ServiceRow",
    "ServiceStatus",
    "ZoneEventRow",
    "current_attempt_of",
]


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


def _pick(cls: type, m: Mapping[Any, Any]) -> dict[str, Any]:
    """The dataclass's fields from a row; one with a default may be missing (a narrower
    select, a row built by hand)."""
    return {name: m[name] for name, required in _names(cls) if required or name in m}


@functools.cache
def _names(cls: type) -> tuple[tuple[str, bool], ...]:
    """(field name, required) of a row class, once per class (``fields`` is slow per row)."""
    return tuple((f.name, f.default is MISSING) for f in fields(cls))


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
    gpus: float  # reserved against the project's quota while the job is active
    owner: str | None = None  # the daemon that runs it, with several daemons (spotd.store.leases)
    # the newest checkpoint reported: attempt, synced (agent's clock), received (a daemon's)
    checkpoint_attempt: int | None = None
    checkpoint_synced_at: float | None = None
    checkpoint_received_at: float | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> JobRow:
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
    def from_mapping(cls, m: Mapping[Any, Any]) -> AttemptRow:
        return cls(
            **{
                **_pick(cls, m),
                "status": AttemptStatus(m["status"]),
                "market": Market(m["market"]),
                "end_reason": _opt(EndReason, m["end_reason"]),
            }
        )


def current_attempt_of(job: JobRow, attempts: Sequence[AttemptRow]) -> AttemptRow | None:
    """The attempt a job's status describes (``attempts`` in order): the one it runs on (the
    job's ``current_attempt``, not ended), else the one that ended last. Not simply the
    highest number: a DEADLINE job on on-demand that tried spot beside it has refused spot
    attempts numbered after the one it still runs on (``control.deadline``)."""
    for a in reversed(attempts):
        if a.attempt == job.current_attempt and a.ended_at is None:
            return a
    if not attempts:
        return None
    return max(attempts, key=lambda a: (math.inf if a.ended_at is None else a.ended_at, a.attempt))


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
    agent_json: str | None = None  # the config held for the bootstrap; None once used
    bootstrapped_at: float | None = None
    launched_at: float | None = None  # when the provider's id was recorded (set_instance_id)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> InstanceRow:
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
    daemon: str | None = None  # which daemon wrote it, with several daemons

    @property
    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.data_json or "{}")
        return loaded

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> EventRow:
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
    def from_mapping(cls, m: Mapping[Any, Any]) -> ZoneEventRow:
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
    project: str
    gpus: float  # reserved against the project's quota while the service is live
    owner: str | None = None  # the daemon that runs it, with several daemons

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> ServiceRow:
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
    def from_mapping(cls, m: Mapping[Any, Any]) -> ReplicaRow:
        return cls(
            **{
                **_pick(cls, m),
                "status": ReplicaStatus(m["status"]),
                "market": Market(m["market"]),
            }
        )


@dataclass(frozen=True, slots=True)
class ProjectRow:
    """A tenant and its limits; every limit None means unlimited."""

    name: str
    gpu_quota: float | None
    token_hash: str
    created_at: float
    max_jobs: int | None
    max_nodes_per_job: int | None
    max_services: int | None

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> ProjectRow:
        return cls(**_pick(cls, m))


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectUsage:
    """What a project holds now: its active jobs and live services, and the GPUs they reserve.

    Not a table: read from the job and service rows, in the transaction that admits the next
    one (see ``Store.create_job``).
    """

    gpus: float = 0.0  # reserved by active jobs and live services
    jobs: int = 0  # active jobs (not in a terminal status)
    gpu_jobs: int = 0  # ... of which reserve GPUs
    services: int = 0  # live services (neither DOWN nor FAILED)
    gpu_services: int = 0  # ... of which reserve GPUs
