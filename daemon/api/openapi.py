"""``GET /v1/openapi.json``: the API described as OpenAPI 3.1, built from the route table.

Nothing here is written by hand per route: paths and methods, parameters (``spotd.api.params``
describes each as it parses it), request bodies (the ``Body`` models' JSON Schema, their
``$defs`` hoisted into ``components.schemas``), who may call (``x-spotd-callers``), and the
answers: the success status and every refusal, which all have the error middleware's shape
``{"error": message, "details": anything}``. ``make_app`` registers the same table, so the
document cannot drift from the routes; CI fuzzes every operation in it (schemathesis).
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from importlib import metadata
from typing import Any

from aiohttp import web

from spotd.api.common import Body
from spotd.api.routes import TENANT, Caller, Route

__all__ = ["OPENAPI", "ROUTES", "document"]

OPENAPI = web.AppKey("openapi", dict)  # the document make_app built from its table

_REF = "#/components/schemas/{model}"


def error_schema() -> dict[str, Any]:
    """The shape of every refusal, a new dict each time (each document owns its own)."""
    return {
        "type": "object",
        "description": "Every refusal (4xx) and every bug (500): a message, and details if any "
        "(for a bad body: a list of {field, message}; for bad task YAML: {path, line, message}).",
        "properties": {"error": {"type": "string"}, "details": {}},
        "required": ["error"],
    }


_DESCRIPTION = """\
The spotd daemon's API. On the unix socket (mode 0600) every caller is the admin. On TCP each
request carries `Authorization: Bearer <token>`: the admin token (the config's `api_token`) may
call every route; a project's token only the routes whose `x-spotd-callers` include `project`,
and sees only its project's jobs; agents' routes (`x-spotd-callers: [agent]`) take no API
token, only the instance's own agent token.
"""


def _version() -> str:
    try:
        return metadata.version("spotd")
    except metadata.PackageNotFoundError:  # a source tree that was not installed
        return "0"


def _model_schemas(model: type[Body]) -> dict[str, dict[str, Any]]:
    """The model's schema and the schemas it refers to, each under its own name."""
    schema = model.model_json_schema(ref_template=_REF)
    defs: dict[str, dict[str, Any]] = schema.pop("$defs", {})
    return {model.__name__: schema, **defs}


def _answer(description: str, content: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if content is not None:
        out["content"] = content
    return out


def _responses(route: Route) -> dict[str, Any]:
    ok = (
        {"text/plain": {"schema": {"type": "string"}}}
        if route.text
        else {"application/json": {"schema": {}}}
    )
    out: dict[str, Any] = {str(s): _answer(HTTPStatus(s).phrase, ok) for s in route.ok}
    refusals = set(route.errors)
    if route.body is not None or route.params:
        refusals.add(400)
    if route.body is not None:
        refusals.add(413)  # larger than the app's client_max_size
    refusals.add(401)  # TCP: no or a wrong token (agents: a wrong agent token)
    if route.callers != frozenset({Caller.AGENT}):
        refusals.add(403)  # TCP: a project token on an admin route
    error = {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}
    for status in sorted(refusals):
        out[str(status)] = _answer(HTTPStatus(status).phrase, error)
    return out


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "x-spotd-callers": sorted(route.callers),
        "security": [] if route.callers == frozenset({Caller.AGENT}) else [{"bearer": []}],
        "responses": _responses(route),
    }
    if route.handler.__doc__:
        op["description"] = " ".join(route.handler.__doc__.split())
    if route.params:
        op["parameters"] = [p.openapi() for p in route.params]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=route.body.__name__)}}
            },
        }
    return op


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI document of ``routes``; raises ``ValueError`` if two routes share a method
    and path, or two models a name with different schemas."""
    schemas: dict[str, dict[str, Any]] = {"Error": error_schema()}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        ops = paths.setdefault(route.path, {})
        if route.method.lower() in ops:
            raise ValueError(f"{route.method} {route.path} is declared twice")
        ops[route.method.lower()] = _operation(route)
        if route.body is not None:
            for name, schema in _model_schemas(route.body).items():
                if schemas.setdefault(name, schema) != schema:
                    raise ValueError(f"two request models are named {name}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "spotd", "version": _version(), "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    """This document."""
    return web.json_response(request.app[OPENAPI])


ROUTES = (
    Route(
        "GET",
        "/v1/openapi.json",
        openapi_json,
        "The API's OpenAPI document",
        "openapi",
        callers=TENANT,
    ),
)
