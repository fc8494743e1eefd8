"""Tenants: projects, their limits, and per-project API tokens.

A project is a name, one API token and optional limits: a GPU quota, active jobs at once,
nodes per job, live services at once (None: unlimited). The daemon stores only the token's
SHA-256 (a leaked database does not leak tokens); the token itself is shown once, when the
project is created. On the TCP API a project token is a narrower key than the admin token: it
sees, launches and cancels only its own project's jobs, and reads only its own costs (see
``spotd.api.jobs``). Jobs launched without a project token belong to ``default`` (or to the
project the admin names), and ``default`` has no limits unless a project of that name is
created.

The GPU quota counts GPUs *reserved* by the project's active jobs (every job not in a terminal
state, queued ones included) and live services, each reservation written with its row when it
was admitted (:func:`job_gpus`, :func:`service_gpus`). Counting reservations, not live
instances, means a job between two attempts keeps its share: a preempted job never loses its
place to a newcomer. Example, quota 8: a job of ``A100:4`` × 1 is admitted (4 in use), a second
of ``A100:2`` × 2 is admitted (8), a third of ``T4:1`` is refused with "project ml: GPU quota 8,
8 in use by 2 active jobs; this job asks for 1".

The decision is :func:`admit`, a pure function of the project's row, what it holds and what
the newcomer asks; the store runs it inside the transaction that inserts the newcomer
(``Store.create_job``), through :func:`job_admission` / :func:`service_admission`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from spotd.pricing.catalog import real_capacity
from spotd.recovery import placement
from spotd.spec import Task
from spotd.store import Admit, OverQuota, ProjectRow, ProjectUsage
from spotd.types import CatalogEntry, ResourceOption, ResourceRequest

__all__ = [
    "DEFAULT_PROJECT",
    "Ask",
    "Limit",
    "QuotaRefusal",
    "admit",
    "check_quota",
    "hash_token",
    "job_admission",
    "job_gpus",
    "new_token",
    "service_admission",
    "service_gpus",
    "service_reservation",
    "validate_name",
]

DEFAULT_PROJECT = "default"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
TOKEN_PREFIX = "spotdp_"  # recognisable in a secret scanner, and never an admin token


def validate_name(name: str) -> str | None:
    """Why ``name`` cannot be a project name, or None if it can."""
    if not _NAME.match(name):
        return (
            f"project name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- what a newcomer reserves ------------------------------------------------------------


def _gpus_per_node(request: ResourceRequest, catalog: Sequence[CatalogEntry]) -> float:
    both_markets = (
        dataclasses.replace(request, options=tuple(_market(o, spot) for o in request.options))
        for spot in (True, False)
    )
    return max(
        (c.accelerator_count for r in both_markets for c in placement.candidates(r, catalog)),
        default=0.0,
    )


def _market(option: ResourceOption, spot: bool) -> ResourceOption:
    return dataclasses.replace(option, use_spot=spot)


def job_gpus(request: ResourceRequest, catalog: Sequence[CatalogEntry], *, num_nodes: int) -> float:
    """GPUs a job reserves: the most that any placement it may ever be given has, × nodes.

    Counted from the catalog's instance types, not from ``accelerators:`` alone, so a task
    that names ``instance_type: p4d.24xlarge`` (or ``sim-a100-8``) reserves its 8 GPUs per
    node, and one that names ``cpus: 4+`` reserves none. The plan's first candidate is where
    the first attempt goes, but a preemption may relaunch the job on any other candidate, in
    either market (the DEADLINE strategy moves spot jobs to on-demand); reserving only the
    first one would let a job grow past the quota on its second attempt. So the reservation
    is the maximum over all of them. Example, ``any_of: [{accelerators: A100:1},
    {accelerators: A100:8}]`` on 2 nodes: the cheapest placement is 2 × ``sim-a100-1``, but a
    relaunch may take 2 × ``sim-a100-8``: it reserves 16. ``catalog``: what the job may be
    placed on (``spotd.pricing.catalog.real_capacity``).
    """
    return _gpus_per_node(request, catalog) * num_nodes


def service_gpus(
    request: ResourceRequest, catalog: Sequence[CatalogEntry], *, max_replicas: int
) -> float:
    """GPUs a service reserves: its largest replica count × the most one replica may have
    (as :func:`job_gpus`; a replica is one node). Example: ``replica_policy: {min_replicas:
    1, max_replicas: 3}`` of ``L4:1`` reserves 3, though the autoscaler may run one."""
    return _gpus_per_node(request, catalog) * max_replicas


def service_reservation(
    task: Task, catalog: Sequence[CatalogEntry], *, enabled_providers: Collection[str]
) -> float:
    """:func:`service_gpus` of a task with ``service:``, on the capacity its replicas may use
    (``real_capacity``), for as many replicas as it may run: the policy's upper bound plus
    its over-provisioned ones."""
    if task.service is None:
        raise ValueError("not a service: the task has no `service:` section")
    policy = task.service.policy()
    request = task.resource_request()
    usable = real_capacity(catalog, request=request, enabled_providers=enabled_providers)
    return service_gpus(request, usable, max_replicas=policy.upper + policy.num_overprovision)


# -- the decision ------------------------------------------------------------------------


class Limit(enum.StrEnum):
    GPUS = "gpu_quota"
    JOBS = "max_jobs"
    NODES = "max_nodes_per_job"
    SERVICES = "max_services"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ask:
    """What a newcomer asks of its project: a job (``nodes``) or a service."""

    gpus: float
    nodes: int = 1
    service: bool = False

    @property
    def what(self) -> str:
        return "service" if self.service else "job"


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    project: str
    quota: float
    in_use: float
    active_jobs: int
    requested: float
    limit: Limit = Limit.GPUS
    services: int = 0  # live services holding what is counted
    what: str = "job"

    @property
    def message(self) -> str:
        p, q, used, asked = self.project, _n(self.quota), _n(self.in_use), _n(self.requested)
        if self.limit is Limit.JOBS:
            return f"project {p}: at most {q} active jobs, {used} active; this job would exceed it"
        if self.limit is Limit.NODES:
            return f"project {p}: at most {q} nodes per job; this job asks for {asked}"
        if self.limit is Limit.SERVICES:
            return (
                f"project {p}: at most {q} live services, {used} live; this service would exceed it"
            )
        holders = _plural(self.active_jobs, "active job")
        if self.services:
            holders += f" and {_plural(self.services, 'service')}"
        return (
            f"project {p}: GPU quota {q}, {used} in use by {holders}; "
            f"this {self.what} asks for {asked}"
        )

    @property
    def details(self) -> dict[str, Any]:
        if self.limit is Limit.GPUS:
            return {
                "project": self.project,
                "limit": str(self.limit),
                "gpu_quota": self.quota,
                "gpus_in_use": self.in_use,
                "active_jobs": self.active_jobs,
                "gpus_requested": self.requested,
            }
        return {
            "project": self.project,
            "limit": str(self.limit),
            "quota": self.quota,
            "in_use": self.in_use,
            "requested": self.requested,
        }


def _n(x: float) -> str:
    return f"{x:g}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def check_quota(
    *, project: str, quota: float | None, active: Iterable[float], requested: float
) -> QuotaRefusal | None:
    """Refuse when ``requested`` GPUs would take the project over its GPU quota.

    ``active``: GPUs reserved by each active job of the project. ``quota`` None: unlimited.
    A job that asks for no GPU is never refused by the GPU quota.
    """
    reserved = list(active)
    return _gpus(
        project=project,
        quota=quota,
        usage=ProjectUsage(gpus=sum(reserved), gpu_jobs=sum(1 for g in reserved if g > 0)),
        ask=Ask(gpus=requested),
    )


def _gpus(
    *, project: str, quota: float | None, usage: ProjectUsage, ask: Ask
) -> QuotaRefusal | None:
    if quota is None or ask.gpus <= 0 or usage.gpus + ask.gpus <= quota:
        return None
    return QuotaRefusal(
        project=project,
        quota=quota,
        in_use=usage.gpus,
        active_jobs=usage.gpu_jobs,
        requested=ask.gpus,
        services=usage.gpu_services,
        what=ask.what,
    )


def admit(project: ProjectRow | None, usage: ProjectUsage, ask: Ask) -> QuotaRefusal | None:
    """Whether a project that holds ``usage`` may take the newcomer ``ask``; None: it may.

    The limits, checked in this order (the first one broken is the answer): nodes per job,
    active jobs (or live services, for a service), GPUs. A project without a row has no
    limits. Example, ``max_jobs: 2, max_nodes_per_job: 4, gpu_quota: 8`` holding one job of 4
    GPUs: a CPU job of 8 nodes is refused (nodes), a CPU job of 1 node is admitted (2 jobs), a
    third job is then refused (jobs) whatever it asks.
    """
    if project is None:
        return None
    name = project.name

    def over(limit: Limit, quota: float, in_use: float, requested: float) -> QuotaRefusal:
        return QuotaRefusal(
            project=name,
            quota=quota,
            in_use=in_use,
            active_jobs=usage.jobs,
            requested=requested,
            limit=limit,
            what=ask.what,
        )

    if ask.service:
        cap = project.max_services
        if cap is not None and usage.services + 1 > cap:
            return over(Limit.SERVICES, cap, usage.services, 1)
    else:
        if project.max_nodes_per_job is not None and ask.nodes > project.max_nodes_per_job:
            return over(Limit.NODES, project.max_nodes_per_job, 0, ask.nodes)
        if project.max_jobs is not None and usage.jobs + 1 > project.max_jobs:
            return over(Limit.JOBS, project.max_jobs, usage.jobs, 1)
    return _gpus(project=name, quota=project.gpu_quota, usage=usage, ask=ask)


def _admission(ask: Ask) -> Admit:
    def decide(project: ProjectRow | None, usage: ProjectUsage) -> OverQuota | None:
        refusal = admit(project, usage, ask)
        return None if refusal is None else OverQuota(refusal.message, refusal.details)

    return decide


def job_admission(*, gpus: float, nodes: int) -> Admit:
    """The ``admit`` that ``Store.create_job`` runs for a job."""
    return _admission(Ask(gpus=gpus, nodes=nodes))


def service_admission(*, gpus: float) -> Admit:
    """The ``admit`` that ``Store.create_service`` runs for a service."""
    return _admission(Ask(gpus=gpus, service=True))
