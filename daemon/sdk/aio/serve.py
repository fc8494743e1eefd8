"""Services from Python, async: ``up``, ``status``, ``update``, ``down``, ``logs``.

The calls are ``spotd.sdk.client_serve``'s, the functions ``spotctl serve`` uses, over the one
API client, so the SDK and the CLI send the same requests. A daemon without the services API
(an older one, or one with services disabled) raises ``ServicesUnavailableError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from spotd.sdk import client_serve
from spotd.sdk.aio.jobs import lines_of, task_yaml
from spotd.sdk.connection import Connection, resolve
from spotd.sdk.errors import ApiError, NotFoundError, ServicesUnavailableError
from spotd.sdk.types import ServiceStatus
from spotd.spec import Task

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = ["down", "logs", "status", "up", "update"]

UpdateMode = Literal["rolling", "blue_green"]
UPDATE_MODES = ("rolling", "blue_green")


def _unavailable(exc: ApiError) -> ApiError:
    """A missing route (aiohttp's own bare 404) or a 503 means no services API here."""
    if (exc.status == 404 and exc.message == "Not Found") or exc.status == 503:
        return ServicesUnavailableError(
            exc.status,
            exc.message,
            exc.details,
            text=f"this spotd has no services API (/v1/services): {exc}",
        )
    return exc


async def _call(connection: Connection | None, call: Callable[[Client], Awaitable[Any]]) -> Any:
    try:
        async with resolve(connection).client() as c:
            return await call(c)
    except ApiError as exc:
        mapped = _unavailable(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def _filename(task: Task) -> str:
    return f"<sdk:{task.name or 'service'}>"


async def up(
    task: Task,
    name: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    connection: Connection | None = None,
) -> ServiceStatus:
    """Start a service from a task with a ``service:`` section; returns it as accepted
    (STARTING; ``endpoint`` is where to send requests). ``name`` defaults to the task's.
    ``ConflictError`` if the name is taken; ``InvalidTaskError`` /
    ``NoFeasiblePlacementError`` before anything starts."""
    text = task_yaml(task)
    data = await _call(
        connection,
        lambda c: client_serve.serve_up(
            c, text, filename=_filename(task), name=name, env=dict(env or {})
        ),
    )
    return ServiceStatus.from_json(data)


@overload
async def status(name: str, *, connection: Connection | None = None) -> ServiceStatus: ...


@overload
async def status(
    name: None = None, *, connection: Connection | None = None
) -> list[ServiceStatus]: ...


async def status(
    name: str | None = None, *, connection: Connection | None = None
) -> ServiceStatus | list[ServiceStatus]:
    """The named service (``NotFoundError`` if none), or every service that is not DOWN."""
    data = await _call(connection, lambda c: client_serve.serve_status(c, name))
    if name is None:
        return [ServiceStatus.from_json(s) for s in data]
    return ServiceStatus.from_json(data)


async def update(
    name: str,
    task: Task,
    *,
    mode: UpdateMode = "rolling",
    env: Mapping[str, str] | None = None,
    connection: Connection | None = None,
) -> ServiceStatus:
    """Move the service to a new version of its task: ``rolling`` (replicas replaced a few
    at a time) or ``blue_green`` (switch once the new version is ready)."""
    if mode not in UPDATE_MODES:
        raise ValueError(f"mode must be one of {', '.join(UPDATE_MODES)}, got {mode!r}")
    text = task_yaml(task)
    data = await _call(
        connection,
        lambda c: client_serve.serve_update(
            c, name, text, filename=_filename(task), mode=mode, env=dict(env or {})
        ),
    )
    return ServiceStatus.from_json(data)


async def down(name: str, *, connection: Connection | None = None) -> ServiceStatus:
    """Tear the service down (replicas drained and terminated, load balancer stopped);
    returns it SHUTTING_DOWN. Downing a service that is already going down is no error."""
    return ServiceStatus.from_json(
        await _call(connection, lambda c: client_serve.serve_down(c, name))
    )


async def logs(
    name: str,
    replica: int | None = None,
    *,
    lb: bool = False,
    follow: bool = False,
    connection: Connection | None = None,
) -> AsyncIterator[str]:
    """Log lines of the service's replicas (or one ``replica``, or its load balancer with
    ``lb=True``); ``follow=True`` keeps streaming."""
    try:
        async with resolve(connection).client() as c:
            chunks = client_serve.serve_logs(c, name, replica=replica, lb=lb, follow=follow)
            async for line in lines_of(chunks):
                yield line
    except NotFoundError as exc:
        mapped = _unavailable(exc)
        if mapped is exc:
            raise
        raise mapped from exc
