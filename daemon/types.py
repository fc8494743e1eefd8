"""Shared vocabulary of spotd: ids, enums and frozen records.

Everything here is plain data. ``recovery``, ``serve`` and ``lb`` may import this module (and
nothing else from the daemon), so it must stay free of I/O and of heavy imports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

JobId = NewType("JobId", int)
AttemptId = NewType("AttemptId", str)  # "j<job>-a<attempt>", stable and human readable
InstanceId = NewType("InstanceId", str)  # provider-assigned id
TaskId = NewType("TaskId", str)  # stable across recoveries of one job (SKYPILOT_TASK_ID)


class Market(enum.StrEnum):
    SPOT = "spot"  # preemptible capacity, cheaper, may vanish with or without notice
    ON_DEMAND = "on-demand"  # reliable capacity at list price


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"  # accepted and stored; no attempt placed yet
    STARTING = "STARTING"  # an attempt is being provisioned or is running setup
    RUNNING = "RUNNING"  # the user's run command is executing on every node
    RECOVERING = "RECOVERING"  # the last attempt was lost; a new placement is being sought
    SUCCEEDED = "SUCCEEDED"  # run exited 0 on every node
    FAILED = "FAILED"  # run exited non-zero and no restart is left
    FAILED_SETUP = "FAILED_SETUP"  # setup exited non-zero (never retried: the task is wrong)
    FAILED_NO_RESOURCE = "FAILED_NO_RESOURCE"  # no placement was possible before give_up_after
    FAILED_CONTROLLER = "FAILED_CONTROLLER"  # spotd itself could not continue the job
    CANCELLING = "CANCELLING"  # the user cancelled; instances are being terminated
    CANCELLED = "CANCELLED"  # cancelled and every instance is gone

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.FAILED_SETUP,
        JobStatus.FAILED_NO_RESOURCE,
        JobStatus.FAILED_CONTROLLER,
        JobStatus.CANCELLED,
    }
)


class AttemptStatus(enum.StrEnum):
    PROVISIONING = "PROVISIONING"  # intent written; instances being created
    SETTING_UP = "SETTING_UP"  # instances up; agents running setup
    RUNNING = "RUNNING"  # agents running the user's run command
    ENDED = "ENDED"  # over; see EndReason


class EndReason(enum.StrEnum):
    SUCCEEDED = "SUCCEEDED"  # run exited 0 on every node
    USER_FAILED = "USER_FAILED"  # run exited non-zero on an instance that was alive
    SETUP_FAILED = "SETUP_FAILED"  # setup exited non-zero
    PREEMPTED = "PREEMPTED"  # the provider took the capacity back (evidence in the event)
    LOST = "LOST"  # heartbeats gone past the lost timeout with no provider answer
    LAUNCH_FAILED = "LAUNCH_FAILED"  # the provider refused to create the instances
    INFRA_FAILED = "INFRA_FAILED"  # the instance failed for a reason that is not the user's
    CANCELLED = "CANCELLED"  # the user cancelled the job
    MIGRATED = "MIGRATED"  # spotd moved the job on purpose (to on-demand, to meet a deadline)


class InstanceState(enum.StrEnum):
    PENDING = "PENDING"  # requested, not yet running
    RUNNING = "RUNNING"  # alive as far as the provider knows
    NOTICE = "NOTICE"  # alive, but the provider announced it will be reclaimed
    PREEMPTED = "PREEMPTED"  # reclaimed by the provider
    TERMINATED = "TERMINATED"  # gone for another reason (we terminated it, it exited)


# an agent's phases after which it runs nothing more on its instance: its run exited, its
# setup failed, or it saw its instance preempted (reported by its heartbeat)
FINAL_PHASES = frozenset({"exited", "setup_failed", "preempted"})


class RecoveryStrategy(enum.StrEnum):
    EAGER_NEXT_REGION = "EAGER_NEXT_REGION"  # block the preempted zone and region, go elsewhere
    FAILOVER = "FAILOVER"  # retry the same region first, then the others
    DEADLINE = "DEADLINE"  # finish by a deadline at least cost (Uniform Progress)


class ZoneEventKind(enum.StrEnum):
    """What happened in a zone: the one vocabulary of the job controller's placement
    (``recovery.history``), the replica planner (``serve.hedge``) and the store's zone-event
    table, which keeps the values. The job controller (for attempts) and the replica executor
    (for replicas) write the same kinds for the same happenings, so each learns from the
    other's events.

    A launch the provider refused is stored as ``"STOCKOUT"`` (its spelling since the first
    schema, which existing rows keep), although any refusal counts: capacity, quota, a bad
    request — the name says what the controllers actually saw.
    """

    PREEMPTED = "PREEMPTED"  # an instance there was taken back (notice, provider, lost)
    LAUNCH_FAILED = "STOCKOUT"  # the provider refused a launch there (any ProviderError)
    LAUNCHED = "LAUNCHED"  # a launch there came up: a job's run started, a replica got READY
    RAN = "RAN"  # a spot instance there ran ``seconds`` and then ended (any reason)


@dataclass(frozen=True, slots=True)
class ZoneKey:
    """One failure domain: a zone of a region of a provider."""

    provider: str
    region: str
    zone: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.region}/{self.zone}"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One instance type offered in one zone, with its prices in USD per hour.

    ``spot_price`` is None where the zone sells no spot capacity of that type.
    """

    provider: str
    region: str
    zone: str
    instance_type: str
    vcpus: float
    memory_gb: float
    accelerator: str | None  # model name, e.g. "A100"; None for CPU-only types
    accelerator_count: float
    ondemand_price: float
    spot_price: float | None

    @property
    def zone_key(self) -> ZoneKey:
        return ZoneKey(self.provider, self.region, self.zone)


@dataclass(frozen=True, slots=True)
class ResourceOption:
    """One acceptable shape of machine, already normalised from the YAML.

    ``cpus``/``memory_gb`` are minimums when the matching ``*_plus`` flag is set, exact
    otherwise. ``memory_per_cpu`` carries SkyPilot's ``"4x"`` form (GiB per vCPU, minimum).
    """

    provider: str | None = None
    region: str | None = None
    zone: str | None = None
    accelerator: str | None = None
    accelerator_count: float = 0
    cpus: float | None = None
    cpus_plus: bool = True
    memory_gb: float | None = None
    memory_plus: bool = True
    memory_per_cpu: float | None = None
    instance_type: str | None = None
    use_spot: bool = False
    max_hourly_cost: float | None = None


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """What a task asks for: several options, either ordered preference or any-of."""

    options: tuple[ResourceOption, ...]
    ordered: bool = False  # True: earlier options win; False: the cheapest option wins


@dataclass(frozen=True, slots=True)
class Candidate:
    """One feasible placement, as returned by the optimizer."""

    provider: str
    region: str
    zone: str
    instance_type: str
    market: Market
    price_per_hour: float  # list price of one node in this market
    expected_cost: float  # ranking key: price weighted by the zone's preemption risk
    accelerator: str | None = None
    accelerator_count: float = 0
    option_index: int = 0  # which ResourceOption it satisfies (for ordered preference)

    @property
    def zone_key(self) -> ZoneKey:
        return ZoneKey(self.provider, self.region, self.zone)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What an agent needs to run one node of one attempt. Serialised to JSON for the agent."""

    instance_key: str  # idempotency key, e.g. "j3-a2-n0"
    attempt_id: str
    job_id: int
    task_id: str
    attempt: int
    node_rank: int
    num_nodes: int
    setup: str | None
    run: str | None
    envs: dict[str, str] = field(default_factory=dict)
    secret_names: tuple[str, ...] = ()
    num_gpus_per_node: float = 0
    daemon_url: str = ""  # "unix:/path/to/sock", "http://host:port" or "https://host:port"
    # The CA that signed the daemon's TLS certificate (public PEM text, not a secret): with an
    # https daemon_url the agent trusts this CA only; "" = the system's trust store.
    daemon_ca_pem: str = ""
    token: str = ""  # per-instance bearer token for the agent API
    checkpoint_store: str = ""  # where checkpoints outlive instances (dir or s3:// URL)
    checkpoint_sync_seconds: float = 30.0
    heartbeat_seconds: float = 0.5
    term_grace_seconds: float = 10.0
    workdir: str | None = None  # a directory to copy into the working directory
    notice_url: str = ""  # cloud metadata base URL to poll for a notice; "" = local notice file
    instance_dir: str = ""  # where the agent keeps its files on the instance
    blob_store: str = ""  # content-addressed store holding workdir/file_mounts packages
    file_mounts: dict[str, str] = field(default_factory=dict)  # remote path -> "cas:<sha>" or s3://
    s3_endpoint_url: str = ""  # S3 endpoint for s3:// mounts and packages ("" = standard chain)
    await_final_from: int = 0  # attempt still checkpointing after a notice (0: none)
    await_final_until: float = 0.0  # ...and its notice deadline: wait no longer than this
