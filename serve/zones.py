"""Where a service's replicas can go: per zone and market, the cheapest instance that fits.

The planner (``hedge.plan_replicas``) picks zones and markets; the executor then needs, for
the chosen (zone, market), which instance type to launch and at what price. Both come from
the placement candidates of the service's resource request, which the executor computes (with
``spotd.recovery.placement``) and hands in: candidates in, plan out, nothing else.

On-demand is always a market, even for a ``use_spot`` service: it is the fallback when spot
is refused or preempted (``ondemand_request`` is the request with every option on-demand).

Scenario (a row in ``tests/serve/test_zones.py``): spot candidates A m5 $0.03 and A c5 $0.02,
on-demand A m5 $0.10 and B m5 $0.09 → A spot c5 $0.02, A on-demand $0.10, B on-demand
$0.09; zones A and B, B with no spot price.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spotd.serve.hedge import ZoneOption
from spotd.types import Candidate, Market, ResourceRequest, ZoneKey


@dataclass(frozen=True, slots=True)
class Placement:
    instance_type: str
    price_per_hour: float


@dataclass(frozen=True, slots=True)
class ZonePlan:
    """The planner's zone options and, per (zone, market), what to launch there."""

    zones: tuple[ZoneOption, ...]
    places: Mapping[tuple[ZoneKey, Market], Placement]
    use_spot: bool


def wants_spot(request: ResourceRequest) -> bool:
    return any(o.use_spot for o in request.options)


def ondemand_request(request: ResourceRequest) -> ResourceRequest:
    """The same request with every option on-demand."""
    return ResourceRequest(
        options=tuple(dataclasses.replace(o, use_spot=False) for o in request.options),
        ordered=request.ordered,
    )


def zone_plan(candidates: Iterable[Candidate], *, use_spot: bool) -> ZonePlan:
    """The cheapest candidate per (zone, market), and the zones ordered by name."""
    places: dict[tuple[ZoneKey, Market], Placement] = {}
    for c in candidates:
        k = (c.zone_key, c.market)
        if k not in places or c.price_per_hour < places[k].price_per_hour:
            places[k] = Placement(c.instance_type, c.price_per_hour)
    zones = sorted({z for z, _ in places}, key=str)
    options = tuple(
        ZoneOption(
            zone=z,
            spot_price=places[(z, Market.SPOT)].price_per_hour
            if (z, Market.SPOT) in places
            else None,
            ondemand_price=places[(z, Market.ON_DEMAND)].price_per_hour
            if (z, Market.ON_DEMAND) in places
            else float("inf"),
        )
        for z in zones
    )
    return ZonePlan(zones=options, places=places, use_spot=use_spot)
