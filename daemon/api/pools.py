"""Pools: ``/v1/pools`` — apply, list, show, queue jobs, cancel one, its logs (followed),
down; and the workers' ask, ``POST /agent/v1/pool/next``, and their question while a job runs,
``POST /agent/v1/pool/running`` (keep running it, or stop: it was cancelled).

A project's token sees and touches only its project's pools (another's is a 404, as a job
is). The workers' route is an agent's: the instance's own agent token, checked as the
heartbeat checks it.
"""

from __future__ import annotations

import contextlib
import hmac
from collections import Counter
from typing import Any

from aiohttp import web
from pydantic import Field

from spotd.api.common import (
    CONTROLLER,
    SETTINGS,
    STORE,
    ApiError,
    Body,
    LineText,
    PathText,
    json_error,
    read_body,
    scope,
)
from spotd.api.files import Sha256
from spotd.api.logs import client_gone, following
from spotd.api.params import PathId, PathName, QueryFlag
from spotd.api.routes import AGENT, TENANT, Route
from spotd.control.pools import MAX_NUM_JOBS, PoolConflict, PoolMissing, Pools
from spotd.control.submit import LaunchRequest
from spotd.store import AsyncStore, InstanceRow, OverQuota
from spotd.store.pools import PoolAttemptRow, PoolJobRow, PoolRow

__all__ = ["POOLS", "ROUTES", "make_pools"]

POOLS = web.AppKey("pools", Pools)
NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
NAME_HINT = "1-63 lowercase letters, digits and '-', starting with a letter or digit"
POOL = PathName("name", "pool name", NAME_PATTERN, NAME_HINT)
POOL_JOB = PathId("job_id", "pool job id")
FOLLOW = QueryFlag("follow", "keep streaming until the job ends")


def make_pools(app: web.Application) -> Pools:
    """Pools over this app's store and controller; the composition root (``spotd.server``)
    puts the daemon's one instance on every listener instead, whose loop it starts, so a
    job queued on the API wakes the workers waiting on the agents' listener at once."""
    return Pools(settings=app[SETTINGS], store=app[STORE], controller=app[CONTROLLER])


class ApplyBody(Body):
    """A pool's task (``pool: {workers: N}``), as a launch sends a job's."""

    pool: str = Field(pattern=f"^{NAME_PATTERN}$")
    yaml: str = Field(min_length=1)
    filename: PathText = "<api>"
    env: dict[str, str] = Field(default_factory=dict, max_length=1024)
    infra: LineText | None = None
    project: str = Field(default="default", max_length=64)
    base_dir: PathText | None = None
    packages: dict[PathText, Sha256] = Field(default_factory=dict, max_length=1024)


class PoolLaunchBody(Body):
    """A job to queue on the pool, ``num_jobs`` times (ranks 0..num_jobs-1)."""

    yaml: str = Field(min_length=1)
    filename: PathText = "<api>"
    name: LineText | None = None
    env: dict[str, str] = Field(default_factory=dict, max_length=1024)
    num_jobs: int = Field(default=1, ge=1, le=MAX_NUM_JOBS)


class Done(Body):
    attempt_id: str = Field(pattern=r"^q[0-9]{1,18}-a[0-9]{1,9}$")
    exit_code: int = Field(ge=-(2**31), le=2**31 - 1)


class RunningBody(Body):
    """A worker's question while a pool job runs: keep running this attempt?"""

    key: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")
    attempt_id: str = Field(pattern=r"^q[0-9]{1,18}-a[0-9]{1,9}$")


class NextBody(Body):
    """A worker's ask: what it ran last (if it has not said yet), and its instance key."""

    key: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")
    done: Done | None = None


# -- views -------------------------------------------------------------------------------


def attempt_json(a: PoolAttemptRow) -> dict[str, Any]:
    return {
        "id": a.id,
        "attempt": a.attempt,
        "worker_job_id": a.worker_job_id,
        "instance_key": a.instance_key,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
        "end_reason": None if a.end_reason is None else str(a.end_reason),
        "exit_code": a.exit_code,
    }


def job_json(j: PoolJobRow, attempts: list[PoolAttemptRow]) -> dict[str, Any]:
    return {
        "id": j.id,
        "name": j.name,
        "status": str(j.status),
        "rank": j.rank,
        "num_jobs": j.num_jobs,
        "submitted_at": j.submitted_at,
        "started_at": j.started_at,
        "ended_at": j.ended_at,
        "exit_code": j.exit_code,
        "message": j.message,
        "attempts": [attempt_json(a) for a in attempts],
    }


async def pool_json(store: AsyncStore, pool: PoolRow, *, jobs: bool) -> dict[str, Any]:
    """The pool with its workers (each a managed job) and, with ``jobs``, its jobs.

    The jobs are read before their attempts: a job read as ended has its attempts ended
    (one transaction wrote both), so a view never shows an ended job with an open attempt."""
    rows = await store.pool_jobs(pool.id)
    attempts = await store.pool_attempts(pool.id)
    running = {a.worker_job_id: a.pool_job_id for a in attempts if a.ended_at is None}
    workers = []
    for w in await store.pool_workers(pool.id):
        job = await store.get_job(w.job_id)
        if job is None:
            continue
        workers.append(
            {
                "slot": w.slot,
                "job_id": job.id,
                "status": str(job.status),
                "attempts": job.current_attempt,
                "preemptions": job.preemptions,
                "running": running.get(job.id),
            }
        )
    by_job: dict[int, list[PoolAttemptRow]] = {}
    for a in attempts:
        by_job.setdefault(a.pool_job_id, []).append(a)
    out: dict[str, Any] = {
        "name": pool.name,
        "project": pool.project,
        "status": str(pool.status),
        "workers": pool.workers,
        "created_at": pool.created_at,
        "ended_at": pool.ended_at,
        "worker_jobs": workers,
        "job_counts": dict(Counter(str(j.status) for j in rows)),
    }
    if jobs:
        out["jobs"] = [job_json(j, by_job.get(j.id, [])) for j in rows]
    return out


def _refused(exc: PoolMissing | PoolConflict) -> ApiError:
    return ApiError(404 if isinstance(exc, PoolMissing) else 409, exc.message)


# -- handlers ----------------------------------------------------------------------------


async def apply_pool(request: web.Request) -> web.Response:
    """Create the pool, or bring it to the YAML's worker count; 201 with the pool."""
    body = await read_body(request, ApplyBody)
    req = LaunchRequest(
        yaml=body.yaml,
        filename=body.filename,
        env=body.env,
        infra=body.infra,
        project=body.project,
        base_dir=body.base_dir,
        packages=body.packages,
    )
    try:
        pool, started = await request.app[POOLS].apply(req, name=body.pool, scope=scope(request))
    except (PoolMissing, PoolConflict) as exc:
        raise _refused(exc) from exc
    view = await pool_json(request.app[STORE], pool, jobs=False)
    return web.json_response({**view, "started": [j.id for j in started]}, status=201)


async def list_pools(request: web.Request) -> web.Response:
    """The pools that are up (a project token: its project's)."""
    store = request.app[STORE]
    pools = await request.app[POOLS].visible(scope(request))
    return web.json_response([await pool_json(store, p, jobs=False) for p in pools])


async def get_pool(request: web.Request) -> web.Response:
    """The pool, its workers and its jobs with their attempts."""
    pools = request.app[POOLS]
    try:
        pool = await pools.find(POOL.parse(request), scope(request))
    except PoolMissing as exc:
        raise _refused(exc) from exc
    await pools.sweep(pool)
    return web.json_response(await pool_json(request.app[STORE], pool, jobs=True))


async def launch_on_pool(request: web.Request) -> web.Response:
    """Queue a job (``num_jobs`` copies) on the pool: 201 with the jobs' ids."""
    body = await read_body(request, PoolLaunchBody)
    req = LaunchRequest(yaml=body.yaml, filename=body.filename, name=body.name, env=body.env)
    try:
        jobs = await request.app[POOLS].launch(
            POOL.parse(request), req, num_jobs=body.num_jobs, scope=scope(request)
        )
    except (PoolMissing, PoolConflict) as exc:
        raise _refused(exc) from exc
    except OverQuota as exc:  # the pool's bound on queued and running jobs
        raise ApiError(409, exc.message, exc.details) from exc
    return web.json_response(
        {"pool": POOL.parse(request), "jobs": [job_json(j, []) for j in jobs]}, status=201
    )


async def pool_job_logs(request: web.Request) -> web.StreamResponse:
    """A pool job's output, every attempt's (cut from its workers' logs), as text;
    ``?follow=1`` streams it until the job ends."""
    pools = request.app[POOLS]
    name, job_id = POOL.parse(request), POOL_JOB.parse(request)
    if not FOLLOW.parse(request):
        try:
            text = await pools.output(name, job_id, scope(request))
        except PoolMissing as exc:
            raise _refused(exc) from exc
        return web.Response(text=text, content_type="text/plain")
    try:
        chunks = await pools.follow(name, job_id, scope(request))
    except PoolMissing as exc:
        raise _refused(exc) from exc
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    with following(request), contextlib.suppress(ConnectionResetError):
        async for chunk in chunks:
            if client_gone(request):
                return resp
            await resp.write(chunk.encode())
        await resp.write_eof()
    return resp


async def cancel_pool_job(request: web.Request) -> web.Response:
    """Cancel one pool job (queued: out of the queue; running: its worker stops it)."""
    try:
        job = await request.app[POOLS].cancel(
            POOL.parse(request), POOL_JOB.parse(request), scope(request)
        )
    except (PoolMissing, PoolConflict) as exc:
        raise _refused(exc) from exc
    return web.json_response(job_json(job, []))


async def down_pool(request: web.Request) -> web.Response:
    """Take the pool down: its jobs cancelled, its workers cancelled."""
    pools = request.app[POOLS]
    try:
        pool = await pools.down(POOL.parse(request), scope(request))
    except PoolMissing as exc:
        raise _refused(exc) from exc
    return web.json_response(await pool_json(request.app[STORE], pool, jobs=False))


async def _agent_instance(request: web.Request, key: str) -> InstanceRow | None:
    """The asking worker's instance, if the request carries its agent token."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    row = await request.app[STORE].get_instance(key)
    if row is None or not token or not hmac.compare_digest(row.token.encode(), token.encode()):
        return None
    return row


async def running_job(request: web.Request) -> web.Response:
    """A pool worker's question while a job runs: ``{"stop": true}`` once the attempt is no
    longer its to run (the job was cancelled, or given back to the queue)."""
    body = await read_body(request, RunningBody)
    row = await _agent_instance(request, body.key)
    if row is None:
        return json_error(401, "unknown instance or wrong agent token")
    wanted = await request.app[POOLS].wanted(row, body.attempt_id)
    return web.json_response({"stop": not wanted})


async def next_job(request: web.Request) -> web.Response:
    """A pool worker's ask for its next job (and its report of the last one's exit)."""
    body = await read_body(request, NextBody)
    row = await _agent_instance(request, body.key)
    if row is None:
        return json_error(401, "unknown instance or wrong agent token")
    done = None if body.done is None else (body.done.attempt_id, body.done.exit_code)
    try:
        got = await request.app[POOLS].next_for(row, done=done)
    except PoolMissing as exc:
        raise _refused(exc) from exc
    wait = request.app[SETTINGS].heartbeat_seconds
    return web.json_response(
        {"assignment": None if got is None else got.to_json(), "wait_seconds": wait}
    )


ROUTES = (
    Route(
        "POST",
        "/v1/pools",
        apply_pool,
        "Create a pool or resize it (apply)",
        "pools",
        body=ApplyBody,
        callers=TENANT,
        ok=(201,),
        errors=(403, 404, 409),
    ),
    Route("GET", "/v1/pools", list_pools, "List the pools that are up", "pools", callers=TENANT),
    Route(
        "GET",
        "/v1/pools/{name}",
        get_pool,
        "A pool, its workers and its jobs",
        "pools",
        params=(POOL,),
        callers=TENANT,
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/pools/{name}/jobs",
        launch_on_pool,
        "Queue a job on a pool",
        "pools",
        body=PoolLaunchBody,
        params=(POOL,),
        callers=TENANT,
        ok=(201,),
        errors=(404, 409),
    ),
    Route(
        "GET",
        "/v1/pools/{name}/jobs/{job_id}/logs",
        pool_job_logs,
        "A pool job's output, every attempt's (followed with ?follow=1)",
        "pools",
        params=(POOL, POOL_JOB, FOLLOW),
        callers=TENANT,
        errors=(404,),
        text=True,
    ),
    Route(
        "POST",
        "/v1/pools/{name}/jobs/{job_id}/cancel",
        cancel_pool_job,
        "Cancel one job of a pool",
        "pools",
        params=(POOL, POOL_JOB),
        callers=TENANT,
        errors=(404, 409),
    ),
    Route(
        "POST",
        "/v1/pools/{name}/down",
        down_pool,
        "Take a pool down",
        "pools",
        params=(POOL,),
        callers=TENANT,
        errors=(404,),
    ),
    Route(
        "POST",
        "/agent/v1/pool/next",
        next_job,
        "A pool worker's ask for its next job",
        "agents",
        body=NextBody,
        callers=AGENT,
        errors=(404,),
    ),
    Route(
        "POST",
        "/agent/v1/pool/running",
        running_job,
        "A pool worker's question while a job runs: stop it?",
        "agents",
        body=RunningBody,
        callers=AGENT,
    ),
)
