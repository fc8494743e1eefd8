"""Managed jobs: ``/v1/jobs`` — launch (or its dry run), list, get, events, cancel.

A launch and its dry run are one request (``POST /v1/jobs``) and one plan
(``spotd.control.submit``): ``dry_run: true`` answers with the plan only; otherwise 201 with
the job and, under ``plan``, the plan it was stored from. The handlers read jobs from the
store and tell the controller only to start or wake a job's worker.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    read_body,
    scope,
)
from spotd.api.files import Sha256
from spotd.api.params import PathId, QueryInt, QueryList
from spotd.api.routes import TENANT, Route
from spotd.clock import wall
from spotd.control.cancel import request_cancel
from spotd.control.deadline import pace_of
from spotd.control.submit import LaunchRequest, Plan, plan_submission, submit
from spotd.store import AttemptRow, InstanceRow, JobRow, current_attempt_of
from spotd.store.jobs import JobPage
from spotd.telemetry import gpu
from spotd.types import Candidate, JobStatus

__all__ = [
    "JOB_ID",
    "ROUTES",
    "LaunchBody",
    "attempt_json",
    "job_json",
    "job_view",
    "plan_json",
    "requested_job",
]

JOB_ID = PathId("job_id", "job id")


class LaunchBody(Body):
    """A task to launch (or, with ``dry_run``, only to plan)."""

    yaml: str = Field(min_length=1)  # its size is bounded by the spec's loader (YamlLimits)
    filename: PathText = "<api>"
    name: LineText | None = None
    env: dict[str, str] = Field(default_factory=dict, max_length=1024)
    dry_run: bool = False
    deadline: str | None = Field(default=None, max_length=64)  # ISO-8601 or a duration ("6h")
    infra: LineText | None = None  # replaces resources.infra (`spotctl jobs launch --infra aws`)
    project: str = Field(default="default", max_length=64)
    # the admin's paths on the daemon's host (under file_roots) resolve here when relative
    base_dir: PathText | None = None
    # what the client uploaded (/v1/blobs): "workdir" or a mount target -> the manifest's sha256
    packages: dict[PathText, Sha256] = Field(default_factory=dict, max_length=1024)


# -- views -------------------------------------------------------------------------------


def attempt_json(a: AttemptRow) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "id": a.id,
        "status": str(a.status),
        "provider": a.provider,
        "region": a.region,
        "zone": a.zone,
        "instance_type": a.instance_type,
        "market": a.market,
        "price_per_hour": a.price_per_hour,
        "num_nodes": a.num_nodes,
        "created_at": a.created_at,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
        "end_reason": str(a.end_reason) if a.end_reason else None,
        "end_detail": a.end_detail,
    }


async def job_json(request: web.Request, job: JobRow, now: float) -> dict[str, Any]:
    store = request.app[STORE]
    attempts = await store.attempts(job.id)
    current = current_attempt_of(job, attempts)
    nodes = await store.instances(attempt_id=current.id) if current else []
    return job_view(job, attempts, nodes, now)


def job_view(
    job: JobRow,
    attempts: Sequence[AttemptRow],
    nodes: Sequence[InstanceRow],
    now: float,
) -> dict[str, Any]:
    """A job as the API shows it: ``attempts`` first to last, ``nodes`` the current one's;
    ``pace`` (DEADLINE jobs) where the work stands against the deadline's line."""
    current = current_attempt_of(job, attempts)
    pace = pace_of(job, attempts, now)
    end = job.ended_at or now
    return {
        "id": job.id,
        "name": job.name,
        "status": str(job.status),
        "task_id": job.task_id,
        "resources": job.resources,
        "project": job.project,
        "submitted_at": job.submitted_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "duration": (end - job.started_at) if job.started_at else None,
        "recoveries": job.recoveries,
        "preemptions": job.preemptions,
        "user_restarts": job.user_restarts,
        "infra_failures": job.infra_failures,
        "message": job.message,
        "deadline": job.deadline,
        "pace": None if pace is None else pace.json(),
        "owner": job.owner,  # the daemon that runs it (several daemons on one database)
        "provider": current.provider if current else None,
        "region": current.region if current else None,
        "zone": current.zone if current else None,
        "market": current.market if current else None,
        "attempts": [attempt_json(a) for a in attempts],
        **_gpu_json(current, nodes),
    }


def _gpu_json(attempt: AttemptRow | None, rows: Sequence[InstanceRow]) -> dict[str, Any]:
    """The current attempt's latest GPU samples per node, and a one-line summary."""
    if attempt is None:
        return {"gpus": [], "gpu_summary": "-"}
    nodes = []
    all_samples: list[gpu.GpuSample] | None = []
    for r in rows:
        samples = None if r.gpus_json is None else gpu.parse_samples(json.loads(r.gpus_json))
        nodes.append(
            {
                "node": r.node_rank,
                "at": r.gpus_at,
                "gpus": None if samples is None else [s.to_json() for s in samples],
            }
        )
        if samples is None:
            all_samples = None
        elif all_samples is not None:
            all_samples.extend(samples)
    return {"gpus": nodes, "gpu_summary": gpu.summarize(all_samples if nodes else None)}


def candidate_json(c: Candidate) -> dict[str, Any]:
    return {
        "provider": c.provider,
        "region": c.region,
        "zone": c.zone,
        "instance_type": c.instance_type,
        "market": str(c.market),
        # six places: live spot quotes and per-node shares are finer than the catalog's cents
        "price_per_hour": round(c.price_per_hour, 6),
        "expected_cost": round(c.expected_cost, 6),
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    """What a launch will do (dry run) or did: the job's name, its shape, the candidates."""
    return {
        "name": plan.name,
        "resources": plan.task.resources_summary(),
        "num_nodes": plan.task.num_nodes,
        "candidates": [candidate_json(c) for c in plan.candidates],
    }


# -- handlers ----------------------------------------------------------------------------


async def requested_job(request: web.Request) -> JobRow:
    """The job named in the path; 404 also when a project token asks for another project's."""
    job_id = JOB_ID.parse(request)
    job = await request.app[STORE].get_job(job_id)
    limit = scope(request)
    if job is None or (limit is not None and job.project != limit):
        raise ApiError(404, f"no job {job_id}")  # not: "not yours"
    return job


async def launch(request: web.Request) -> web.Response:
    """Plan the task's placement; store and start it unless ``dry_run`` (then: the plan)."""
    body = await read_body(request, LaunchBody)
    ctl = request.app[CONTROLLER]
    store = request.app[STORE]
    req = LaunchRequest(
        yaml=body.yaml,
        filename=body.filename,
        name=body.name,
        env=body.env,
        deadline=body.deadline,
        infra=body.infra,
        project=body.project,
        base_dir=body.base_dir,
        packages=body.packages,
    )
    plan = await plan_submission(
        req,
        scope=scope(request),
        catalog=ctl.catalog,
        providers=ctl.providers,
        store=store,
        now=wall(),
        file_roots=request.app[SETTINGS].file_roots,
        blob_store=request.app[SETTINGS].cas_dir,
        provider_configs=request.app[SETTINGS].providers,
    )
    if body.dry_run:
        return web.json_response({"dry_run": True, **plan_json(plan)})
    job = await submit(
        plan,
        settings=request.app[SETTINGS],
        store=store,
        start=ctl.spawn_worker,
    )
    # just inserted: no attempt yet (its worker has not run), so nothing more to read
    return web.json_response(
        {
            **job_view(job, [], [], plan.now),
            "plan": plan_json(plan),
        },
        status=201,
    )


async def list_jobs(request: web.Request) -> web.Response:
    """Jobs newest first (a project token: its project's), optionally only those in
    ``?status=``. Without ``?limit=`` every job, as before; with it one page, and a ``Link``
    header (``rel="next"``) naming the next page while older jobs remain."""
    wanted = STATUS.parse(request)
    limit = LIMIT.parse(request)
    page = await request.app[STORE].job_page(
        statuses=None if wanted is None else [JobStatus(s) for s in wanted],
        project=scope(request),
        limit=limit,
        before=BEFORE.parse(request),
    )
    now = wall()
    body = [
        job_view(j, page.attempts.get(j.id, []), _current_nodes(page, j), now) for j in page.jobs
    ]
    headers = {}
    if page.more and page.jobs:
        query = {**request.query, "before": str(page.jobs[-1].id)}
        headers["Link"] = f'<{request.rel_url.with_query(query)}>; rel="next"'
    return web.json_response(body, headers=headers)


def _current_nodes(page: JobPage, job: JobRow) -> list[InstanceRow]:
    current = current_attempt_of(job, page.attempts.get(job.id, []))
    return list(page.nodes.get(current.id, [])) if current else []


async def get_job(request: web.Request) -> web.Response:
    """The job, with its attempts and its current GPU samples."""
    job = await requested_job(request)
    return web.json_response(await job_json(request, job, wall()))


async def job_events(request: web.Request) -> web.Response:
    """The job's events, oldest first."""
    job = await requested_job(request)
    events = await request.app[STORE].events(job_id=job.id)
    return web.json_response(
        [
            {
                "id": e.id,
                "at": e.at,
                "kind": e.kind,
                "attempt_id": e.attempt_id,
                "message": e.message,
            }
            for e in events
        ]
    )


async def cancel_job(request: web.Request) -> web.Response:
    """Ask the job's worker to cancel it; 409 when it has already ended."""
    job = await requested_job(request)
    store = request.app[STORE]
    if JobStatus(job.status).is_terminal:
        raise ApiError(409, f"job {job.id} is already {job.status}")
    wake = request.app[CONTROLLER].wake
    job = await request_cancel(store, wake, job.id, reason="cancel requested", now=wall())
    return web.json_response(await job_json(request, job, wall()))


STATUS = QueryList(
    "status", "only jobs in these states, comma-separated", tuple(str(s) for s in JobStatus)
)
MAX_PAGE = 1000
LIMIT = QueryInt(
    "limit",
    f"at most this many jobs (up to {MAX_PAGE}); the Link header names the next page",
    le=MAX_PAGE,
)
BEFORE = QueryInt("before", "only jobs with a smaller id (the cursor of the next page)")

ROUTES = (
    Route(
        "POST",
        "/v1/jobs",
        launch,
        "Launch a job, or plan it (dry_run)",
        "jobs",
        body=LaunchBody,
        callers=TENANT,
        ok=(200, 201),
        errors=(403, 404),
    ),
    Route(
        "GET",
        "/v1/jobs",
        list_jobs,
        "List jobs, newest first (every job, or one page with ?limit)",
        "jobs",
        params=(STATUS, LIMIT, BEFORE),
        callers=TENANT,
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}",
        get_job,
        "A job, with its attempts",
        "jobs",
        params=(JOB_ID,),
        callers=TENANT,
        errors=(404,),
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}/events",
        job_events,
        "A job's events",
        "jobs",
        params=(JOB_ID,),
        callers=TENANT,
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        cancel_job,
        "Cancel a job",
        "jobs",
        params=(JOB_ID,),
        callers=TENANT,
        errors=(404, 409),
    ),
)
