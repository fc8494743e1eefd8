"""Where a service's replicas can go: the cheapest instance per zone and market."""

from __future__ import annotations

import math

import pytest

from spotd.serve.zones import Placement, ondemand_request, wants_spot, zone_plan
from spotd.types import Candidate, Market, ResourceOption, ResourceRequest, ZoneKey

A = ZoneKey("local", "r1", "a")
B = ZoneKey("local", "r1", "b")


def cand(zone: ZoneKey, itype: str, market: Market, price: float) -> Candidate:
    return Candidate(
        provider=zone.provider,
        region=zone.region,
        zone=zone.zone,
        instance_type=itype,
        market=market,
        price_per_hour=price,
        expected_cost=price,
    )


@pytest.mark.parametrize(
    ("cands", "places", "spot_prices", "ondemand_prices"),
    [
        # the docstring's scenario: the cheaper spot type wins in A; B sells no spot
        (
            [
                cand(A, "m5", Market.SPOT, 0.03),
                cand(A, "c5", Market.SPOT, 0.02),
                cand(A, "m5", Market.ON_DEMAND, 0.10),
                cand(B, "m5", Market.ON_DEMAND, 0.09),
            ],
            {
                (A, Market.SPOT): Placement("c5", 0.02),
                (A, Market.ON_DEMAND): Placement("m5", 0.10),
                (B, Market.ON_DEMAND): Placement("m5", 0.09),
            },
            [0.02, None],
            [0.10, 0.09],
        ),
        # a zone with spot only: on-demand price infinite (never the fallback there)
        (
            [cand(B, "m5", Market.SPOT, 0.03)],
            {(B, Market.SPOT): Placement("m5", 0.03)},
            [0.03],
            [math.inf],
        ),
        ([], {}, [], []),
    ],
    ids=["cheapest-per-market", "spot-only-zone", "nothing-fits"],
)
def test_zone_plan(
    cands: list[Candidate],
    places: dict[tuple[ZoneKey, Market], Placement],
    spot_prices: list[float | None],
    ondemand_prices: list[float],
) -> None:
    plan = zone_plan(cands, use_spot=True)
    assert dict(plan.places) == places
    assert [z.spot_price for z in plan.zones] == spot_prices
    assert [z.ondemand_price for z in plan.zones] == ondemand_prices
    assert [z.zone for z in plan.zones] == sorted({z for z, _ in places}, key=str)


@pytest.mark.parametrize(
    ("options", "spot"),
    [
        ((ResourceOption(use_spot=True), ResourceOption()), True),
        ((ResourceOption(),), False),
    ],
)
def test_ondemand_request_keeps_everything_but_the_market(
    options: tuple[ResourceOption, ...], spot: bool
) -> None:
    request = ResourceRequest(options=options, ordered=True)
    assert wants_spot(request) is spot
    od = ondemand_request(request)
    assert not wants_spot(od) and od.ordered
    assert len(od.options) == len(options)
