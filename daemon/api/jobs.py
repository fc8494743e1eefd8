"""The daemon's HTTP API (aiohttp): jobs, chaos controls, the agents' heartbeat, metrics.

Built the aiohttp way: state on ``web.AppKey``s, no module-level singletons, the application
separate from where it listens (the unix socket, and TCP with a bearer token when configured).
Every error a client can cause is a 4xx with a JSON body ``{"error": ..., "details": ...}``;
a 500 means a bug, and it too is JSON.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from spotd.pricing import cost as costs
from spotd.agent import gpu
from spotd.control import quota as tenants
from spotd.files import mounts as s3src
from spotd.config import Settings
from spotd.control.jobs import Controller, candidates_table
from spotd.metrics import DaemonMetrics
from spotd.providers.local import LocalProvider
from spotd.recovery import placement
from spotd.spec import SpecError, Task, load_tasks, parse_duration
from spotd.store import AsyncStore, ProjectExists, StaleTransition
from spotd.types import Candidate, JobStatus, Market
from spotd.files.workdir import BlobStore, HashCache, PackageError, check_mount_target, package

log = structlog.get_logger("spotd.api.jobs")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", AsyncStore)
CONTROLLER = web.AppKey("controller", Controller)
METRICS = web.AppKey("metrics", DaemonMetrics)
TCP_APP = web.AppKey("tcp", bool)
LAUNCH_LOCK = web.AppKey("launch_lock", asyncio.Lock)  # quota check + create, one at a time
# the project a TCP request's project token limits it to (absent: admin token or unix socket)
PROJECT_SCOPE = web.RequestKey("project_scope", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if details is not None:
        body["details"] = details
    return web.json_response(body, status=status)


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LaunchBody(_Body):
    yaml: str = Field(min_length=1)
    filename: str = "<api>"
    name: str | None = None
    env: dict[str, str] = {}
    dry_run: bool = False
    deadline: str | None = None  # ISO-8601 or a duration from now ("6h")
    infra: str | None = None  # replaces resources.infra (`spotctl jobs launch --infra aws`)
    project: str = "default"
    base_dir: str | None = None  # the client's working directory: relative workdirs resolve here


class ProjectBody(_Body):
    name: str
    gpu_quota: float | None = Field(default=None, ge=0)


class ChaosTarget(_Body):
    target: str
    notice_seconds: float | None = Field(default=None, ge=0)


class ChaosSeconds(_Body):
    target: str
    seconds: float = Field(gt=0, le=86400)


class ChaosStockout(_Body):
    target: str  # a local region
    seconds: float = Field(ge=0, le=86400)  # 0 ends the stockout now
    market: Market | None = None  # None: both markets


class Heartbeat(_Body):
    key: str
    phase: str
    exit_code: int | None = None
    notice_deadline: float | None = None
    log_offset: int = Field(ge=0)
    log_b64: str = ""
    checkpoint_synced_at: float | None = None
    gpus: list[dict[str, Any]] = []


async def _body(request: web.Request, model: type[_Body]) -> Any:
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


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = json_error(exc.status, exc.message, exc.details)
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        resp = json_error(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        # A bug: keep the daemon up, tell the client, keep the traceback in the log.
        log.exception("unhandled error in API handler", path=request.path)
        resp = json_error(500, "internal error in spotd; see the daemon log")
    metrics.api_requests.labels(route, str(resp.status)).inc()
    return resp


# What a project token may do on the TCP API: its own jobs, its own costs, its own project.
# Everything else (chaos, services, creating projects, routes added later) is admin-only.
_PROJECT_ROUTES = frozenset(
    {
        ("GET", "/v1/health"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/events"),
        ("GET", "/v1/jobs/{job_id}/logs"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("GET", "/v1/cost"),
        ("GET", "/v1/projects"),
    }
)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """TCP requests need the admin token or a project's token; the unix socket is protected by
    its file mode (whoever can open it is the admin)."""
    if request.app[TCP_APP] and not request.path.startswith("/agent/"):
        token = request.app[SETTINGS].api_token or ""
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token and hmac.compare_digest(given.encode(), token.encode()):
            return await handler(request)
        project = None
        if given.startswith(tenants.TOKEN_PREFIX):
            # looked up by hash: the token itself is never stored or compared
            project = await request.app[STORE].project_by_token_hash(tenants.hash_token(given))
        if project is None:
            return json_error(401, "missing or wrong bearer token")
        resource = request.match_info.route.resource
        route = (request.method, resource.canonical if resource else request.path)
        if route not in _PROJECT_ROUTES:
            return json_error(
                403, f"a token of project {project.name} may use only that project's jobs and "
                f"costs, not {request.method} {request.path}"
            )
        request[PROJECT_SCOPE] = project.name
    return await handler(request)


def _scope(request: web.Request) -> str | None:
    return request.get(PROJECT_SCOPE)


# -- job views ---------------------------------------------------------------------------


def attempt_json(a: Any) -> dict[str, Any]:
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


async def job_json(store: AsyncStore, job: Any, now: float) -> dict[str, Any]:
    attempts = await store.attempts(job.id)
    current = attempts[-1] if attempts else None
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
        "provider": current.provider if current else None,
        "region": current.region if current else None,
        "zone": current.zone if current else None,
        "market": current.market if current else None,
        "attempts": [attempt_json(a) for a in attempts],
        **await _gpu_json(store, current),
    }


async def _gpu_json(store: AsyncStore, attempt: Any) -> dict[str, Any]:
    """The current attempt's latest GPU samples per node, and a one-line summary."""
    if attempt is None:
        return {"gpus": [], "gpu_summary": "-"}
    nodes = []
    all_samples: list[gpu.GpuSample] | None = []
    for r in await store.instances(attempt_id=attempt.id):
        samples = None if r.gpus_json is None else gpu.parse_samples(json.loads(r.gpus_json))
        nodes.append({"node": r.node_rank, "at": r.gpus_at,
                      "gpus": None if samples is None else [s.to_json() for s in samples]})
        if samples is None:
            all_samples = None
        elif all_samples is not None:
            all_samples.extend(samples)
    return {"gpus": nodes, "gpu_summary": gpu.summarize(all_samples if nodes else None)}


def _job_id(request: web.Request) -> int:
    raw = request.match_info["job_id"]
    if not raw.isdigit():
        raise ApiError(400, f"job id must be a number, got {raw!r}")
    return int(raw)


async def _get_job(request: web.Request) -> Any:
    job = await request.app[STORE].get_job(_job_id(request))
    scope = _scope(request)
    if job is None or (scope is not None and job.project != scope):
        raise ApiError(404, f"no job {request.match_info['job_id']}")  # not: "not yours"
    return job


def _deadline(raw: str | None, now: float) -> float | None:
    if raw is None:
        return None
    try:
        return now + parse_duration(raw)
    except (ValueError, TypeError):
        pass
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ApiError(400, f"deadline must be a duration (6h) or ISO-8601, got {raw!r}") from exc
    return dt.timestamp() if dt.tzinfo else dt.astimezone().timestamp()


# -- handlers ----------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    ctl = request.app[CONTROLLER]
    return web.json_response(
        {"ok": True, "pid": os.getpid(), "home": str(s.home), "tasks": ctl.sup.names()}
    )


def _plan(task: Task, controller: Controller) -> list[Candidate]:
    return placement.candidates(
        task.resource_request(), controller.catalog, num_nodes=task.num_nodes
    )


def _with_infra(task: Task, infra: str) -> Task:
    """The task with ``infra`` as its only location: the top level's, and none of its own in
    any ``any_of``/``ordered`` entry. Re-validated, so a bad value is a 400 naming the field."""
    data = json.loads(task.model_dump_json(exclude_unset=True))  # unset stays unset: entries
    res = data.setdefault("resources", {})                       # still inherit from the top
    for key in ("cloud", "region", "zone"):
        res.pop(key, None)
    res["infra"] = infra
    for key in ("any_of", "ordered"):
        for entry in res.get(key) or []:
            for loc in ("infra", "cloud", "region", "zone"):
                entry.pop(loc, None)
    try:
        return Task.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, f"--infra {infra!r}: {exc.errors()[0]['msg']}") from exc


async def launch(request: web.Request) -> web.Response:
    body: LaunchBody = await _body(request, LaunchBody)
    ctl = request.app[CONTROLLER]
    store = request.app[STORE]
    try:
        tasks = load_tasks(body.filename, text=body.yaml, env_overrides=body.env)
    except SpecError as exc:
        raise ApiError(
            400,
            "invalid task YAML",
            [{"path": i.path, "line": i.line, "message": i.message} for i in exc.issues],
        ) from exc
    if len(tasks) != 1:
        raise ApiError(400, f"expected one task, the file has {len(tasks)} (pipelines are not "
                       "supported by spotd jobs launch)")
    task = tasks[0]
    if body.infra:
        task = _with_infra(task, body.infra)
    base = Path(body.base_dir or ".")
    _check_files(task, base)
    await _check_buckets(task, ctl)
    if not task.run:
        raise ApiError(400, "`run` is required for a managed job")
    if task.service is not None:
        raise ApiError(400, "this task has a `service:` section: use `spotctl serve up`")
    cands = _plan(task, ctl)
    if not cands:
        reason = placement.explain_infeasible(task.resource_request(), ctl.catalog)
        raise ApiError(400, f"no feasible placement: {reason}")
    project = _launch_project(request, body.project)
    await _check_quota(request, task, project)  # early: before any file is packaged
    now = time.time()
    deadline = (
        _deadline(body.deadline, now) if body.deadline
        else task.job_recovery.resolve_deadline(now)
    )
    if body.dry_run:
        return web.json_response(
            {
                "dry_run": True,
                "name": body.name or task.name,
                "resources": task.resources_summary(),
                "num_nodes": task.num_nodes,
                "candidates": candidates_table(cands),
            }
        )
    settings = request.app[SETTINGS]
    try:
        task, packed = await asyncio.to_thread(_package_files, task, base, settings.home / "cas")
    except PackageError as exc:
        raise ApiError(400, str(exc)) from exc
    async with request.app[LAUNCH_LOCK]:  # no other launch between the check and the insert
        await _check_quota(request, task, project)
        job = await store.create_job(
            name=body.name or task.name or "job",
            task_id_prefix=f"spotd-{settings.home_tag}-j",
            spec_json=task.model_dump_json(exclude_unset=True),
            spec_redacted_json=json.dumps(task.redacted()),
            resources=task.resources_summary(),
            submitted_at=now,
            project=project,
            deadline=deadline,
        )
    for what, p in packed:
        await store.add_event(
            kind="files.packaged",
            message=(
                f"{what}: {p.files} files, {p.bytes / 1e6:.1f} MB; transferred {p.new_files} "
                f"files, {p.new_bytes / 1e6:.1f} MB (the rest was already in the store)"
            ),
            now=now,
            job_id=job.id,
            data={"what": what, "files": p.files, "bytes": p.bytes, "new_files": p.new_files,
                  "new_bytes": p.new_bytes, "hashed_files": p.hashed_files},
        )
    ctl.spawn_worker(job.id)
    return web.json_response(await job_json(store, job, now), status=201)


def _local_source(source: str, base: Path) -> Path:
    p = Path(source).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _check_files(task: Task, base: Path) -> None:
    """Refuse bad paths before anything is stored or launched, naming the path."""
    if task.workdir:
        wd = _local_source(task.workdir, base)
        if not wd.is_dir():
            raise ApiError(400, f"workdir: {wd} is not a directory")
    for remote, mount in task.file_mounts.items():
        try:
            check_mount_target(remote)
        except PackageError as exc:
            raise ApiError(400, f"file_mounts: {exc}") from exc
        if "://" in mount.source:
            continue  # a bucket: checked by _check_buckets (the spec parser allows only s3://)
        src = _local_source(mount.source, base)
        if not src.exists():
            raise ApiError(400, f"file_mounts: {remote}: {src}: no such file or directory")
        if not os.access(src, os.R_OK):
            raise ApiError(400, f"file_mounts: {remote}: {src}: not readable")


async def _check_buckets(task: Task, ctl: Controller) -> None:
    """Refuse s3:// sources whose bucket is missing or unreachable (spotd.files.mounts), naming it."""
    sources = [(r, m.source) for r, m in task.file_mounts.items() if s3src.is_s3(m.source)]
    if not sources:
        return
    opts = s3src.options_from(ctl.providers)
    for remote, url in sources:
        try:
            await s3src.check_source(url, endpoint_url=opts.endpoint_url, profile=opts.profile)
        except ImportError as exc:
            raise ApiError(400, f"file_mounts: {remote}: {url}: aioboto3 is not installed "
                           "(pip install 'spotd[aws]')") from exc
        except s3src.S3Error as exc:
            raise ApiError(400, f"file_mounts: {remote}: {exc}") from exc


def _package_files(task: Task, base: Path, cas: Path) -> tuple[Task, list[tuple[str, Any]]]:
    """Package the workdir and the mounts into the content-addressed store (see workdir.py)."""
    if not task.workdir and not task.file_mounts:
        return task, []
    store = BlobStore(cas)
    cache = HashCache(cas / "hashes.db")
    packed: list[tuple[str, Any]] = []
    try:
        update: dict[str, Any] = {}
        if task.workdir:
            p = package(_local_source(task.workdir, base), store, cache)
            update["workdir"] = p.ref
            packed.append(("workdir", p))
        if task.file_mounts:
            mounts = {}
            for remote, mount in task.file_mounts.items():
                if s3src.is_s3(mount.source):
                    mounts[remote] = mount  # downloaded by the agent on every attempt
                    continue
                p = package(_local_source(mount.source, base), store, cache)
                mounts[remote] = mount.model_copy(update={"source": p.ref})
                packed.append((f"file_mounts {remote}", p))
            update["file_mounts"] = mounts
    finally:
        cache.close()
    return task.model_copy(update=update), packed


def _launch_project(request: web.Request, asked: str) -> str:
    scope = _scope(request)
    if scope is None:
        return asked
    if asked not in (tenants.DEFAULT_PROJECT, scope):
        raise ApiError(403, f"a token of project {scope} cannot launch into project {asked}")
    return scope


async def _project_use(request: web.Request, project: str) -> list[float]:
    """GPUs reserved by each active job of ``project``."""
    ctl = request.app[CONTROLLER]
    return [
        tenants.gpus_of(ctl.task_of(j))
        for j in await request.app[STORE].active_jobs()
        if j.project == project
    ]


async def _check_quota(request: web.Request, task: Task, project: str) -> None:
    """Refuse (403, nothing created) a launch that would take ``project`` over its quota."""
    row = await request.app[STORE].get_project(project)
    if row is None:
        if project == tenants.DEFAULT_PROJECT:
            return
        raise ApiError(404, f"no project {project!r}: create it with `spotctl project create`")
    requested = tenants.gpus_of(task)
    if row.gpu_quota is None or requested <= 0:
        return
    refusal = tenants.check_quota(
        project=project, quota=row.gpu_quota, active=await _project_use(request, project),
        requested=requested,
    )
    if refusal is not None:
        raise ApiError(
            403,
            refusal.message,
            {"project": project, "gpu_quota": refusal.quota, "gpus_in_use": refusal.in_use,
             "active_jobs": refusal.active_jobs, "gpus_requested": refusal.requested},
        )


async def list_jobs(request: web.Request) -> web.Response:
    store = request.app[STORE]
    statuses = None
    if "status" in request.query:
        try:
            statuses = [JobStatus(s.strip().upper()) for s in request.query["status"].split(",")]
        except ValueError as exc:
            raise ApiError(400, f"unknown status: {exc}") from exc
    now = time.time()
    jobs = await store.list_jobs(statuses=statuses)
    scope = _scope(request)
    if scope is not None:
        jobs = [j for j in jobs if j.project == scope]
    return web.json_response([await job_json(store, j, now) for j in jobs])


async def get_job(request: web.Request) -> web.Response:
    job = await _get_job(request)
    return web.json_response(await job_json(request.app[STORE], job, time.time()))


async def job_events(request: web.Request) -> web.Response:
    job = await _get_job(request)
    events = await request.app[STORE].events(job_id=job.id)
    return web.json_response(
        [
            {"id": e.id, "at": e.at, "kind": e.kind, "attempt_id": e.attempt_id, "message": e.message}
            for e in events
        ]
    )


async def cancel_job(request: web.Request) -> web.Response:
    job = await _get_job(request)
    store = request.app[STORE]
    if JobStatus(job.status).is_terminal:
        raise ApiError(409, f"job {job.id} is already {job.status}")
    try:
        job = await store.transition_job(
            job.id,
            from_=[s for s in JobStatus if not s.is_terminal and s != JobStatus.CANCELLING],
            to=JobStatus.CANCELLING,
            reason="cancel requested",
            now=time.time(),
        )
    except StaleTransition:
        job = await store.get_job(job.id)
    request.app[CONTROLLER].wake(job.id)
    return web.json_response(await job_json(store, job, time.time()))


def _log_files(settings: Settings, job_id: int, attempt: int) -> list[Path]:
    d = settings.logs_dir / f"j{job_id}-a{attempt}"
    return sorted(d.glob("node-*.log")) if d.exists() else []


def _drain(files: list[Path], offsets: dict[Path, int]) -> bytes:
    """New bytes of every node log since the last call (lines prefixed by node if several)."""
    out = []
    for f in files:
        with open(f, "rb") as fh:
            fh.seek(offsets.get(f, 0))
            data = fh.read()
        offsets[f] = offsets.get(f, 0) + len(data)
        if data and len(files) > 1:
            prefix = f"({f.stem}) ".encode()
            data = b"".join(prefix + line for line in data.splitlines(keepends=True))
        out.append(data)
    return b"".join(out)


async def job_logs(request: web.Request) -> web.StreamResponse:
    """Logs of every attempt in order (or of ``?attempt=N``); ``?follow=1`` streams to the end."""
    job = await _get_job(request)
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
    only = request.query.get("attempt")
    if only is not None and not only.isdigit():
        raise ApiError(400, "attempt must be a number")
    attempts = await store.attempts(job.id)
    if only is not None and not 1 <= int(only) <= len(attempts):
        raise ApiError(404, f"job {job.id} has no attempt {only} (it has {len(attempts)})")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    attempt = int(only) if only else 1
    offsets: dict[Path, int] = {}
    headed: set[int] = set()
    while True:
        attempts = await store.attempts(job.id)
        job = await store.get_job(job.id)
        if attempt <= len(attempts):
            a = attempts[attempt - 1]
            if attempt not in headed:
                headed.add(attempt)
                await resp.write(
                    f"=== attempt {a.attempt}: {a.provider}/{a.region}/{a.zone} "
                    f"{a.instance_type} {a.market} ===\n".encode()
                )
            data = await asyncio.to_thread(
                _drain, _log_files(settings, job.id, attempt), offsets
            )
            if data:
                await resp.write(data)
                continue
            if attempt < len(attempts) and only is None and (a.ended_at or not follow):
                attempt += 1
                continue
            done = only is not None and a.ended_at is not None
        else:
            done = only is not None
        if not follow or done or JobStatus(job.status).is_terminal:
            break
        await asyncio.sleep(0.2)
    await resp.write_eof()
    return resp


# -- chaos -------------------------------------------------------------------------------


def _local(ctl: Controller) -> LocalProvider:
    p = ctl.providers.get("local")
    if not isinstance(p, LocalProvider):
        raise ApiError(400, "chaos controls need the local provider")
    return p


def _targets(ctl: Controller, target: str) -> list[str]:
    if target.isdigit():
        found = ctl.instances_of_job(int(target))
        if not found:
            raise ApiError(404, f"job {target} has no live instance")
        return [found[0][1].id]  # node 0: preempting one node loses the whole attempt
    hit = ctl.provider_for_instance(target)
    if hit is None:
        raise ApiError(404, f"no live instance {target!r}")
    return [hit[1].id]


async def chaos_preempt(request: web.Request) -> web.Response:
    body: ChaosTarget = await _body(request, ChaosTarget)
    ctl = request.app[CONTROLLER]
    ids = _targets(ctl, body.target)
    for iid in ids:
        _local(ctl).preempt(iid, notice_seconds=body.notice_seconds)
    await request.app[STORE].add_event(
        kind="chaos.preempt",
        message=f"chaos: preempt {', '.join(ids)}"
        + (f" with a {body.notice_seconds:g}s notice" if body.notice_seconds else " (no notice)"),
        now=time.time(),
        job_id=int(body.target) if body.target.isdigit() else None,
    )
    return web.json_response({"preempted": ids, "notice_seconds": body.notice_seconds})


async def chaos_kill(request: web.Request) -> web.Response:
    body: ChaosTarget = await _body(request, ChaosTarget)
    ctl = request.app[CONTROLLER]
    ids = _targets(ctl, body.target)
    for iid in ids:
        _local(ctl).kill(iid)
    return web.json_response({"killed": ids})


async def chaos_partition(request: web.Request) -> web.Response:
    body: ChaosSeconds = await _body(request, ChaosSeconds)
    ctl = request.app[CONTROLLER]
    ids = _targets(ctl, body.target)
    for iid in ids:
        _local(ctl).partition(iid, seconds=body.seconds)
    return web.json_response({"partitioned": ids, "seconds": body.seconds})


async def chaos_stockout(request: web.Request) -> web.Response:
    body: ChaosStockout = await _body(request, ChaosStockout)
    try:
        _local(request.app[CONTROLLER]).stockout(body.target, seconds=body.seconds,
                                                 market=body.market)
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0])) from exc
    return web.json_response({"stocked_out": body.target, "seconds": body.seconds,
                              "market": None if body.market is None else str(body.market)})


# -- agents ------------------------------------------------------------------------------


def _append_log(path: Path, offset: int, data: bytes) -> int:
    """Write ``data`` that starts at byte ``offset``; returns the new acknowledged size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size if path.exists() else 0
    if offset > size:
        return size  # a gap: ask the agent to resend from what we have
    skip = size - offset
    if skip < len(data):
        with open(path, "ab") as f:
            f.write(data[skip:])
        size += len(data) - skip
    return size


async def heartbeat(request: web.Request) -> web.Response:
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    body: Heartbeat = await _body(request, Heartbeat)
    store = request.app[STORE]
    row = await store.get_instance(body.key)
    if row is None or not token or not hmac.compare_digest(row.token.encode(), token.encode()):
        return json_error(401, "unknown instance or wrong agent token")
    try:
        data = base64.b64decode(body.log_b64, validate=True)
    except ValueError as exc:
        raise ApiError(400, f"log_b64 is not base64: {exc}") from exc
    settings = request.app[SETTINGS]
    path = settings.logs_dir / row.attempt_id / f"node-{row.node_rank}.log"
    offset = await asyncio.to_thread(_append_log, path, body.log_offset, data)
    phase = body.phase if body.phase in {"starting", "setup", "run", "exited", "setup_failed", "preempted"} else None
    gpus_json = None
    if "gpus" in body.model_fields_set:  # an agent that says nothing about GPUs: leave as is
        try:
            gpus_json = json.dumps([s.to_json() for s in gpu.parse_samples(body.gpus)])
        except ValueError as exc:  # keep the heartbeat: it matters more than telemetry
            log.warning("bad GPU samples in heartbeat", key=body.key, error=str(exc))
    await store.record_heartbeat(
        body.key,
        now=time.time(),
        phase=phase,
        exit_code=body.exit_code,
        notice_deadline=body.notice_deadline,
        gpus_json=gpus_json,
    )
    await store.set_log_offset(body.key, offset)
    request.app[METRICS].heartbeats.inc()
    if phase != row.phase or body.exit_code != row.exit_code or (
        body.notice_deadline is not None and row.notice_deadline is None
    ):
        request.app[CONTROLLER].wake(row.job_id)
    return web.json_response({"log_offset": offset})


# -- cost and projects -------------------------------------------------------------------


async def cost(request: web.Request) -> web.Response:
    """``GET /v1/cost?by=job|service|project|region&since=...`` (see spotd.pricing.cost)."""
    try:
        by = costs.CostBy(request.query.get("by", "job"))
    except ValueError as exc:
        raise ApiError(400, f"by must be one of {', '.join(costs.CostBy)}") from exc
    now = time.time()
    since = None
    if request.query.get("since"):
        try:
            since = costs.parse_since(request.query["since"], now=now)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc
    store = request.app[STORE]
    index = costs.CatalogIndex(request.app[CONTROLLER].catalog)
    scope = _scope(request)
    usages: list[costs.Usage] = []
    for job in await store.list_jobs():
        if scope is not None and job.project != scope:
            continue
        if since is not None and job.ended_at is not None and job.ended_at < since:
            continue
        usages += [
            costs.usage_from_attempt(a, job=job, index=index) for a in await store.attempts(job.id)
        ]
    if scope in (None, tenants.DEFAULT_PROJECT):  # services belong to the default project
        for svc in await store.list_services():
            usages += [
                costs.usage_from_replica(r, service=svc.name, index=index)
                for r in await store.replicas(service_id=svc.id)
            ]
    rows, total = costs.cost_report(usages, by=by, since=since, now=now)
    return web.json_response(costs.report_json(rows, total, by=by, since=since, now=now))


async def create_project(request: web.Request) -> web.Response:
    body: ProjectBody = await _body(request, ProjectBody)
    why = tenants.validate_name(body.name)
    if why:
        raise ApiError(400, why)
    token = tenants.new_token()
    try:
        row = await request.app[STORE].create_project(
            name=body.name, gpu_quota=body.gpu_quota, token_hash=tenants.hash_token(token),
            now=time.time(),
        )
    except ProjectExists as exc:
        raise ApiError(409, str(exc)) from exc
    return web.json_response(
        {"name": row.name, "gpu_quota": row.gpu_quota, "created_at": row.created_at,
         "token": token},
        status=201,
    )


async def list_projects(request: web.Request) -> web.Response:
    scope = _scope(request)
    out = []
    for p in await request.app[STORE].list_projects():
        if scope is not None and p.name != scope:
            continue
        use = await _project_use(request, p.name)
        out.append({"name": p.name, "gpu_quota": p.gpu_quota, "gpus_in_use": sum(use),
                    "active_jobs": len(use), "created_at": p.created_at})
    return web.json_response(out)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    counts: dict[str, int] = {}
    for j in await request.app[STORE].list_jobs():
        counts[str(j.status)] = counts.get(str(j.status), 0) + 1
    for s in JobStatus:
        m.jobs_by_state.labels(str(s)).set(counts.get(str(s), 0))
    return web.Response(body=m.render(), content_type="text/plain")


def make_app(
    *,
    settings: Settings,
    store: AsyncStore,
    controller: Controller,
    metrics_: DaemonMetrics,
    tcp: bool = False,
) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=16 << 20)
    app[SETTINGS] = settings
    app[STORE] = store
    app[CONTROLLER] = controller
    app[METRICS] = metrics_
    app[TCP_APP] = tcp
    app[LAUNCH_LOCK] = asyncio.Lock()
    app.router.add_get("/v1/health", health)
    app.router.add_post("/v1/jobs", launch)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_get("/v1/jobs/{job_id}/events", job_events)
    app.router.add_get("/v1/jobs/{job_id}/logs", job_logs)
    app.router.add_post("/v1/jobs/{job_id}/cancel", cancel_job)
    app.router.add_post("/v1/chaos/preempt", chaos_preempt)
    app.router.add_post("/v1/chaos/kill-instance", chaos_kill)
    app.router.add_post("/v1/chaos/partition", chaos_partition)
    app.router.add_post("/v1/chaos/stockout", chaos_stockout)
    app.router.add_post("/agent/v1/heartbeat", heartbeat)
    app.router.add_get("/v1/cost", cost)
    app.router.add_post("/v1/projects", create_project)
    app.router.add_get("/v1/projects", list_projects)
    app.router.add_get("/metrics", metrics)
    from spotd.api.services import register_serve_routes  # imports this module: import here

    register_serve_routes(app)
    return app
