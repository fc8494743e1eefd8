"""Tenants: ``POST /v1/projects`` (create; the token is in the answer, and only there),
``GET /v1/projects`` and ``GET /v1/projects/{name}`` (each with its limits and what it holds
now), ``PATCH /v1/projects/{name}`` (change some of its limits).

A project token lists only its own project; reading one by name, creating and changing one
is for the admin (``spotd.api.app`` keeps project tokens to the routes they may use). A limit
of ``null`` is unlimited; lowering one never stops what runs, it refuses the next launch.
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from spotd.api.common import STORE, ApiError, Body, read_body, scope
from spotd.api.params import PathName
from spotd.api.routes import TENANT, Route
from spotd.clock import wall
from spotd.control import quota
from spotd.store import AsyncStore, NotFound, ProjectExists, ProjectRow

__all__ = ["ROUTES"]

# A count limit: jobs, nodes or services. Bounded so a typo is a 400, not a silent "unlimited".
Count = Annotated[int, Field(ge=0, le=1_000_000)]
Gpus = Annotated[float, Field(ge=0, le=1_000_000)]

PROJECT_NAME = PathName(
    "name",
    "project name",
    r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?",
    "1-64 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
)


class ProjectBody(Body):
    """A project to create; a limit left out or null is unlimited."""

    name: str = Field(max_length=64)  # and quota.validate_name's pattern
    gpu_quota: Gpus | None = None
    max_jobs: Count | None = None
    max_nodes_per_job: Count | None = None
    max_services: Count | None = None


class ProjectPatchBody(Body):
    """The limits to change: only those given are; ``null`` makes one unlimited."""

    gpu_quota: Gpus | None = None
    max_jobs: Count | None = None
    max_nodes_per_job: Count | None = None
    max_services: Count | None = None


async def project_json(store: AsyncStore, p: ProjectRow) -> dict[str, Any]:
    """The project's row, its limits and what it holds now (jobs, services, their GPUs)."""
    use = await store.project_usage(p.name)
    return {
        "name": p.name,
        "gpu_quota": p.gpu_quota,
        "max_jobs": p.max_jobs,
        "max_nodes_per_job": p.max_nodes_per_job,
        "max_services": p.max_services,
        "gpus_in_use": use.gpus,
        "active_jobs": use.jobs,
        "live_services": use.services,
        "created_at": p.created_at,
    }


async def create_project(request: web.Request) -> web.Response:
    """A new project; its token is in this answer and nowhere else."""
    body = await read_body(request, ProjectBody)
    why = quota.validate_name(body.name)
    if why:
        raise ApiError(400, why)
    token = quota.new_token()
    store = request.app[STORE]
    try:
        row = await store.create_project(
            name=body.name,
            gpu_quota=body.gpu_quota,
            max_jobs=body.max_jobs,
            max_nodes_per_job=body.max_nodes_per_job,
            max_services=body.max_services,
            token_hash=quota.hash_token(token),
            now=wall(),
        )
    except ProjectExists as exc:
        raise ApiError(409, str(exc)) from exc
    return web.json_response({**await project_json(store, row), "token": token}, status=201)


async def list_projects(request: web.Request) -> web.Response:
    """Every project (a project token: its own), with its limits and what it holds."""
    limit = scope(request)
    store = request.app[STORE]
    rows = [p for p in await store.list_projects() if limit is None or p.name == limit]
    return web.json_response([await project_json(store, p) for p in rows])


async def _project(request: web.Request) -> ProjectRow:
    """The path's project; a project token sees no other (a 404, as if it did not exist)."""
    name = PROJECT_NAME.parse(request)
    limit = scope(request)
    row = None if limit not in (None, name) else await request.app[STORE].get_project(name)
    if row is None:
        raise ApiError(404, f"no project {name!r}")
    return row


async def get_project(request: web.Request) -> web.Response:
    """The project, its limits and what it holds."""
    row = await _project(request)
    return web.json_response(await project_json(request.app[STORE], row))


async def update_project(request: web.Request) -> web.Response:
    """Change the limits the body names (``null``: unlimited); the others stay."""
    body = await read_body(request, ProjectPatchBody)
    limits = {k: getattr(body, k) for k in sorted(body.model_fields_set)}
    if not limits:
        raise ApiError(
            400, f"nothing to change: give one of {', '.join(ProjectPatchBody.model_fields)}"
        )
    row = await _project(request)
    store = request.app[STORE]
    try:
        row = await store.update_project(row.name, now=wall(), **limits)
    except NotFound as exc:  # deleted between the two reads
        raise ApiError(404, str(exc)) from exc
    return web.json_response(await project_json(store, row))


ROUTES = (
    Route(
        "POST",
        "/v1/projects",
        create_project,
        "Create a project",
        "projects",
        body=ProjectBody,
        ok=(201,),
        errors=(409,),
    ),
    Route("GET", "/v1/projects", list_projects, "List projects", "projects", callers=TENANT),
    Route(
        "GET",
        "/v1/projects/{name}",
        get_project,
        "A project, its limits and what it holds",
        "projects",
        params=(PROJECT_NAME,),
        errors=(404,),
    ),
    Route(
        "PATCH",
        "/v1/projects/{name}",
        update_project,
        "Change a project's limits",
        "projects",
        body=ProjectPatchBody,
        params=(PROJECT_NAME,),
        errors=(404,),
    ),
)
