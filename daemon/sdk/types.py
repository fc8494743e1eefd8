"""Typed results of the SDK: frozen records built from the daemon API's JSON.

The API's JSON (``spotd.api.jobs.job_json``) is the boundary; these records are what a caller
holds. ``from_json`` reads the keys it knows and ignores the rest, so a newer daemon that adds
a field does not break an older SDK. Timestamps are epoch seconds (``float``), as the API
sends them; durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spotd.types import AttemptStatus, EndReason, JobId, JobStatus

__all__ = ["Attempt", "Job", "JobHandle", "JobStatus", "Pace", "Replica", "ServiceStatus"]


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One placement of a job: where it ran, at what price, and why it ended."""

    attempt: int  # 1-based, in launch order
    id: str  # "j<job>-a<attempt>"
    status: AttemptStatus
    provider: str
    region: str
    zone: str
    instance_type: str
    market: str  # "spot" or "on-demand"
    price_per_hour: float | None
    num_nodes: int
    started_at: float | None
    ended_at: float | None
    end_reason: EndReason | None  # None while the attempt is live
    end_detail: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Attempt:
        return cls(
            attempt=int(d["attempt"]),
            id=str(d["id"]),
            status=AttemptStatus(d["status"]),
            provider=str(d.get("provider") or ""),
            region=str(d.get("region") or ""),
            zone=str(d.get("zone") or ""),
            instance_type=str(d.get("instance_type") or ""),
            market=str(d.get("market") or ""),
            price_per_hour=_opt_float(d.get("price_per_hour")),
            num_nodes=int(d.get("num_nodes") or 1),
            started_at=_opt_float(d.get("started_at")),
            ended_at=_opt_float(d.get("ended_at")),
            end_reason=EndReason(d["end_reason"]) if d.get("end_reason") else None,
            end_detail=_opt_str(d.get("end_detail")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pace:
    """A DEADLINE job against its uniform-progress line (work done by now, if the work were
    spread evenly from submission to the deadline)."""

    work_done_seconds: float
    expected_duration_seconds: float
    progress: float  # 0..1
    progress_from: str  # "checkpoint" (what the job wrote) or "wall time" (the fallback)
    ahead_of_line_seconds: float  # negative: behind the line
    slack_seconds: float  # time to the deadline beyond the remaining work

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pace:
        return cls(
            work_done_seconds=float(d["work_done_seconds"]),
            expected_duration_seconds=float(d["expected_duration_seconds"]),
            progress=float(d["progress"]),
            progress_from=str(d["progress_from"]),
            ahead_of_line_seconds=float(d["ahead_of_line_seconds"]),
            slack_seconds=float(d["slack_seconds"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A managed job as the daemon saw it when the SDK asked (a snapshot: ask again for news).

    ``provider``/``region``/``zone``/``market`` are those of the latest attempt.
    """

    id: JobId
    name: str
    status: JobStatus
    task_id: str | None
    resources: str  # a summary such as "1x A100:8 [spot]"
    project: str
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    duration: float | None
    recoveries: int
    preemptions: int
    user_restarts: int
    infra_failures: int
    message: str | None  # the last status message (why it failed, what it waits for)
    deadline: float | None
    provider: str | None
    region: str | None
    zone: str | None
    market: str | None
    attempts: tuple[Attempt, ...] = field(default=())
    pace: Pace | None = None  # DEADLINE jobs

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    @property
    def failed(self) -> bool:
        """Ended without succeeding and not by a cancel: what ``wait`` raises on."""
        return self.is_terminal and self.status not in (JobStatus.SUCCEEDED, JobStatus.CANCELLED)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        return cls(
            id=JobId(int(d["id"])),
            name=str(d.get("name") or ""),
            status=JobStatus(d["status"]),
            task_id=_opt_str(d.get("task_id")),
            resources=str(d.get("resources") or ""),
            project=str(d.get("project") or "default"),
            submitted_at=float(d.get("submitted_at") or 0.0),
            started_at=_opt_float(d.get("started_at")),
            ended_at=_opt_float(d.get("ended_at")),
            duration=_opt_float(d.get("duration")),
            recoveries=int(d.get("recoveries") or 0),
            preemptions=int(d.get("preemptions") or 0),
            user_restarts=int(d.get("user_restarts") or 0),
            infra_failures=int(d.get("infra_failures") or 0),
            message=_opt_str(d.get("message")),
            deadline=_opt_float(d.get("deadline")),
            provider=_opt_str(d.get("provider")),
            region=_opt_str(d.get("region")),
            zone=_opt_str(d.get("zone")),
            market=_opt_str(d.get("market")),
            attempts=tuple(Attempt.from_json(a) for a in d.get("attempts") or ()),
            pace=Pace.from_json(d["pace"]) if d.get("pace") else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobHandle:
    """What ``jobs.launch`` returns: the job's id and name, and its state when launch
    returned (just submitted with ``detach=True``; final with ``detach=False``)."""

    id: JobId
    name: str
    job: Job

    @property
    def status(self) -> JobStatus:
        return self.job.status


@dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    """One replica of a service (an entry of ``replicas`` in ``serve status -o json``)."""

    id: int  # 1-based within the service
    status: str  # PROVISIONING, STARTING, READY, NOT_READY, DRAINING, SHUTTING_DOWN, ...
    url: str | None  # where the load balancer sends requests; None until it listens
    version: int  # the service version it serves
    provider: str | None
    region: str | None
    zone: str | None
    market: str | None  # "spot" or "on-demand"
    instance_type: str | None
    price_per_hour: float | None
    message: str | None

    @property
    def ready(self) -> bool:
        return self.status == "READY"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Replica:
        return cls(
            id=int(d["id"]),
            status=str(d.get("status") or ""),
            url=_opt_str(d.get("url")),
            version=int(d.get("version") or 1),
            provider=_opt_str(d.get("provider")),
            region=_opt_str(d.get("region")),
            zone=_opt_str(d.get("zone")),
            market=_opt_str(d.get("market")),
            instance_type=_opt_str(d.get("instance_type")),
            price_per_hour=_opt_float(d.get("price_per_hour")),
            message=_opt_str(d.get("message")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStatus:
    """A service as the daemon saw it: state, where to send requests, its replicas.

    ``status``: STARTING, READY (a replica serves), NO_REPLICA, SHUTTING_DOWN, DOWN, FAILED.
    """

    name: str
    status: str
    endpoint: str | None  # the load balancer's URL: send requests here
    version: int
    ready_replicas: int
    min_replicas: int | None
    max_replicas: int | None
    price_per_hour: float | None  # of the live replicas together
    message: str | None
    replicas: tuple[Replica, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServiceStatus:
        replicas = tuple(Replica.from_json(r) for r in d.get("replicas") or ())
        ready = d.get("ready_replicas")
        return cls(
            name=str(d["name"]),
            status=str(d.get("status") or ""),
            endpoint=_opt_str(d.get("endpoint")),
            version=int(d.get("version") or 1),
            ready_replicas=int(ready) if ready is not None else sum(r.ready for r in replicas),
            min_replicas=None if d.get("min_replicas") is None else int(d["min_replicas"]),
            max_replicas=None if d.get("max_replicas") is None else int(d["max_replicas"]),
            price_per_hour=_opt_float(d.get("price_per_hour")),
            message=_opt_str(d.get("message")),
            replicas=replicas,
        )
