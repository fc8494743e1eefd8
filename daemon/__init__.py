"""spotd: managed jobs and services on spot capacity, and its Python SDK.

``import spotd`` is cheap: it imports nothing. The SDK's names are loaded on first use (module
``__getattr__``, PEP 562), so the daemon and ``spotctl``, which import ``spotd.<module>``
directly, never pay for them::

    import spotd

    task = spotd.Task(name="hello", run="echo hello")
    task.set_resources(spotd.Resources(cpus="1+", use_spot=True))
    handle = spotd.jobs.launch(task)
    print(spotd.jobs.wait(handle.id).status)

``Task``, ``Resources`` and ``Service`` are the very pydantic models ``spotctl`` validates task
YAML with (``spotd.spec``). ``spotd.jobs`` blocks; ``spotd.aio.jobs`` is its async twin. Services
are ``spotd.sdk.serve`` / ``spotd.aio.serve`` (``spotd.serve`` is the package of the service
internals, which may not import the SDK). Errors: see ``spotd.sdk.errors``.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spotd.errors import InvalidTaskError as InvalidTaskError
    from spotd.errors import SpotdError as SpotdError
    from spotd.sdk import aio as aio
    from spotd.sdk import jobs as jobs
    from spotd.sdk.connection import Connection as Connection
    from spotd.sdk.errors import ApiError as ApiError
    from spotd.sdk.errors import DaemonUnreachableError as DaemonUnreachableError
    from spotd.sdk.errors import JobFailedError as JobFailedError
    from spotd.sdk.errors import NoFeasiblePlacementError as NoFeasiblePlacementError
    from spotd.sdk.errors import NotFoundError as NotFoundError
    from spotd.sdk.errors import QuotaExceededError as QuotaExceededError
    from spotd.sdk.errors import WaitTimeoutError as WaitTimeoutError
    from spotd.sdk.types import Job as Job
    from spotd.sdk.types import JobHandle as JobHandle
    from spotd.sdk.types import ServiceStatus as ServiceStatus
    from spotd.spec import Resources as Resources
    from spotd.spec import ServiceSpec as Service
    from spotd.spec import Task as Task

_MODULES = MappingProxyType(
    {
        "jobs": "spotd.sdk.jobs",
        "aio": "spotd.sdk.aio",
    }
)
_NAMES = MappingProxyType(
    {
        "Task": ("spotd.spec", "Task"),
        "Resources": ("spotd.spec", "Resources"),
        "Service": ("spotd.spec", "ServiceSpec"),
        "Connection": ("spotd.sdk.connection", "Connection"),
        "Job": ("spotd.sdk.types", "Job"),
        "JobHandle": ("spotd.sdk.types", "JobHandle"),
        "ServiceStatus": ("spotd.sdk.types", "ServiceStatus"),
        "SpotdError": ("spotd.errors", "SpotdError"),
        "InvalidTaskError": ("spotd.errors", "InvalidTaskError"),
        **{
            name: ("spotd.sdk.errors", name)
            for name in (
                "ApiError",
                "DaemonUnreachableError",
                "JobFailedError",
                "NoFeasiblePlacementError",
                "NotFoundError",
                "QuotaExceededError",
                "WaitTimeoutError",
            )
        },
    }
)

__all__ = [
    "ApiError",
    "Connection",
    "DaemonUnreachableError",
    "InvalidTaskError",
    "Job",
    "JobFailedError",
    "JobHandle",
    "NoFeasiblePlacementError",
    "NotFoundError",
    "QuotaExceededError",
    "Resources",
    "Service",
    "ServiceStatus",
    "SpotdError",
    "Task",
    "WaitTimeoutError",
    "aio",
    "jobs",
]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _NAMES:
        module, attr = _NAMES[name]
        value = getattr(importlib.import_module(module), attr)
    else:
        # also the path by which `from spotd import <submodule>` falls back to importing it
        raise AttributeError(f"module 'spotd' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
