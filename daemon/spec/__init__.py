"""The task specification: pydantic models of SkyPilot-style task YAML, its value syntax,
bounded YAML loading and the errors a bad file gets.

Import from here; the modules inside are the package's own business.
"""

from __future__ import annotations

from spotd.spec.models import (
    JobRecovery,
    LoadBalancingPolicy,
    REDACTED,
    ReplicaPolicy,
    Resources,
    ServiceSpec,
    SpecError,
    SpecIssue,
    Task,
    check_file,
    load_task,
    load_tasks,
    parse_duration,
)

__all__ = [
    "JobRecovery",
    "LoadBalancingPolicy",
    "REDACTED",
    "ReplicaPolicy",
    "Resources",
    "ServiceSpec",
    "SpecError",
    "SpecIssue",
    "Task",
    "check_file",
    "load_task",
    "load_tasks",
    "parse_duration",
]
