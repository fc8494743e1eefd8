"""Services from Python, blocking: ``up``, ``status``, ``update``, ``down``, ``logs``.

A thin wrapper over ``spotd.aio.serve`` (one private event loop per call). It is
``spotd.sdk.serve``, not ``spotd.serve``: that name is the package of the service internals
(``serve/``), which the layering keeps free of client code (``tests/test_layers.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import overload

from spotd.sdk import _sync
from spotd.sdk.aio import serve as _aio
from spotd.sdk.connection import Connection
from spotd.sdk.types import ServiceStatus
from spotd.spec import Task

__all__ = ["down", "logs", "status", "up", "update"]


def up(
    task: Task,
    name: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    connection: Connection | None = None,
) -> ServiceStatus:
    """Start a service; see ``spotd.aio.serve.up``."""
    return _sync.run("serve.up", lambda: _aio.up(task, name, env=env, connection=connection))


@overload
def status(name: str, *, connection: Connection | None = None) -> ServiceStatus: ...


@overload
def status(name: None = None, *, connection: Connection | None = None) -> list[ServiceStatus]: ...


def status(
    name: str | None = None, *, connection: Connection | None = None
) -> ServiceStatus | list[ServiceStatus]:
    """The named service, or every live service."""

    async def go() -> ServiceStatus | list[ServiceStatus]:
        if name is None:
            return await _aio.status(connection=connection)
        return await _aio.status(name, connection=connection)

    return _sync.run("serve.status", go)


def update(
    name: str,
    task: Task,
    *,
    mode: _aio.UpdateMode = "rolling",
    env: Mapping[str, str] | None = None,
    connection: Connection | None = None,
) -> ServiceStatus:
    """Move the service to a new version of its task; see ``spotd.aio.serve.update``."""
    return _sync.run(
        "serve.update",
        lambda: _aio.update(name, task, mode=mode, env=env, connection=connection),
    )


def down(name: str, *, connection: Connection | None = None) -> ServiceStatus:
    """Tear the service down; see ``spotd.aio.serve.down``."""
    return _sync.run("serve.down", lambda: _aio.down(name, connection=connection))


def logs(
    name: str,
    replica: int | None = None,
    *,
    lb: bool = False,
    follow: bool = False,
    connection: Connection | None = None,
) -> Iterator[str]:
    """Log lines of a service's replicas or load balancer; see ``spotd.aio.serve.logs``."""
    return _sync.iterate(
        "serve.logs",
        lambda: _aio.logs(name, replica, lb=lb, follow=follow, connection=connection),
    )
