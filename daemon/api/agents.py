"""The job agents' routes: ``POST /agent/v1/bootstrap`` and ``POST /agent/v1/heartbeat``.

An agent on an instance that was handed only a one-time bootstrap token
(``spotd.providers.aws.bootstrap``) trades it once for its config — the task's secrets and its
long-lived agent token included — over the daemon's TLS listener; a replay, a forged or an
expired token is refused (401) and the config is not handed out again.

An agent (``spotd.agent.main``) posts its phase, exit code, any interruption notice, GPU
samples and the next slice of its node's log, with the per-instance token the daemon gave it.
The log slice starts at ``log_offset``: the answer says how much the daemon holds, so a slice
lost on the way is sent again and one sent twice is written once. Replica agents post to the
same path (the agent is the same program); their keys (``s<service>-r<replica>``) go to the
service controller, after the same checks of the body.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from typing import Any

import structlog
from aiohttp import web
from pydantic import Field

from spotd.api.common import (
    CONTROLLER,
    METRICS,
    SERVICES,
    SETTINGS,
    STORE,
    ApiError,
    Body,
    EpochSeconds,
    json_error,
    read_body,
)
from spotd.api.routes import AGENT, Route
from spotd.clock import wall
from spotd.control.keepalive import KeepAlive, is_keepalive
from spotd.control.logs import append_log
from spotd.control.node_keys import node_log_name
from spotd.providers.aws.bootstrap import BOOTSTRAP_PATH, check_bootstrap
from spotd.store import InstanceRow
from spotd.telemetry import gpu

__all__ = ["ROUTES", "Bootstrap", "Heartbeat"]

log = structlog.get_logger("spotd.api.agents")

_PHASES = frozenset(
    {"starting", "setup", "run", "exited", "setup_failed", "preempted", "restarting", "waiting"}
)


class Heartbeat(Body):
    """What an agent reports every few seconds (``spotd.agent.main``)."""

    key: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")  # j<job>-a<n>-n<rank>, s<svc>-r<n>
    phase: str = Field(max_length=32)  # unknown phases are ignored (a newer agent)
    exit_code: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    notice_deadline: EpochSeconds | None = None
    log_offset: int = Field(ge=0, le=2**63 - 1)
    log_b64: str = ""
    checkpoint_synced_at: EpochSeconds | None = None
    checkpoint_progress: float | None = Field(default=None, ge=0.0, le=1.0)  # that snapshot's
    gpus: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    generation: int = Field(default=0, ge=0, le=2**31 - 1)  # its node list's (agent.gang)


class Bootstrap(Body):
    """Which instance's config the agent asks for; the token is in ``Authorization``."""

    key: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")


async def bootstrap(request: web.Request) -> web.Response:
    """The agent's config, once, for the instance's bootstrap token."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    body = await read_body(request, Bootstrap)
    store = request.app[STORE]
    row = await store.get_instance(body.key)
    now = wall()
    verdict = check_bootstrap(
        token,
        key=body.key,
        agent_token=None if row is None else row.token,
        bootstrapped_at=None if row is None else row.bootstrapped_at,
        holds_config=row is not None and row.agent_json is not None,
        now=now,
    )
    if verdict.ok:
        held = await store.take_agent_config(body.key, now=now)
        if held is not None:
            log.info("agent bootstrapped", key=body.key)
            return web.json_response({"config": json.loads(held)})
        verdict = check_bootstrap(  # another request took it between the read and the take
            token,
            key=body.key,
            agent_token=row.token if row else None,
            bootstrapped_at=now,
            holds_config=False,
            now=now,
        )
    log.warning("agent bootstrap refused", key=body.key, reason=verdict.reason)
    return json_error(verdict.status, verdict.reason)


def _log_data(body: Heartbeat) -> bytes:
    try:
        return base64.b64decode(body.log_b64, validate=True)
    except ValueError as exc:
        raise ApiError(400, f"log_b64 is not base64: {exc}") from exc


def _replica_gpus(body: Heartbeat) -> list[gpu.GpuSample] | None:
    """A replica's GPU samples for the autoscaler's ``target_gpu_utilization`` (None: the
    agent said nothing about GPUs, or said it badly: the heartbeat matters more)."""
    if "gpus" not in body.model_fields_set:
        return None
    try:
        return gpu.parse_samples(body.gpus)
    except ValueError as exc:
        log.warning("bad GPU samples in heartbeat", key=body.key, error=str(exc))
        return None


async def _record(
    request: web.Request,
    body: Heartbeat,
    row: InstanceRow,
    data: bytes,
    phase: str | None,
    now: float,
) -> int:
    """The full path of a heartbeat with news: the log slice, the fields, remembered for the
    keep-alives that follow (``spotd.control.keepalive``); the log size now held."""
    store = request.app[STORE]
    settings = request.app[SETTINGS]
    path = settings.logs_dir / row.attempt_id / node_log_name(row.key, row.node_rank)
    if data or body.log_offset != row.log_offset:
        offset = await asyncio.to_thread(append_log, path, body.log_offset, data)
    else:  # a keep-alive with no log: nothing to write, the daemon holds what it held
        offset = row.log_offset
    gpus_json = None
    if "gpus" in body.model_fields_set:  # an agent that says nothing about GPUs: leave as is
        try:
            gpus_json = json.dumps([s.to_json() for s in gpu.parse_samples(body.gpus)])
        except ValueError as exc:  # keep the heartbeat: it matters more than telemetry
            log.warning("bad GPU samples in heartbeat", key=body.key, error=str(exc))
    written = await store.record_heartbeat(
        body.key,
        now=now,
        phase=phase,
        exit_code=body.exit_code,
        notice_deadline=body.notice_deadline,
        gpus_json=gpus_json,
        log_offset=offset if offset != row.log_offset else None,
    )
    request.app[CONTROLLER].keepalives.remember(written, now)
    return offset


async def heartbeat(request: web.Request) -> web.Response:
    """An agent's phase, exit code, notice, GPU samples and the next slice of its log; the
    answer says how much of the log the daemon holds."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    body = await read_body(request, Heartbeat)
    services = request.app.get(SERVICES)
    if services is not None and body.key.startswith("s"):
        acked = await services.replica_heartbeat(
            key=body.key,
            token=token,
            phase=body.phase or None,
            exit_code=body.exit_code,
            notice_deadline=body.notice_deadline,
            log_offset=body.log_offset,
            log_data=_log_data(body),
            gpus=_replica_gpus(body),
        )
        if acked is None:
            return json_error(401, "unknown replica or wrong agent token")
        return web.json_response({"log_offset": acked})
    store = request.app[STORE]
    keepalives = request.app[CONTROLLER].keepalives
    data = _log_data(body)
    phase = body.phase if body.phase in _PHASES else None
    now = wall()
    beat = KeepAlive(
        key=body.key,
        token=token,
        phase=phase,
        exit_code=body.exit_code,
        notice_deadline=body.notice_deadline,
        log_offset=body.log_offset,
        log_bytes=len(data),
        gpus=bool(body.gpus) and "gpus" in body.model_fields_set,
    )
    known = keepalives.known(body.key)
    if known is not None and is_keepalive(beat, known):
        keepalives.queue(body.key, now)  # nothing new: written with the next batch
        row, offset = known, known.log_offset
    else:
        found = await store.get_instance(body.key)
        if (
            found is None
            or not token
            or not hmac.compare_digest(found.token.encode(), token.encode())
        ):
            return json_error(401, "unknown instance or wrong agent token")
        row = found
        offset = await _record(request, body, row, data, phase, now)
    request.app[METRICS].heartbeats.inc()
    if (
        phase != row.phase
        or body.exit_code != row.exit_code
        or (body.notice_deadline is not None and row.notice_deadline is None)
    ):
        request.app[CONTROLLER].wake(row.job_id)
    # after the wake: a checkpoint that cannot be recorded now must not cost the job its news
    synced_at, progress = body.checkpoint_synced_at, body.checkpoint_progress
    if synced_at is not None and progress is not None:  # DEADLINE paces itself by it
        attempt = int(row.attempt_id.rsplit("-a", 1)[1])
        await request.app[CONTROLLER].checkpointed(
            row.job_id, attempt, progress, synced_at, now=now
        )
    # a node of the job was replaced: restart with the new node list (spotd.agent.gang)
    controller = request.app[CONTROLLER]
    mine = controller.workers.runs(row.job_id)
    restart = await controller.losses.order_for(row, body.generation, phase, mine=mine)
    return web.json_response({"log_offset": offset} | ({"restart": restart} if restart else {}))


ROUTES = (
    Route(
        "POST",
        BOOTSTRAP_PATH,
        bootstrap,
        "An agent's one fetch of its config, with the instance's one-time bootstrap token",
        "agents",
        body=Bootstrap,
        callers=AGENT,
    ),
    Route(
        "POST",
        "/agent/v1/heartbeat",
        heartbeat,
        "An agent's heartbeat (jobs' and replicas')",
        "agents",
        body=Heartbeat,
        callers=AGENT,
    ),
)
