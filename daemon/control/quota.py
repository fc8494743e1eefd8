"""Tenants: projects, their GPU quotas, and per-project API tokens.

A project is a name, an optional GPU quota and one API token. The daemon stores only the
token's SHA-256 (a leaked database does not leak tokens); the token itself is shown once, when
the project is created. On the TCP API a project token is a narrower key than the admin token:
it sees, launches and cancels only its own project's jobs, and reads only its own costs (see
``spotd.api.jobs``). Jobs launched without a project token belong to ``default`` (or to the
project the admin names), and ``default`` has no quota unless one is created for it.

The quota counts GPUs *reserved* by the project's active jobs (every job not in a terminal
state, queued ones included): ``num_nodes × accelerators per node``, taking the largest count
when a task accepts several shapes (``{A100:8, H100:4}`` reserves 8). Counting reservations,
not live instances, means a job between two attempts keeps its share: a preempted job never
loses its place to a newcomer. Example, quota 8: a job of ``A100:4`` × 1 is admitted (4 in
use), a second of ``A100:2`` × 2 is admitted (8), a third of ``T4:1`` is refused with "project
ml: GPU quota 8, 8 in use by 2 active jobs; this job asks for 1".
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from spotd.spec import Task

__all__ = [
    "DEFAULT_PROJECT",
    "QuotaRefusal",
    "check_quota",
    "gpus_of",
    "hash_token",
    "new_token",
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


def gpus_of(task: Task) -> float:
    """GPUs the task reserves: nodes × the largest accelerator count it accepts."""
    per_node = max((o.accelerator_count for o in task.resource_request().options), default=0.0)
    return float(per_node * task.num_nodes)


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    project: str
    quota: float
    in_use: float
    active_jobs: int
    requested: float

    @property
    def message(self) -> str:
        return (
            f"project {self.project}: GPU quota {_n(self.quota)}, {_n(self.in_use)} in use by "
            f"{self.active_jobs} active job{'s' if self.active_jobs != 1 else ''}; this job "
            f"asks for {_n(self.requested)}"
        )


def _n(x: float) -> str:
    return f"{x:g}"


def check_quota(
    *, project: str, quota: float | None, active: Iterable[float], requested: float
) -> QuotaRefusal | None:
    """Refuse when ``requested`` GPUs would take the project over its quota.

    ``active``: GPUs reserved by each active job of the project. ``quota`` None: unlimited.
    A job that asks for no GPU is never refused (the quota is of GPUs only).
    """
    if quota is None or requested <= 0:
        return None
    reserved = list(active)
    in_use = sum(reserved)
    if in_use + requested <= quota:
        return None
    return QuotaRefusal(
        project=project, quota=quota, in_use=in_use,
        active_jobs=sum(1 for g in reserved if g > 0), requested=requested,
    )
