"""Failure injection: ``POST /v1/chaos/{preempt,kill-instance,partition,stockout}``.

Only providers that declare the ``Chaos`` capability (``spotd.providers.capabilities``; the
local provider) take these; an instance of any other backend is refused with a 400. A target
is a job id (its node 0: preempting one node loses the whole attempt) or an instance id or key.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field, StringConstraints

from spotd.api.common import CONTROLLER, STORE, ApiError, Body, read_body
from spotd.api.params import parse_id
from spotd.api.routes import Route
from spotd.clock import wall
from spotd.control.jobs import Controller
from spotd.providers.capabilities import Chaos
from spotd.types import Market

__all__ = ["ROUTES"]

_NO_CHAOS = "chaos controls need the local provider"


# a job id, or an instance's id or key, or a region
Target = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/-]+$")
]
DAY = 86400.0


class ChaosTarget(Body):
    target: Target
    notice_seconds: float | None = Field(default=None, ge=0, le=DAY)


class ChaosSeconds(Body):
    target: Target
    seconds: float = Field(gt=0, le=DAY)


class ChaosStockout(Body):
    target: Target  # a local region
    seconds: float = Field(ge=0, le=DAY)  # 0 ends the stockout now
    market: Market | None = None  # None: both markets


def _job_target(target: str) -> int | None:
    """The job id ``target`` is, if it is one (digits: a 400 when out of range)."""
    return parse_id(target, "target job id") if target.isdigit() else None


def _target(ctl: Controller, target: str) -> tuple[Chaos, str]:
    """The live instance ``target`` names, and its provider's test controls."""
    job_id = _job_target(target)
    if job_id is not None:
        found = ctl.instances_of_job(job_id)
        if not found:
            raise ApiError(404, f"job {job_id} has no live instance")
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
    """Preempt the target's instance, with an advance notice of ``notice_seconds`` if given."""
    body = await read_body(request, ChaosTarget)
    provider, iid = _target(request.app[CONTROLLER], body.target)
    provider.preempt(iid, notice_seconds=body.notice_seconds)
    await request.app[STORE].add_event(
        kind="chaos.preempt",
        message=f"chaos: preempt {iid}"
        + (f" with a {body.notice_seconds:g}s notice" if body.notice_seconds else " (no notice)"),
        now=wall(),
        job_id=_job_target(body.target),
    )
    return web.json_response({"preempted": [iid], "notice_seconds": body.notice_seconds})


async def chaos_kill(request: web.Request) -> web.Response:
    """Kill the target's instance (its processes end; the provider still lists it)."""
    body = await read_body(request, ChaosTarget)
    provider, iid = _target(request.app[CONTROLLER], body.target)
    provider.kill(iid)
    return web.json_response({"killed": [iid]})


async def chaos_partition(request: web.Request) -> web.Response:
    """Cut the target's instance off from the daemon for ``seconds``."""
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


ROUTES = (
    Route(
        "POST",
        "/v1/chaos/preempt",
        chaos_preempt,
        "Preempt an instance",
        "chaos",
        body=ChaosTarget,
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/chaos/kill-instance",
        chaos_kill,
        "Kill an instance",
        "chaos",
        body=ChaosTarget,
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/chaos/partition",
        chaos_partition,
        "Partition an instance from the daemon",
        "chaos",
        body=ChaosSeconds,
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/chaos/stockout",
        chaos_stockout,
        "Stock out a region",
        "chaos",
        body=ChaosStockout,
        errors=(404,),
    ),
)
