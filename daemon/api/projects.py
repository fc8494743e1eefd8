"""Tenants: ``POST /v1/projects`` (create; the token is in the answer, and only there) and
``GET /v1/projects`` (each with its quota and the GPUs its active jobs reserve).

A project token sees only its own project; creating one is for the admin (``spotd.api.app``
keeps project tokens to the routes they may use).
"""

from __future__ import annotations

import time

from aiohttp import web
from pydantic import Field

from spotd.api.common import STORE, ApiError, Body, read_body, scope
from spotd.api.routes import TENANT, Route
from spotd.control import quota
from spotd.control.submit import reserved_gpus
from spotd.store import ProjectExists

__all__ = ["ROUTES"]


class ProjectBody(Body):
    name: str = Field(max_length=64)  # and quota.validate_name's pattern
    gpu_quota: float | None = Field(default=None, ge=0, le=1_000_000)


async def create_project(request: web.Request) -> web.Response:
    """A new project; its token is in this answer and nowhere else."""
    body = await read_body(request, ProjectBody)
    why = quota.validate_name(body.name)
    if why:
        raise ApiError(400, why)
    token = quota.new_token()
    try:
        row = await request.app[STORE].create_project(
            name=body.name,
            gpu_quota=body.gpu_quota,
            token_hash=quota.hash_token(token),
            now=time.time(),
        )
    except ProjectExists as exc:
        raise ApiError(409, str(exc)) from exc
    return web.json_response(
        {
            "name": row.name,
            "gpu_quota": row.gpu_quota,
            "created_at": row.created_at,
            "token": token,
        },
        status=201,
    )


async def list_projects(request: web.Request) -> web.Response:
    """Every project (a project token: its own), with the GPUs its active jobs reserve."""
    limit = scope(request)
    store = request.app[STORE]
    out = []
    for p in await store.list_projects():
        if limit is not None and p.name != limit:
            continue
        use = await reserved_gpus(store, p.name)
        out.append(
            {
                "name": p.name,
                "gpu_quota": p.gpu_quota,
                "gpus_in_use": sum(use),
                "active_jobs": len(use),
                "created_at": p.created_at,
            }
        )
    return web.json_response(out)


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
)
