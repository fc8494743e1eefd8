"""The daemon API's services routes: ``/v1/services...``, and the replica agents' heartbeats.

``add_routes(app)`` adds them to the daemon's application (``spotd.api.app.make_app``); the
``ServiceController`` is found on the ``SERVICES`` app key, which the composition root sets.
Errors follow ``spotd.api.common``: ``ApiError`` → a 4xx JSON body.

Replica agents are the job agent (``spotd.agent.main``) unchanged, so they post to the same
``/agent/v1/heartbeat``; a small middleware hands the ones whose key is a replica key
(``s<service>-r<replica>``) to the service controller and lets the job route see the rest.

- ``POST /v1/services`` ``{yaml, filename, name?, env?, base_dir?}`` → 201 the service
- ``GET /v1/services`` → every service that is not DOWN (``?all=1``: those too)
- ``GET /v1/services/{name}`` → the service (``?all=1``: ended replicas too)
- ``POST /v1/services/{name}/update`` ``{yaml, filename, mode: rolling|blue_green}``
- ``POST /v1/services/{name}/down``
- ``GET /v1/services/{name}/events``
- ``GET /v1/services/{name}/logs?replica=N|lb=1&follow=1`` → text
- ``POST /v1/services/{name}/lb-events`` ``{lb_id, event: "ejected", replica_id, url,
  reason, at}`` → 202: the service's LB ejected a replica (it reports through the unix
  socket at once, so the daemon probes now instead of at its next read of the LB's stats)
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import Field

from spotd.api.common import (
    SERVICES,
    STORE,
    ApiError,
    Body,
    Handler,
    flag,
    json_error,
    read_body,
)
from spotd.control.services import UPDATE_MODES, ServiceController, autoscale_policy
from spotd.spec import SpecError, Task, load_tasks_bounded
from spotd.store import ReplicaRow, ServiceExists, ServiceRow, ServiceStatus, StaleTransition

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class LBEventBody(Body):
    lb_id: str = ""
    event: Literal["ejected"]
    replica_id: str = Field(min_length=1, max_length=64)
    url: str = ""
    reason: str = ""  # an exception's text; shortened in the event
    at: float | None = None


class ServiceUpBody(Body):
    yaml: str = Field(min_length=1)
    filename: str = "<api>"
    name: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    base_dir: str | None = None


class ServiceUpdateBody(Body):
    yaml: str = Field(min_length=1)
    filename: str = "<api>"
    mode: str = "rolling"
    env: dict[str, str] = Field(default_factory=dict)
    base_dir: str | None = None


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
    if task.workdir and not Path(task.workdir).expanduser().is_absolute():
        base = Path(body.base_dir or ".")
        task = task.model_copy(update={"workdir": str((base / task.workdir).resolve())})
    if task.workdir and not Path(task.workdir).expanduser().is_dir():
        raise ApiError(400, f"workdir: {task.workdir} is not a directory")
    return task


def _check_placeable(services: ServiceController, task: Task) -> None:
    if not services.plan_for(task).zones:
        raise ApiError(400, "no feasible placement for the replicas' resources")


async def _service(request: web.Request) -> ServiceRow:
    name = request.match_info["name"]
    svc = await request.app[STORE].service_by_name(name)
    if svc is None:
        raise ApiError(404, f"no service {name!r}")
    return svc


async def service_up(request: web.Request) -> web.Response:
    body: ServiceUpBody = await read_body(request, ServiceUpBody)
    services = _services(request)
    task = await _parse(body)
    name = (body.name or task.name or "").strip().lower()
    if not name:
        raise ApiError(400, "the service needs a name: give `name:` in the YAML or -n NAME")
    if set(name) - _NAME_CHARS or name.startswith("-"):
        raise ApiError(400, f"service name {name!r}: use lowercase letters, digits and '-'")
    _check_placeable(services, task)
    lb_port, control_port = await services.allocate_lb_ports()
    spec = task.service
    assert spec is not None
    try:
        svc = await request.app[STORE].create_service(
            name=name,
            spec_json=task.model_dump_json(exclude_unset=True),
            spec_redacted_json=json.dumps(task.redacted()),
            lb_port=lb_port,
            lb_control_port=control_port,
            lb_token=secrets.token_urlsafe(24),
            target=autoscale_policy(spec).min_replicas,
            now=time.time(),
        )
    except ServiceExists as exc:
        raise ApiError(409, str(exc)) from exc
    services.spawn(svc.id)
    return web.json_response(await service_json(services, svc), status=201)


async def list_services(request: web.Request) -> web.Response:
    services = _services(request)
    rows = await request.app[STORE].list_services(live_only=not flag(request, "all"))
    return web.json_response([await service_json(services, s) for s in rows])


async def get_service(request: web.Request) -> web.Response:
    services = _services(request)
    svc = await _service(request)
    return web.json_response(await service_json(services, svc, all_replicas=flag(request, "all")))


async def update_service(request: web.Request) -> web.Response:
    body: ServiceUpdateBody = await read_body(request, ServiceUpdateBody)
    services = _services(request)
    if body.mode not in UPDATE_MODES:
        raise ApiError(400, f"mode must be one of {', '.join(UPDATE_MODES)}, got {body.mode!r}")
    svc = await _service(request)
    task = await _parse(body)
    _check_placeable(services, task)
    try:
        svc = await request.app[STORE].add_service_version(
            svc.id,
            spec_json=task.model_dump_json(exclude_unset=True),
            spec_redacted_json=json.dumps(task.redacted()),
            mode=body.mode,
            now=time.time(),
        )
    except StaleTransition as exc:
        raise ApiError(409, f"service {svc.name!r} is {exc.current}: it cannot be updated") from exc
    services.wake(svc.id)
    return web.json_response(await service_json(services, svc))


async def down_service(request: web.Request) -> web.Response:
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
            now=time.time(),
        )
    except StaleTransition:
        fresh = await request.app[STORE].get_service(svc.id)
        assert fresh is not None
        svc = fresh
    services.spawn(svc.id)  # a no-op while its worker runs; restarts one that had ended
    services.wake(svc.id)
    return web.json_response(await service_json(services, svc))


async def service_events(request: web.Request) -> web.Response:
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
    services = _services(request)
    svc = await _service(request)
    follow = flag(request, "follow")
    only = request.query.get("replica")
    if only is not None and not only.isdigit():
        raise ApiError(400, "replica must be a number")
    store = request.app[STORE]
    rows = await store.replicas(service_id=svc.id)
    if only is not None and int(only) not in {r.replica_id for r in rows}:
        raise ApiError(404, f"service {svc.name!r} has no replica {only}")
    if flag(request, "lb"):
        files = [("", services.lb_log(svc))]
    elif only is not None:
        files = [("", services.replica_log(svc, int(only)))]
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
    while follow:
        fresh = await store.get_service(svc.id)
        if fresh is None or fresh.status == ServiceStatus.DOWN:
            break
        if only is not None:
            r = await store.get_replica(f"s{svc.id}-r{only}")
            if r is None or r.status.is_terminal:
                await resp.write(await asyncio.to_thread(_read_from, files[0][1], offsets))
                break
        for _, path in files[-1:]:
            data = await asyncio.to_thread(_read_from, path, offsets)
            if data:
                await resp.write(data)
        await asyncio.sleep(0.2)
    await resp.write_eof()
    return resp


async def lb_event(request: web.Request) -> web.Response:
    body: LBEventBody = await read_body(request, LBEventBody)
    svc = await _service(request)
    _services(request).note_ejection(svc.id)
    reason = body.reason[:200] or "no reason given"
    await request.app[STORE].update_service_fields(
        svc.id,
        now=time.time(),
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


# -- replica agents ----------------------------------------------------------------------


@web.middleware
async def replica_heartbeats(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Heartbeats from replica agents go to the service controller; job agents' pass on."""
    services = request.app.get(SERVICES)
    if services is None or request.path != "/agent/v1/heartbeat" or request.method != "POST":
        return await handler(request)
    try:
        raw = await request.json()  # the body is cached: the job handler can read it again
    except (json.JSONDecodeError, UnicodeDecodeError):
        return await handler(request)
    key = raw.get("key") if isinstance(raw, dict) else None
    if not isinstance(key, str) or not key.startswith("s"):
        return await handler(request)
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    try:
        data = base64.b64decode(str(raw.get("log_b64", "")), validate=True)
        offset = int(raw.get("log_offset", 0))
        exit_code = raw.get("exit_code")
        notice = raw.get("notice_deadline")
        acked = await services.replica_heartbeat(
            key=key,
            token=token,
            phase=str(raw["phase"]) if raw.get("phase") else None,
            exit_code=int(exit_code) if exit_code is not None else None,
            notice_deadline=float(notice) if notice is not None else None,
            log_offset=max(0, offset),
            log_data=data,
        )
    except (ValueError, TypeError) as exc:
        return json_error(400, f"invalid heartbeat: {exc}")
    if acked is None:
        return json_error(401, "unknown replica or wrong agent token")
    return web.json_response({"log_offset": acked})


def add_routes(app: web.Application) -> None:
    """Add the services routes and the replica heartbeat middleware to the daemon's app."""
    app.middlewares.append(replica_heartbeats)
    app.router.add_post("/v1/services", service_up)
    app.router.add_get("/v1/services", list_services)
    app.router.add_get("/v1/services/{name}", get_service)
    app.router.add_post("/v1/services/{name}/update", update_service)
    app.router.add_post("/v1/services/{name}/down", down_service)
    app.router.add_get("/v1/services/{name}/events", service_events)
    app.router.add_get("/v1/services/{name}/logs", service_logs)
    app.router.add_post("/v1/services/{name}/lb-events", lb_event)


__all__ = ["SERVICES", "add_routes", "service_json"]
