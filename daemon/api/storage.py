"""Storage objects: ``GET /v1/storage``, ``POST /v1/storage/{name}/delete`` and the agents'
``POST /agent/v1/storage``.

A project token lists and deletes only its own project's buckets; the admin lists every
project's and deletes in the project ``?project=`` names (``default`` when left out). A bucket
that an active job or a live service of the project names is not deleted (409, naming them);
nor is one spotd did not create (409: spotd forgets it only when asked with ``?forget=1``).

An agent asks for its task's storage objects before setup (``spotd.agent.storage``): the
daemon finds the instance's job (or the replica's service) and its project, and answers with
the buckets created or claimed, and the ``source`` uploaded once
(``spotd.files.storage_buckets.Storage.resolve``). A bucket another project owns is a 403 the
agent shows as its setup failure.
"""

from __future__ import annotations

import hmac
from typing import Any

import structlog
from aiohttp import web
from pydantic import Field, ValidationError

from spotd.api.common import SERVICES, STORE, ApiError, Body, read_body, scope
from spotd.api.params import PathName, QueryFlag, QueryText
from spotd.api.routes import AGENT, TENANT, Route
from spotd.config import Settings
from spotd.control import quota
from spotd.control.jobs import Controller
from spotd.control.packages import s3_options
from spotd.files.storage import StorageError, bucket_name_problem
from spotd.files.storage_buckets import NotOwner, Storage, StorageConfig, bucket_names
from spotd.providers.capabilities import PackageStore
from spotd.spec import Task
from spotd.store import AsyncStore

__all__ = ["ROUTES", "STORAGE", "make_storage"]

log = structlog.get_logger("spotd.api.storage")

STORAGE = web.AppKey("storage", Storage)

BUCKET = PathName(
    "name",
    "bucket name",
    r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
    "3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit",
)
PROJECT = QueryText("project", "the project whose bucket it is (the admin's choice)")
FORGET = QueryFlag("forget", "forget a bucket spotd did not create, leaving it as it is")


def make_storage(settings: Settings, controller: Controller) -> Storage:
    """The daemon's buckets: the directory store under its home, S3 through the object store
    of the provider that has one (which also makes S3 the default store)."""
    s3 = s3_options(controller.providers.values())
    has_s3 = any(isinstance(p, PackageStore) for p in controller.providers.values())
    return Storage(
        StorageConfig(
            root=settings.data_dir / "storage",
            blobs=settings.cas_dir,
            default_store="s3" if has_s3 else "local",
            endpoint_url=s3.endpoint_url,
            profile=s3.profile,
        )
    )


def _task(spec_json: str) -> Task | None:
    try:
        return Task.model_validate_json(spec_json)
    except ValidationError:
        return None


async def users_of(store: AsyncStore, project: str, name: str) -> list[str]:
    """The project's active jobs and live services whose tasks name bucket ``name``."""
    users = []
    for job in await store.active_jobs():
        task = _task(job.spec_json) if job.project == project else None
        if task is not None and name in bucket_names(task):
            users.append(f"job {job.id}")
    for svc in await store.list_services(live_only=True):
        task = _task(svc.spec_json) if svc.project == project else None
        if task is not None and name in bucket_names(task):
            users.append(f"service {svc.name}")
    return users


def _project(request: web.Request) -> str:
    limit = scope(request)
    asked = PROJECT.parse(request)
    if limit is not None:
        if asked not in (None, limit):
            raise ApiError(
                403, f"a token of project {limit} cannot reach project {asked}'s buckets"
            )
        return limit
    why = quota.validate_name(asked) if asked else None
    if why:
        raise ApiError(400, why)
    return asked or quota.DEFAULT_PROJECT


async def list_buckets(request: web.Request) -> web.Response:
    """The buckets on record: the caller's project's, or every project's for the admin."""
    limit = scope(request)
    storage = request.app[STORAGE]
    store = request.app[STORE]
    out: list[dict[str, Any]] = []
    for rec in storage.records(limit):
        out.append(rec.to_json() | {"used_by": await users_of(store, rec.project, rec.name)})
    return web.json_response({"buckets": out})


async def delete_bucket(request: web.Request) -> web.Response:
    """Delete a bucket and everything in it; refused while a job or service uses it."""
    name = BUCKET.parse(request)
    why = bucket_name_problem(name)
    if why:
        raise ApiError(400, why)
    project = _project(request)
    storage = request.app[STORAGE]
    rec = storage.get(project, name)
    if rec is None:
        raise ApiError(404, f"no bucket {name} in project {project}")
    users = await users_of(request.app[STORE], project, name)
    if users:
        raise ApiError(
            409,
            f"bucket {name} is in use by {', '.join(users)}: cancel them first "
            "(or wait for them to end)",
        )
    if not rec.managed:
        if FORGET.parse(request):
            storage.forget(project, name)
            return web.json_response({"forgotten": rec.to_json()})
        raise ApiError(
            409,
            f"bucket {name} was not created by spotd: delete it with your cloud's tools, or "
            "forget it here with --forget",
        )
    try:
        await storage.delete(project, name)
    except NotOwner as exc:
        raise ApiError(403, str(exc)) from exc
    except StorageError as exc:
        raise ApiError(409, str(exc)) from exc
    log.info("bucket deleted", bucket=name, project=project, store=rec.store)
    return web.json_response({"deleted": rec.to_json()})


class StorageAsk(Body):
    """Which instance's storage objects the agent asks for; the token is in ``Authorization``."""

    key: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")


async def _task_of(request: web.Request, key: str, token: str) -> tuple[Task, str]:
    """The task and project of the instance ``key`` (a job's node or a service replica),
    after checking the agent's token; 401 otherwise."""
    store = request.app[STORE]
    if key.startswith("s") and request.app.get(SERVICES) is not None:
        rep = await store.get_replica(key)
        if rep is not None and token and hmac.compare_digest(rep.token.encode(), token.encode()):
            svc = await store.get_service(rep.service_id)
            spec = await store.service_version_spec(rep.service_id, rep.version)
            task = _task(spec) if spec else None
            if svc is not None and task is not None:
                return task, svc.project
        raise ApiError(401, "unknown replica or wrong agent token")
    row = await store.get_instance(key)
    if row is None or not token or not hmac.compare_digest(row.token.encode(), token.encode()):
        raise ApiError(401, "unknown instance or wrong agent token")
    job = await store.get_job(row.job_id)
    task = _task(job.spec_json) if job is not None else None
    if job is None or task is None:
        raise ApiError(404, f"no job for instance {key}")
    return task, job.project


async def agent_storage(request: web.Request) -> web.Response:
    """The instance's storage objects, buckets created and sources uploaded."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    body = await read_body(request, StorageAsk)
    task, project = await _task_of(request, body.key, token)
    try:
        rows = await request.app[STORAGE].resolve(task, project)
    except NotOwner as exc:
        raise ApiError(403, str(exc)) from exc
    except StorageError as exc:
        raise ApiError(409, str(exc)) from exc
    for row in rows:
        if row.uploaded_source:
            log.info("bucket source uploaded", bucket=row.bucket, project=project, key=body.key)
    return web.json_response({"mounts": [r.to_json() for r in rows]})


ROUTES = (
    Route(
        "GET",
        "/v1/storage",
        list_buckets,
        "List buckets (storage objects)",
        "storage",
        callers=TENANT,
    ),
    Route(
        "POST",
        "/v1/storage/{name}/delete",
        delete_bucket,
        "Delete a bucket and its objects",
        "storage",
        params=(BUCKET, PROJECT, FORGET),
        callers=TENANT,
        errors=(404, 409),
    ),
    Route(
        "POST",
        "/agent/v1/storage",
        agent_storage,
        "An agent's storage objects: buckets created or reused, sources uploaded once",
        "storage",
        body=StorageAsk,
        callers=AGENT,
        errors=(401, 403, 404, 409),
    ),
)
