"""Failure injection: ``POST /v1/chaos/{preempt,kill-instance,partition,stockout}``.

Only providers that declare the ``Chaos`` capability (``spotd.providers.capabilities``; the
local provider) take these; an instance of any other backend is refused with a 400. A target
is a job id (its node 0: preempting one node loses the whole attempt) or an instance id or key.
"""

from __future__ import annotations

import time

from aiohttp import web
from pydantic import Field

from spotd.api.common import CONTROLLER, STORE, ApiError, Body, read_body
from spotd.control.jobs import Controller
from spotd.providers.capabilities import Chaos
from spotd.types import Market

__all__ = ["add_routes"]

_NO_CHAOS = "chaos controls need the local provider"


class ChaosTarget(Body):
    target: str
    notice_seconds: float | None = Field(default=None, ge=0)


class ChaosSeconds(Body):
    target: str
    seconds: float = Field(gt=0, le=86400)


class ChaosStockout(Body):
    target: str  # a local region
    seconds: float = Field(ge=0, le=86400)  # 0 ends the stockout now
    market: Market | None = None  # None: both markets


def _target(ctl: Controller, target: str) -> tuple[Chaos, str]:
    """The live instance ``target`` names, and its provider's test controls."""
    if target.isdigit():
        found = ctl.instances_of_job(int(target))
        if not found:
            raise ApiError(404, f"job {target} has no live instance")
        provider, instance = found[0]  # node 0
    else:
        hit = ctl.provider_for_instance(target)
        if hit is None:
            raise ApiError(404, f"no live instance {target!r}")
        provider, instance = hit
    if not isinstance(provider, Chaos):
        raise ApiError(400, _NO_CHAOS)
    return provider, instance.id


async def chaos_preempt(request: web.Request) -> web.Response:
    body = await read_body(request, ChaosTarget)
    provider, iid = _target(request.app[CONTROLLER], body.target)
    provider.preempt(iid, notice_seconds=body.notice_seconds)
    await request.app[STORE].add_event(
        kind="chaos.preempt",
        message=f"chaos: preempt {iid}"
        + (f" with a {body.notice_seconds:g}s notice" if body.notice_seconds else " (no notice)"),
        now=time.time(),
        job_id=int(body.target) if body.target.isdigit() else None,
    )
    return web.json_response({"preempted": [iid], "notice_seconds": body.notice_seconds})


async def chaos_kill(request: web.Request) -> web.Response:
    body = await read_body(request, ChaosTarget)
    provider, iid = _target(request.app[CONTROLLER], body.target)
    provider.kill(iid)
    return web.json_response({"killed": [iid]})


async def chaos_partition(request: web.Request) -> web.Response:
    body = await read_body(request, ChaosSeconds)
    provider, iid = _target(request.app[CONTROLLER], body.target)
    provider.partition(iid, seconds=body.seconds)
    return web.json_response({"partitioned": [iid], "seconds": body.seconds})


async def chaos_stockout(request: web.Request) -> web.Response:
    """Stock out a region of the first provider with test controls that knows it."""
    body = await read_body(request, ChaosStockout)
    chaotic = [p for p in request.app[CONTROLLER].providers.values() if isinstance(p, Chaos)]
    if not chaotic:
        raise ApiError(400, _NO_CHAOS)
    unknown: KeyError | None = None
    for provider in chaotic:
        try:
            provider.stockout(body.target, seconds=body.seconds, market=body.market)
            break
        except KeyError as exc:
            unknown = unknown or exc
    else:
        assert unknown is not None
        raise ApiError(404, str(unknown.args[0])) from unknown
    return web.json_response(
        {
            "stocked_out": body.target,
            "seconds": body.seconds,
            "market": None if body.market is None else str(body.market),
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chaos/preempt", chaos_preempt)
    app.router.add_post("/v1/chaos/kill-instance", chaos_kill)
    app.router.add_post("/v1/chaos/partition", chaos_partition)
    app.router.add_post("/v1/chaos/stockout", chaos_stockout)
