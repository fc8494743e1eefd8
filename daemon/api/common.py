"""What every resource module of the API shares: the app's keys, the error type, body parsing.

State lives on ``web.AppKey``s set by ``spotd.api.app.make_app`` (and ``SERVICES`` by the
composition root): no module-level singletons. A handler refuses a request by raising
``ApiError``; the error middleware turns it into ``{"error": ..., "details": ...}`` with its
status.

Bodies are ``Body`` models, read strictly: unknown fields, a string where a number belongs,
``NaN``/``Infinity`` (which Python's ``json`` accepts, and JSON does not) and numbers that only
overflow to infinity (``1e999``) are all a 400 naming the field, before a handler sees them.
Path and query parameters are parsed by ``spotd.api.params``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import pydantic_core
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from spotd.config import Settings
from spotd.control.jobs import Controller
from spotd.control.services import ServiceController
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore

__all__ = [
    "CONTROLLER",
    "MAX_EPOCH",
    "METRICS",
    "PROJECT_SCOPE",
    "SERVICES",
    "SETTINGS",
    "STORE",
    "TCP_APP",
    "ApiError",
    "Body",
    "EpochSeconds",
    "Handler",
    "LineText",
    "PathText",
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
# the project a TCP request's project token limits it to (absent: admin token or unix socket)
PROJECT_SCOPE = web.RequestKey("project_scope", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound="Body")

# A moment as unix seconds: finite, and before the year 5138 (far past any real deadline, far
# below where datetime and the database stop coping).
MAX_EPOCH = 1e11
EpochSeconds = Annotated[float, Field(ge=0, le=MAX_EPOCH)]
# A path on the daemon host or the client's: bounded, and no NUL (the OS refuses it).
PathText = Annotated[str, StringConstraints(max_length=4096, pattern=r"^[^\x00]*$")]
# A name or a short message: one line of printable text.
LineText = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


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
    """A JSON request body, read strictly: unknown fields are an error, not silently dropped;
    types are not coerced (``"5"`` is not a number, ``1`` not a boolean); floats are finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _first_non_finite(value: Any) -> str | None:
    """Where in a parsed JSON document a number overflowed to inf (``1e999``), or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return where or "(the body)"
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{where}.{i}" if where else str(i), x) for i, x in enumerate(v))
    return None


async def read_body(request: web.Request, model: type[B]) -> B:
    """The request's JSON body as ``model``; a 400 naming each bad field otherwise."""
    raw = await request.read()
    try:
        # pydantic's parser: refuses NaN/Infinity, lone surrogates and bytes that are not UTF-8
        data = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    where = _first_non_finite(data)
    if where is not None:
        raise ApiError(400, f"request body: the number at {where} is too large")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        raise ApiError(400, "invalid request body", details) from exc


def scope(request: web.Request) -> str | None:
    """The project a project token limits this request to; None: the admin."""
    return request.get(PROJECT_SCOPE)
