"""Services from Python, async: ``up``, ``status``, ``update``, ``down``.

They call the daemon's services API (``/v1/services``, ``spotd.api_serve``) through the one
client, exactly as ``spotctl serve`` does. A daemon without that API (older, or one with
services disabled) answers with ``ServicesUnavailableError``.
"""

from __future__ import annotations

import os
from typing import Any, Literal, overload
from urllib.parse import quote

from spotd.sdk.aio.jobs import task_yaml
from spotd.sdk.connection import Connection, resolve
from spotd.sdk.errors import ApiError, NotFoundError, ServicesUnavailableError
from spotd.sdk.types import ServiceStatus
from spotd.spec import Task

__all__ = ["down", "status", "up", "update"]

UpdateMode = Literal["rolling", "blue_green"]
UPDATE_MODES = ("rolling", "blue_green")


def _path(name: str, suffix: str = "") -> str:
    return f"/v1/services/{quote(name, safe='')}{suffix}"


async def _call(connection: Connection | None, method: str, path: str, **kw: Any) -> Any:
    try:
        async with resolve(connection).client() as c:
            return await c.request(method, path, **kw)
    except NotFoundError as exc:
        if exc.message == "Not Found":  # the route itself is missing (aiohttp's own 404)
            raise ServicesUnavailableError(
                exc.status, exc.message, text="this spotd has no services API (/v1/services)"
            ) from exc
        raise
    except ApiError as exc:
        if exc.status == 503:
            raise ServicesUnavailableError(exc.status, exc.message, exc.details,
                                           text=str(exc)) from exc
        raise


def _body(task: Task, **extra: Any) -> dict[str, Any]:
    return {
        "yaml": task_yaml(task),
        "filename": f"<sdk:{task.name or 'service'}>",
        "base_dir": os.getcwd(),  # a relative workdir means the caller's
        **extra,
    }


async def up(
    task: Task, name: str | None = None, *, connection: Connection | None = None
) -> ServiceStatus:
    """Start a service from a task with a ``service:`` section; returns it just accepted
    (STARTING). ``name`` defaults to the task's name. ``ConflictError`` if the name is
    taken; ``InvalidTaskError``/``NoFeasiblePlacementError`` before anything starts."""
    body = _body(task, **({"name": name} if name else {}))
    return ServiceStatus.from_json(await _call(connection, "POST", "/v1/services", json=body))


@overload
async def status(name: str, *, connection: Connection | None = None) -> ServiceStatus: ...


@overload
async def status(
    name: None = None, *, connection: Connection | None = None
) -> list[ServiceStatus]: ...


async def status(
    name: str | None = None, *, connection: Connection | None = None
) -> ServiceStatus | list[ServiceStatus]:
    """The named service (``NotFoundError`` if none), or every live service."""
    if name is None:
        rows = await _call(connection, "GET", "/v1/services")
        return [ServiceStatus.from_json(r) for r in rows]
    return ServiceStatus.from_json(await _call(connection, "GET", _path(name)))


async def update(
    name: str,
    task: Task,
    *,
    mode: UpdateMode = "rolling",
    connection: Connection | None = None,
) -> ServiceStatus:
    """Move the service to a new version of its task: ``rolling`` (replace replicas a few at
    a time) or ``blue_green`` (switch once the new version is ready)."""
    if mode not in UPDATE_MODES:
        raise ValueError(f"mode must be one of {', '.join(UPDATE_MODES)}, got {mode!r}")
    body = _body(task, mode=mode)
    return ServiceStatus.from_json(
        await _call(connection, "POST", _path(name, "/update"), json=body)
    )


async def down(name: str, *, connection: Connection | None = None) -> ServiceStatus:
    """Tear the service down (replicas drained and terminated, load balancer stopped);
    returns it SHUTTING_DOWN. Downing a service that is already down is not an error."""
    return ServiceStatus.from_json(await _call(connection, "POST", _path(name, "/down")))
