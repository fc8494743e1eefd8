"""What every resource module of the API shares: the app's keys, the error type, body parsing.

State lives on ``web.AppKey``s set by ``spotd.api.app.make_app`` (and ``SERVICES`` by the
composition root): no module-level singletons. A handler refuses a request by raising
``ApiError``; the error middleware turns it into ``{"error": ..., "details": ...}`` with its
status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from spotd.config import Settings
from spotd.control.jobs import Controller
from spotd.control.services import ServiceController
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore

__all__ = [
    "CONTROLLER",
    "LAUNCH_LOCK",
    "METRICS",
    "PROJECT_SCOPE",
    "SERVICES",
    "SETTINGS",
    "STORE",
    "TCP_APP",
    "ApiError",
    "Body",
    "Handler",
    "flag",
    "json_error",
    "read_body",
    "scope",
]

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", AsyncStore)
CONTROLLER = web.AppKey("controller", Controller)
SERVICES = web.AppKey("services", ServiceController)  # set by the composition root
METRICS = web.AppKey("metrics", DaemonMetrics)
TCP_APP = web.AppKey("tcp", bool)
LAUNCH_LOCK = web.AppKey("launch_lock", asyncio.Lock)  # quota check + create, one at a time
# the project a TCP request's project token limits it to (absent: admin token or unix socket)
PROJECT_SCOPE = web.RequestKey("project_scope", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound="Body")


def json_error(status: int, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if details is not None:
        body["details"] = details
    return web.json_response(body, status=status)


class ApiError(Exception):
    """A request refused with ``status`` (a 4xx); ``details`` go to the client as they are."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class Body(BaseModel):
    """A JSON request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


async def read_body(request: web.Request, model: type[B]) -> B:
    """The request's JSON body as ``model``; a 400 naming each bad field otherwise."""
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        raise ApiError(400, "invalid request body", details) from exc


def scope(request: web.Request) -> str | None:
    """The project a project token limits this request to; None: the admin."""
    return request.get(PROJECT_SCOPE)


def flag(request: web.Request, key: str) -> bool:
    return request.query.get(key, "").lower() in ("1", "true", "yes")
