"""The daemon API's services routes: ``/v1/services...``, and the replica agents' heartbeats.

``add_routes(app)`` adds them to the daemon's application (``spotd.api.app.make_app``); the
``ServiceController`` is found on the ``SERVICES`` app key, which the composition root sets.
Errors follow ``spotd.api.common``: ``ApiError`` → a 4xx JSON body.

Replica agents are the job agent (``spotd.agent.main``) unchanged, so they post to the same
``/agent/v1/heartbeat``; ``spotd.api.agents`` hands the ones whose key is a replica key
(``s<service>-r<replica>``) to the service controller.

- ``POST /v1/services`` ``{yaml, filename, name?, env?, base_dir?, packages?, project?}`` →
  201 the service; 403 when it would take its project over a limit (its GPUs, its live
  services). ``packages`` names the workdir and local file_mounts the client uploaded
  (``/v1/blobs``), exactly as a job launch does; a path on the daemon's host instead is the
  admin's only, under ``file_roots`` (403 otherwise)
- ``GET /v1/services`` → every service that is not DOWN (``?all=1``: those too)
- ``GET /v1/services/{name}`` → the service (``?all=1``: ended replicas too)
- ``POST /v1/services/{name}/update`` ``{yaml, filename, mode: rolling|blue_green,
  packages?}``: the new version's replicas restore its packages
- ``POST /v1/services/{name}/down``
- ``GET /v1/services/{name}/events``
- ``GET /v1/services/{name}/logs?replica=N|lb=1&follow=1`` → text
- ``POST /v1/services/{name}/lb-events`` ``{lb_id, event: "ejected", replica_id, url,
  reason, at}`` → 202: the service's LB ejected a replica (it reports through the unix
  socket at once, so the daemon probes now instead of at its next read of the LB's stats)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import ssl
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import Field

from spotd.api.common import (
    SERVICES,
    SETTINGS,
    STORE,
    ApiError,
    Body,
    EpochSeconds,
    LineText,
    PathText,
    read_body,
    scope,
)
from spotd.api.files import Sha256
from spotd.api.logs import client_gone, following
from spotd.api.params import PathName, QueryFlag, QueryInt
from spotd.api.routes import Route
from spotd.clock import wall
from spotd.control import quota
from spotd.control.launcher import package_service_files
from spotd.control.lbkeeper import api_keys_of
from spotd.control.services import UPDATE_MODES, ServiceController, autoscale_policy
from spotd.control.submit import check_buckets, launch_project
from spotd.lb.auth import parse_keys
from spotd.spec import SpecError, Task, load_tasks_bounded
from spotd.store import (
    AsyncStore,
    OverQuota,
    ReplicaRow,
    ServiceExists,
    ServiceRow,
    ServiceStatus,
    StaleTransition,
)

# A service's name: it names the LB, log folders and the endpoint, so one short DNS-like label.
NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
NAME_HINT = "1-63 lowercase letters, digits and '-', starting with a letter or digit"
SERVICE_NAME = PathName("name", "service name", NAME_PATTERN, NAME_HINT)


class LBEventBody(Body):
    """What a service's LB reports at once (``spotd.lb.control.LbEvent``)."""

    lb_id: LineText = ""
    event: Literal["ejected"]
    replica_id: str = Field(min_length=1, max_length=64)
    url: str = Field(default="", max_length=2048)
    reason: str = Field(default="", max_length=4096)  # an exception's text; shortened
    at: EpochSeconds | None = None


class ServiceUpBody(Body):
    """A service to start."""

    yaml: str = Field(min_length=1)  # its size is bounded by the spec's loader (YamlLimits)
    filename: PathText = "<api>"
    name: str | None = Field(default=None, max_length=64)
    env: dict[str, str] = Field(default_factory=dict, max_length=1024)
    base_dir: PathText | None = None
    # the packages the client uploaded (as a job launch's): "workdir" or a mount target → sha
    packages: dict[PathText, Sha256] = Field(default_factory=dict, max_length=1024)
    # the project the service belongs to and reserves its GPUs from (default: ``default``)
    project: str | None = Field(default=None, max_length=64)


class ServiceUpdateBody(Body):
    """A new version of a service's task, and how to roll it out."""

    yaml: str = Field(min_length=1)
    filename: PathText = "<api>"
    mode: str = Field(default="rolling", max_length=32)
    env: dict[str, str] = Field(default_factory=dict, max_length=1024)
    base_dir: PathText | None = None
    packages: dict[PathText, Sha256] = Field(default_factory=dict, max_length=1024)


# -- views -------------------------------------------------------------------------------


def replica_json(r: ReplicaRow) -> dict[str, Any]:
    return {
        "id": r.replica_id,
        "key": r.key,
        "status": str(r.status),
        "url": r.url or None,
        "version": r.version,
        "provider": r.provider,
        "region": r.region,
        "zone": r.zone,
        "market": str(r.market),
        "instance_type": r.instance_type,
        "price_per_hour": r.price_per_hour,
        "instance_id": r.instance_id,
        "port": r.port,
        "created_at": r.created_at,
        "ready_at": r.ready_at,
        "ended_at": r.ended_at,
        "message": r.message,
    }


async def service_json(
    services: ServiceController, svc: ServiceRow, *, all_replicas: bool = False
) -> dict[str, Any]:
    rows = await services.store.replicas(service_id=svc.id, live_only=not all_replicas)
    task = Task.model_validate(json.loads(svc.spec_json))  # the row's: no controller cache
    spec = task.service
    assert spec is not None
    policy = autoscale_policy(spec)
    live = [r for r in rows if not r.status.is_terminal]
    return {
        "id": svc.id,
        "name": svc.name,
        "project": svc.project,
        "gpus": svc.gpus,
        "status": str(svc.status),
        "endpoint": services.endpoint(svc),
        "version": svc.version,
        "update_mode": svc.update_mode,
        "target": svc.target,
        "min_replicas": policy.min_replicas,
        "max_replicas": policy.max_replicas,
        "ready_replicas": sum(1 for r in live if str(r.status) == "READY"),
        "load_balancing_policy": str(spec.load_balancing_policy),
        "message": svc.message,
        "created_at": svc.created_at,
        "ended_at": svc.ended_at,
        "lb": {"pid": svc.lb_pid, "port": svc.lb_port, "control_port": svc.lb_control_port},
        "price_per_hour": round(sum(r.price_per_hour for r in live), 4),
        "replicas": [replica_json(r) for r in rows],
    }


# -- handlers ----------------------------------------------------------------------------


def _services(request: web.Request) -> ServiceController:
    services = request.app.get(SERVICES)
    if services is None:
        raise ApiError(503, "services are not enabled in this daemon")
    return services


async def _parse(body: ServiceUpBody | ServiceUpdateBody) -> Task:
    try:  # off the event loop, under the spec's limits (see parse_task in control.submit)
        tasks = await load_tasks_bounded(body.filename, text=body.yaml, env_overrides=body.env)
    except SpecError as exc:
        raise ApiError(
            400,
            "invalid service YAML",
            [{"path": i.path, "line": i.line, "message": i.message} for i in exc.issues],
        ) from exc
    if len(tasks) != 1:
        raise ApiError(400, f"expected one task, the file has {len(tasks)}")
    task = tasks[0]
    if task.service is None:
        raise ApiError(
            400, "the task has no `service:` section (a managed job? use `spotctl jobs launch`)"
        )
    if not task.run:
        raise ApiError(
            400, "`run` is required: it starts the replica's server on $SPOTD_REPLICA_PORT"
        )
    if task.num_nodes != 1:
        raise ApiError(400, "a service replica runs on one node (num_nodes: 1)")
    return await _endpoint_security(task, body.base_dir)


async def _ship(
    request: web.Request, body: ServiceUpBody | ServiceUpdateBody, task: Task
) -> tuple[Task, list[str]]:
    """The version's workdir and local file_mounts as packages, as a job launch's: what the
    client uploaded (``packages``), or the admin's paths under ``file_roots``
    (``control.launcher.package_service_files``; a refusal is a 400 or a 403). Its
    ``s3://`` sources are checked as a job's are (``control.submit.check_buckets``)."""
    await check_buckets(task, request.app[SERVICES].providers, scope(request))
    return await package_service_files(
        task,
        settings=request.app[SETTINGS],
        packages=body.packages,
        scope=scope(request),
        base=Path(body.base_dir or "."),
    )


def _tls_files(certfile: str, keyfile: str) -> str | None:
    """Why the LB could not serve HTTPS with these files, or None (read as the LB will)."""
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _endpoint_security(task: Task, base_dir: str | None) -> Task:
    """The service's ``tls`` files resolved (``~``, relative to the YAML's folder) and
    checked, and its API keys found: a service is refused at ``up``/``update`` rather than
    left with an LB that cannot start or a key setting that names nothing."""
    spec = task.service
    assert spec is not None
    if spec.api_keys_env:
        name = spec.api_keys_env
        if name not in task.secrets and name not in task.envs:
            raise ApiError(
                400,
                f"service.api_keys_env: no secret or env named {name} "
                f"(add `secrets: {{{name}: null}}` and give it with --env {name}=KEY1,KEY2)",
            )
        try:
            parse_keys((task.secrets.get(name) or task.envs.get(name) or "").split(","))
        except ValueError as exc:
            raise ApiError(400, f"service.api_keys_env: {name}: {exc}") from None
        if not api_keys_of(task).keys:
            raise ApiError(
                400,
                f"service.api_keys_env: {name} holds no key (give --env {name}=KEY1,KEY2)",
            )
    if spec.tls is None:
        return task
    base = Path(base_dir or ".")
    paths: dict[str, str] = {}
    for field in ("certfile", "keyfile"):
        raw = getattr(spec.tls, field)
        try:
            p = Path(raw).expanduser()
            paths[field] = str(p if p.is_absolute() else (base / p).resolve())
        except (OSError, RuntimeError, ValueError):
            raise ApiError(400, f"service.tls.{field}: {raw} is not a usable path") from None
    why = await asyncio.to_thread(_tls_files, paths["certfile"], paths["keyfile"])
    if why:
        raise ApiError(400, f"service.tls: cannot serve HTTPS with these files: {why}")
    tls = spec.tls.model_copy(update=paths)
    return task.model_copy(update={"service": spec.model_copy(update={"tls": tls})})


def _check_placeable(services: ServiceController, task: Task, project: str) -> None:
    if services.plan_for(task, project).zones:
        return
    barred = [why for p, why in services.barred(project).items() if p in services.providers]
    if barred:  # only a provider the admin bars the project from could have placed them
        raise ApiError(
            403, f"no feasible placement for the replicas' resources; {'; '.join(barred)}"
        )
    raise ApiError(400, "no feasible placement for the replicas' resources")


async def _service(request: web.Request) -> ServiceRow:
    name = SERVICE_NAME.parse(request)
    svc = await request.app[STORE].service_by_name(name)
    if svc is None:
        raise ApiError(404, f"no service {name!r}")
    return svc


async def _service_project(store: AsyncStore, body: ServiceUpBody, limit: str | None) -> str:
    """The project a new service belongs to: as a job's (``launch_project``), and it exists."""
    name = launch_project(body.project or quota.DEFAULT_PROJECT, limit)
    if name != quota.DEFAULT_PROJECT and await store.get_project(name) is None:
        why = quota.validate_name(name)
        raise ApiError(404, why or f"no project {name!r}: create it with `spotctl project create`")
    return name


async def service_up(request: web.Request) -> web.Response:
    """Start a service: its LB, then its replicas. It reserves its GPUs (as many replicas as
    it may run) from its project's quota; a project over a limit is refused with a 403."""
    body: ServiceUpBody = await read_body(request, ServiceUpBody)
    services = _services(request)
    store = request.app[STORE]
    project = await _service_project(store, body, scope(request))
    task = await _parse(body)
    task, shipped = await _ship(request, body, task)
    name = (body.name or task.name or "").strip().lower()
    if not name:
        raise ApiError(400, "the service needs a name: give `name:` in the YAML or -n NAME")
    if not re.fullmatch(NAME_PATTERN, name):
        raise ApiError(400, f"service name {name[:80]!r}: use {NAME_HINT}")
    _check_placeable(services, task, project)
    gpus = quota.service_reservation(
        task, services.catalog, enabled_providers=services.providers.keys()
    )
    lb_port, control_port = await services.allocate_lb_ports()
    spec = task.service
    assert spec is not None
    try:
        svc = await store.create_service(
            name=name,
            spec_json=task.model_dump_json(exclude_unset=True),
            spec_redacted_json=json.dumps(task.redacted()),
            lb_port=lb_port,
            lb_control_port=control_port,
            lb_token=secrets.token_urlsafe(24),
            target=autoscale_policy(spec).min_replicas,
            now=wall(),
            project=project,
            gpus=gpus,
            admit=quota.service_admission(gpus=gpus),
        )
    except ServiceExists as exc:
        raise ApiError(409, str(exc)) from exc
    except OverQuota as exc:  # as a job's refusal: the message and the numbers
        raise ApiError(403, exc.message, exc.details) from exc
    for line in shipped:
        await store.update_service_fields(svc.id, now=wall(), event=f"v1 {line}")
    services.spawn(svc.id)
    return web.json_response(await service_json(services, svc), status=201)


async def list_services(request: web.Request) -> web.Response:
    """Every service that is not DOWN (``?all=1``: those too)."""
    services = _services(request)
    rows = await request.app[STORE].list_services(live_only=not ALL.parse(request))
    return web.json_response([await service_json(services, s) for s in rows])


async def get_service(request: web.Request) -> web.Response:
    """The service and its live replicas (``?all=1``: ended ones too)."""
    all_replicas = ALL.parse(request)
    services = _services(request)
    svc = await _service(request)
    return web.json_response(await service_json(services, svc, all_replicas=all_replicas))


async def update_service(request: web.Request) -> web.Response:
    """Roll out a new version of the service's task (``rolling`` or ``blue_green``)."""
    body: ServiceUpdateBody = await read_body(request, ServiceUpdateBody)
    services = _services(request)
    if body.mode not in UPDATE_MODES:
        raise ApiError(400, f"mode must be one of {', '.join(UPDATE_MODES)}, got {body.mode!r}")
    svc = await _service(request)
    task = await _parse(body)
    _check_placeable(services, task, svc.project)
    task, shipped = await _ship(request, body, task)
    try:
        svc = await request.app[STORE].add_service_version(
            svc.id,
            spec_json=task.model_dump_json(exclude_unset=True),
            spec_redacted_json=json.dumps(task.redacted()),
            mode=body.mode,
            now=wall(),
        )
    except StaleTransition as exc:
        raise ApiError(409, f"service {svc.name!r} is {exc.current}: it cannot be updated") from exc
    for line in shipped:
        await request.app[STORE].update_service_fields(
            svc.id, now=wall(), event=f"v{svc.version} {line}"
        )
    services.wake(svc.id)
    return web.json_response(await service_json(services, svc))


async def down_service(request: web.Request) -> web.Response:
    """Shut the service down: replicas, then its LB."""
    services = _services(request)
    svc = await _service(request)
    if svc.status in (ServiceStatus.DOWN, ServiceStatus.SHUTTING_DOWN):
        return web.json_response(await service_json(services, svc))
    try:
        svc = await request.app[STORE].transition_service(
            svc.id,
            from_=[svc.status],
            to=ServiceStatus.SHUTTING_DOWN,
            reason="serve down requested",
            now=wall(),
        )
    except StaleTransition:
        fresh = await request.app[STORE].get_service(svc.id)
        assert fresh is not None
        svc = fresh
    services.resume(svc)  # a no-op while its worker runs; restarts one that had ended
    return web.json_response(await service_json(services, svc))


async def service_events(request: web.Request) -> web.Response:
    """The service's events, oldest first."""
    svc = await _service(request)
    events = await request.app[STORE].service_events(svc.id)
    return web.json_response(
        [
            {"id": e.id, "at": e.at, "kind": e.kind, "replica": e.attempt_id, "message": e.message}
            for e in events
        ]
    )


async def service_logs(request: web.Request) -> web.StreamResponse:
    """One replica's log (``?replica=N``), the LB's (``?lb=1``), or every replica's in turn;
    ``?follow=1`` keeps streaming until the replica (or the service) ends."""
    follow = FOLLOW.parse(request)
    lb = LB.parse(request)
    only = REPLICA.parse(request)
    services = _services(request)
    svc = await _service(request)
    store = request.app[STORE]
    rows = await store.replicas(service_id=svc.id)
    if only is not None and only not in {r.replica_id for r in rows}:
        raise ApiError(404, f"service {svc.name!r} has no replica {only}")
    if lb:
        files = [("", services.lb_log(svc))]
    elif only is not None:
        files = [("", services.replica_log(svc, only))]
    else:
        files = [
            (
                f"=== replica {r.replica_id} (v{r.version}, {r.status}) ===\n",
                services.replica_log(svc, r.replica_id),
            )
            for r in rows
        ]
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    offsets: dict[Path, int] = {}
    for head, path in files:
        if head:
            await resp.write(head.encode())
        await resp.write(await asyncio.to_thread(_read_from, path, offsets))
    with following(request) if follow else contextlib.nullcontext():
        try:
            while follow and not client_gone(request):  # a follower ends with its client
                fresh = await store.get_service(svc.id)
                if fresh is None or fresh.status == ServiceStatus.DOWN:
                    break
                if only is not None:
                    r = await store.get_replica(f"s{svc.id}-r{only}")
                    if r is None or r.status.is_terminal:
                        tail = await asyncio.to_thread(_read_from, files[0][1], offsets)
                        await resp.write(tail)
                        break
                for _, path in files[-1:]:
                    data = await asyncio.to_thread(_read_from, path, offsets)
                    if data:
                        await resp.write(data)
                await asyncio.sleep(0.2)
        except ConnectionResetError:
            return resp  # the client went away mid-write
    if not client_gone(request):
        await resp.write_eof()
    return resp


async def lb_event(request: web.Request) -> web.Response:
    """The service's LB ejected a replica: record it, and probe the replicas now."""
    body: LBEventBody = await read_body(request, LBEventBody)
    svc = await _service(request)
    _services(request).note_ejection(svc.id)
    reason = body.reason[:200] or "no reason given"
    await request.app[STORE].update_service_fields(
        svc.id,
        now=wall(),
        event=f"load balancer {body.lb_id or '?'} ejected replica {body.replica_id}: {reason}",
    )
    return web.json_response(
        {"service": svc.name, "event": body.event, "replica_id": body.replica_id}, status=202
    )


def _read_from(path: Path, offsets: dict[Path, int]) -> bytes:
    if not path.exists():
        return b""
    with open(path, "rb") as f:
        f.seek(offsets.get(path, 0))
        data = f.read()
    offsets[path] = offsets.get(path, 0) + len(data)
    return data


ALL = QueryFlag("all", "include what has ended (services that are DOWN, ended replicas)")
FOLLOW = QueryFlag("follow", "keep streaming until the replica (or the service) ends")
LB = QueryFlag("lb", "the load balancer's log instead of the replicas'")
REPLICA = QueryInt("replica", "only this replica's log")

ROUTES = (
    Route(
        "POST",
        "/v1/services",
        service_up,
        "Start a service",
        "services",
        body=ServiceUpBody,
        ok=(201,),
        errors=(403, 404, 409, 503),
    ),
    Route(
        "GET",
        "/v1/services",
        list_services,
        "List services",
        "services",
        params=(ALL,),
        errors=(503,),
    ),
    Route(
        "GET",
        "/v1/services/{name}",
        get_service,
        "A service, with its replicas",
        "services",
        params=(SERVICE_NAME, ALL),
        errors=(404, 503),
    ),
    Route(
        "POST",
        "/v1/services/{name}/update",
        update_service,
        "Update a service to a new version",
        "services",
        body=ServiceUpdateBody,
        params=(SERVICE_NAME,),
        errors=(403, 404, 409, 503),
    ),
    Route(
        "POST",
        "/v1/services/{name}/down",
        down_service,
        "Shut a service down",
        "services",
        params=(SERVICE_NAME,),
        errors=(404, 503),
    ),
    Route(
        "GET",
        "/v1/services/{name}/events",
        service_events,
        "A service's events",
        "services",
        params=(SERVICE_NAME,),
        errors=(404,),
    ),
    Route(
        "GET",
        "/v1/services/{name}/logs",
        service_logs,
        "A service's logs (text)",
        "services",
        params=(SERVICE_NAME, FOLLOW, LB, REPLICA),
        errors=(404, 503),
        text=True,
    ),
    Route(
        "POST",
        "/v1/services/{name}/lb-events",
        lb_event,
        "An LB's report of an ejected replica",
        "services",
        body=LBEventBody,
        params=(SERVICE_NAME,),
        ok=(202,),
        errors=(404, 503),
    ),
)

__all__ = ["ROUTES", "SERVICES", "SERVICE_NAME", "service_json"]
