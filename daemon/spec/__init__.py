"""The task YAML: SkyPilot's format, parsed into typed, frozen pydantic models.

A task file is what users already have from SkyPilot, so spotd reads that format as it is
(``resources``, ``envs``, ``file_mounts``, ``setup``, ``run``, ``service``, ``job_recovery``,
several ``---`` documents for a pipeline) and says clearly what it does not do: a SkyPilot key
spotd has no use for (``volumes``, ``resources.autostop``, ``accelerator_args``) is an error that
says "not supported by spotd", never a silent no-op and never a traceback.

Errors are for humans fixing a file, so each one names the key path *and* the line, and all of
them are reported at once::

    train.yaml:3: resources.acclerators: unknown key; did you mean `accelerators`?
    train.yaml:4: resources.memory: memory is GiB: 32 (exactly) or 32+ (at least), ...

The modules, from the bottom up (each imports only those above it in this list):

- ``errors``: ``SpecError`` (all the issues of a file) and ``SpecIssue``;
- ``values``: the small syntaxes inside scalars (``A100:8``, ``4+``, ``6h``, ``aws/us-east-1``);
- ``documents``: YAML composed with the line of every key path, within ``YamlLimits``;
- ``issues``: pydantic's errors turned into issues with the user's key paths and phrases;
- ``fields``: the models' base class and shared validators;
- ``resources``, ``service``, ``job_recovery``, ``pool``: the sections of a task;
- ``load``: text -> documents -> validated models, all issues at once;
- ``task``: ``Task``, the document as a whole (envs, secrets, file mounts, the YAML dump);
- ``check``: ``load_tasks``, ``load_task``, ``check_file``, ``review_file`` (``spotctl
  check``'s: notes and warnings for what is due or unsupported at launch), and
  ``load_tasks_bounded`` (the daemon's: off the event loop, with a time limit).

Import from here; the modules inside are the package's own business.
"""

from __future__ import annotations

from spotd.spec.check import (
    LOAD_TIMEOUT_S,
    Review,
    check_file,
    load_task,
    load_tasks,
    load_tasks_bounded,
    review_file,
)
from spotd.spec.documents import DEFAULT_LIMITS, YamlLimits
from spotd.spec.errors import SpecError, SpecIssue
from spotd.spec.job_recovery import JobRecovery
from spotd.spec.resources import Resources
from spotd.spec.service import LoadBalancingPolicy, ReplicaPolicy, ServiceSpec
from spotd.spec.task import REDACTED, Task
from spotd.spec.values import parse_duration

__all__ = [
    "DEFAULT_LIMITS",
    "LOAD_TIMEOUT_S",
    "REDACTED",
    "JobRecovery",
    "LoadBalancingPolicy",
    "ReplicaPolicy",
    "Resources",
    "Review",
    "ServiceSpec",
    "SpecError",
    "SpecIssue",
    "Task",
    "YamlLimits",
    "check_file",
    "load_task",
    "load_tasks",
    "load_tasks_bounded",
    "parse_duration",
    "review_file",
]
