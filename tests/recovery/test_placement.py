"""The optimizer: what fits a request, in which order, and why nothing fits."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.pricing.catalog import default_local_catalog
from spotd.recovery.placement import candidates, explain_infeasible
from spotd.types import Market, ResourceOption, ResourceRequest
from tests.recovery.helpers import entry, req, three_regions, zk

LOCAL = default_local_catalog()


@pytest.mark.parametrize(
    ("request_kw", "first"),
    [
        # the cheapest spot zone, the cheapest type that fits
        ({"cpus": 1, "use_spot": True}, ("local-east-a", "cpu-1", Market.SPOT, 0.0144)),
        # on-demand is cheapest in local-central (a and b tie; names break the tie)
        ({"cpus": 1}, ("local-central-a", "cpu-1", Market.ON_DEMAND, 0.0466)),
        ({"cpus": 2, "use_spot": True}, ("local-east-a", "cpu-2", Market.SPOT, 0.0288)),
        (
            {"cpus": 2, "cpus_plus": False, "use_spot": True},
            ("local-east-a", "cpu-2", Market.SPOT, 0.0288),
        ),
        # 4+ vCPUs: cpu-4, not the T4 machine that also has 4 vCPUs
        ({"cpus": 4, "use_spot": True}, ("local-east-a", "cpu-4", Market.SPOT, 0.0576)),
        ({"memory_gb": 16, "use_spot": True}, ("local-east-a", "cpu-4", Market.SPOT, 0.0576)),
        # 20+ GiB: mem-4 (32 GiB) is cheaper than cpu-8 (32 GiB)
        ({"memory_gb": 20, "use_spot": True}, ("local-east-a", "mem-4", Market.SPOT, 0.0756)),
        ({"memory_per_cpu": 8, "use_spot": True}, ("local-east-a", "mem-4", Market.SPOT, 0.0756)),
        # accelerator names are case-insensitive; counts are exact
        (
            {"accelerator": "a100", "accelerator_count": 8, "use_spot": True},
            ("local-east-a", "sim-a100-8", Market.SPOT, 9.8319),
        ),
        (
            {"accelerator": "A100", "accelerator_count": 1},
            ("local-central-a", "sim-a100-1", Market.ON_DEMAND, 3.5628),
        ),
        (
            {
                "accelerator": "H100",
                "accelerator_count": 8,
                "region": "local-west",
                "use_spot": True,
            },
            ("local-west-a", "sim-h100-8", Market.SPOT, 44.244),
        ),
        (
            {"instance_type": "cpu-4", "use_spot": True},
            ("local-east-a", "cpu-4", Market.SPOT, 0.0576),
        ),
        # naming an instance type lifts the CPU-only default
        (
            {"instance_type": "sim-t4-1", "use_spot": True},
            ("local-east-a", "sim-t4-1", Market.SPOT, 0.1578),
        ),
        (
            {"region": "local-west", "use_spot": True},
            ("local-west-a", "cpu-1", Market.SPOT, 0.0216),
        ),
        (
            {"zone": "local-central-b", "use_spot": True},
            ("local-central-b", "cpu-1", Market.SPOT, 0.01911),
        ),
        (
            {"provider": "local", "cpus": 8, "use_spot": True},
            ("local-east-a", "cpu-8", Market.SPOT, 0.1152),
        ),
    ],
)
def test_first_candidate(request_kw: dict[str, Any], first: tuple[str, str, Market, float]) -> None:
    c = candidates(req(**request_kw), LOCAL)[0]
    assert (c.zone, c.instance_type, c.market, c.price_per_hour) == first


@pytest.mark.parametrize("use_spot", [True, False])
def test_use_spot_picks_exactly_one_market(use_spot: bool) -> None:
    markets = {c.market for c in candidates(req(cpus=1, use_spot=use_spot), LOCAL)}
    assert markets == {Market.SPOT if use_spot else Market.ON_DEMAND}


@pytest.mark.parametrize(
    "request_kw",
    [
        {"cpus": 1, "use_spot": True},
        {"cpus": 4},
        {"memory_gb": 32, "use_spot": True},
        {"cpus": 8, "cpus_plus": False},
        {"memory_per_cpu": 4, "use_spot": True},
        {"accelerator": "A100", "accelerator_count": 1, "use_spot": True},
        {"accelerator": "h100", "accelerator_count": 8},
        {"region": "local-central", "cpus": 2},
        {"max_hourly_cost": 0.05, "use_spot": True},
    ],
)
def test_every_candidate_satisfies_the_request(request_kw: dict[str, Any]) -> None:
    o = ResourceOption(**request_kw)
    cands = candidates(ResourceRequest((o,)), LOCAL)
    assert cands
    by_key = {(e.zone, e.instance_type): e for e in LOCAL}
    for c in cands:
        e = by_key[(c.zone, c.instance_type)]
        if o.accelerator is None:
            assert e.accelerator is None
        else:
            assert (e.accelerator or "").lower() == o.accelerator.lower()
            assert e.accelerator_count == o.accelerator_count
        if o.cpus is not None:
            assert e.vcpus >= o.cpus if o.cpus_plus else e.vcpus == o.cpus
        if o.memory_gb is not None:
            assert e.memory_gb >= o.memory_gb
        if o.memory_per_cpu is not None:
            assert e.memory_gb >= o.memory_per_cpu * e.vcpus
        if o.region is not None:
            assert c.region == o.region
        if o.max_hourly_cost is not None:
            assert c.price_per_hour <= o.max_hourly_cost
        assert c.price_per_hour == (e.spot_price if o.use_spot else e.ondemand_price)


def test_candidates_are_sorted_by_expected_cost() -> None:
    cands = candidates(req(cpus=1, use_spot=True), LOCAL)
    costs = [c.expected_cost for c in cands]
    assert costs == sorted(costs)
    # every type that fits is listed, in every zone that sells it
    assert len(cands) == len({(e.zone, e.instance_type) for e in LOCAL if e.accelerator is None})


def test_zone_without_spot_is_not_a_spot_candidate() -> None:
    zones = {c.zone for c in candidates(req(instance_type="sim-h100-8", use_spot=True), LOCAL)}
    assert zones == {"local-east-a", "local-east-b", "local-west-a"}


def test_price_cap_is_per_node() -> None:
    cands = candidates(req(cpus=1, use_spot=True, max_hourly_cost=0.016), LOCAL, num_nodes=4)
    assert {(c.zone, c.instance_type) for c in cands} == {
        ("local-east-a", "cpu-1"),
        ("local-east-b", "cpu-1"),
    }


def test_num_nodes_scales_expected_cost_not_list_price() -> None:
    one = candidates(req(use_spot=True), three_regions())[0]
    four = candidates(req(use_spot=True), three_regions(), num_nodes=4)[0]
    assert four.price_per_hour == one.price_per_hour == 0.10
    assert four.expected_cost == pytest.approx(4 * one.expected_cost)


def test_num_nodes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        candidates(req(), three_regions(), num_nodes=0)


# -- risk and blocking ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("risk", "blocked", "expected_order"),
    [
        ({}, {}, ["r1a", "r1b", "r2a", "r2b", "r3a", "r3b"]),
        # risk 1.0 doubles r1a's expected cost: 0.20 ties r2a, names break the tie
        ({"r1a": 1.0}, {}, ["r1b", "r1a", "r2a", "r2b", "r3a", "r3b"]),
        ({"r1a": 2.5}, {}, ["r1b", "r2a", "r2b", "r3a", "r3b", "r1a"]),
        # fully blocked zones are excluded
        ({}, {"r1a": 1.0, "r2a": 1.0}, ["r1b", "r2b", "r3a", "r3b"]),
        # a partial block of p multiplies the cost by 1 / (1 - p)
        ({}, {"r1a": 0.5}, ["r1b", "r1a", "r2a", "r2b", "r3a", "r3b"]),
        ({}, {"r1a": 0.75}, ["r1b", "r2a", "r2b", "r3a", "r3b", "r1a"]),
        # risk and blocking multiply
        ({"r1a": 1.0}, {"r1a": 0.5}, ["r1b", "r2a", "r2b", "r3a", "r3b", "r1a"]),
        # out-of-range inputs are clamped: negative risk / blocking count as 0
        ({"r1a": -5.0}, {"r1b": -1.0}, ["r1a", "r1b", "r2a", "r2b", "r3a", "r3b"]),
    ],
)
def test_risk_and_blocking_reorder_spot_zones(
    risk: dict[str, float], blocked: dict[str, float], expected_order: list[str]
) -> None:
    cands = candidates(
        req(use_spot=True),
        three_regions(),
        risk={zk(z): v for z, v in risk.items()},
        blocked={zk(z): v for z, v in blocked.items()},
    )
    assert [c.zone for c in cands] == expected_order


def test_expected_cost_formula() -> None:
    [c] = candidates(
        req(use_spot=True, zone="r2a"),
        three_regions(),
        num_nodes=2,
        risk={zk("r2a"): 0.5},
        blocked={zk("r2a"): 0.2},
    )
    assert c.expected_cost == pytest.approx(0.20 * 2 * 1.5 / 0.8)


def test_risk_does_not_apply_to_on_demand() -> None:
    plain = candidates(req(use_spot=False), three_regions())
    risky = candidates(req(use_spot=False), three_regions(), risk={zk("r2a"): 9.0})
    assert plain == risky


def test_ondemand_blocked_replaces_blocked_for_on_demand_only() -> None:
    cat = three_regions()
    blocked = {zk("r2a"): 1.0}
    od = candidates(req(use_spot=False), cat, blocked=blocked, ondemand_blocked={})
    spot = candidates(req(use_spot=True), cat, blocked=blocked, ondemand_blocked={})
    assert "r2a" in {c.zone for c in od}
    assert "r2a" not in {c.zone for c in spot}
    od_default = candidates(req(use_spot=False), cat, blocked=blocked)
    assert "r2a" not in {c.zone for c in od_default}


# -- several options --------------------------------------------------------------------------


def _gpu_catalog() -> list:
    return [
        entry("r1", "r1a", "a100x8", spot=10.0, accelerator="A100", accelerator_count=8),
        entry("r1", "r1a", "h100x8", spot=20.0, accelerator="H100", accelerator_count=8),
        entry("r2", "r2a", "h100x8", spot=15.0, accelerator="H100", accelerator_count=8),
    ]


def _any_of(ordered: bool) -> ResourceRequest:
    return ResourceRequest(
        (
            ResourceOption(accelerator="H100", accelerator_count=8, use_spot=True),
            ResourceOption(accelerator="A100", accelerator_count=8, use_spot=True),
        ),
        ordered=ordered,
    )


@pytest.mark.parametrize(
    ("ordered", "expected"),
    [
        # any_of: the cheapest option wins
        (False, [("a100x8", 1), ("h100x8", 0), ("h100x8", 0)]),
        # ordered: the earlier option wins, whatever it costs; cost within an option
        (True, [("h100x8", 0), ("h100x8", 0), ("a100x8", 1)]),
    ],
)
def test_ordered_versus_any_of(ordered: bool, expected: list[tuple[str, int]]) -> None:
    cands = candidates(_any_of(ordered), _gpu_catalog())
    assert [(c.instance_type, c.option_index) for c in cands] == expected


def test_a_placement_accepted_by_two_options_is_listed_once_under_the_first() -> None:
    request = ResourceRequest(
        (ResourceOption(cpus=2, use_spot=True), ResourceOption(cpus=1, use_spot=True))
    )
    cands = candidates(request, LOCAL)
    keys = [(c.zone, c.instance_type, c.market) for c in cands]
    assert len(keys) == len(set(keys))
    assert {c.option_index for c in cands if c.instance_type == "cpu-2"} == {0}
    assert cands[0].instance_type == "cpu-1" and cands[0].option_index == 1


def test_ties_are_broken_by_names_whatever_the_catalog_order() -> None:
    cat = [
        entry("r2", "r2b"),
        entry("r1", "r1b"),
        entry("r2", "r2a"),
        entry("r1", "r1a"),
        entry("r1", "r1a", "cpu-0"),
    ]
    forward = candidates(req(use_spot=True), cat)
    backward = candidates(req(use_spot=True), list(reversed(cat)))
    assert forward == backward
    assert [(c.zone, c.instance_type) for c in forward] == [
        ("r1a", "cpu-0"),
        ("r1a", "cpu-1"),
        ("r1b", "cpu-1"),
        ("r2a", "cpu-1"),
        ("r2b", "cpu-1"),
    ]


# -- explaining infeasible requests ---------------------------------------------------------


@pytest.mark.parametrize(
    ("request_kw", "expected"),
    [
        (
            {"accelerator": "A100", "accelerator_count": 16},
            "no instance type offers A100:16; largest A100 count is 8 (sim-a100-8)",
        ),
        (
            {"accelerator": "a100", "accelerator_count": 4},
            "no instance type offers A100:4; A100 counts offered: 1 (sim-a100-1), 8 (sim-a100-8)",
        ),
        (
            {"accelerator": "V100", "accelerator_count": 1},
            "no instance type offers accelerator 'V100' (known: A100, H100, T4)",
        ),
        (
            {"region": "us-east-9", "provider": "local"},
            "no region 'us-east-9' for provider local (known: local-central, "
            "local-east, local-west)",
        ),
        ({"provider": "aws"}, "no provider 'aws' in the catalog (known: local)"),
        (
            {"region": "local-east", "zone": "local-west-a"},
            "no zone 'local-west-a' in region local-east (known: local-east-a, local-east-b)",
        ),
        ({"instance_type": "cpu-16"}, "no instance type 'cpu-16' (known: cpu-1, cpu-2, cpu-4,"),
        ({"cpus": 64}, "no matching instance type has 64+ vCPUs; the largest has 8 (cpu-8)"),
        (
            {"cpus": 3, "cpus_plus": False},
            "no matching instance type has exactly 3 vCPUs (offered: 1 (cpu-1), 2 "
            "(cpu-2), 4 (cpu-4)",
        ),
        (
            {"memory_gb": 512},
            "no matching instance type has 512+ GiB of memory; the largest has 32",
        ),
        (
            {"memory_per_cpu": 16},
            "no matching instance type has 16+ GiB per vCPU; the most is 8 (mem-4)",
        ),
        (
            {"accelerator": "H100", "accelerator_count": 8, "region": "local-central"},
            "no instance type offers accelerator 'H100' in local-central (known: A100, T4)",
        ),
        (
            {"instance_type": "sim-h100-8", "zone": "local-west-b", "use_spot": True},
            "no spot capacity for sim-h100-8 in local-west-b; on-demand is sold (use_spot: false)",
        ),
        (
            {
                "accelerator": "H100",
                "accelerator_count": 8,
                "use_spot": True,
                "max_hourly_cost": 10,
            },
            (
                "the cheapest match, sim-h100-8 spot in local-east/local-east-a, costs $29.4960/h "
                "per node, above max_hourly_cost $10"
            ),
        ),
        (
            {"instance_type": "sim-t4-1", "accelerator": "A100", "accelerator_count": 1},
            "sim-t4-1 offers T4, not A100",
        ),
    ],
)
def test_explain_infeasible_names_the_closest_thing(
    request_kw: dict[str, Any], expected: str
) -> None:
    request = req(**request_kw)
    assert candidates(request, LOCAL) == []
    assert explain_infeasible(request, LOCAL).startswith(expected), explain_infeasible(
        request, LOCAL
    )


def test_explain_infeasible_reports_each_option() -> None:
    request = ResourceRequest(
        (
            ResourceOption(accelerator="A100", accelerator_count=16),
            ResourceOption(accelerator="B200", accelerator_count=8),
        )
    )
    why = explain_infeasible(request, LOCAL)
    assert why.startswith("option 1 (A100:16, on-demand): no instance type offers A100:16")
    assert "; option 2 (B200:8, on-demand): no instance type offers accelerator 'B200'" in why


@pytest.mark.parametrize(
    ("catalog", "request_", "expected"),
    [
        ([], req(), "the catalog is empty: no provider offers anything"),
        (three_regions(), ResourceRequest(()), "the request has no resource options"),
        (three_regions(), req(use_spot=True), "feasible: spot has 6 placement(s)"),
        (
            [entry("r1", "r1a", "g", accelerator="T4", accelerator_count=1)],
            req(cpus=1),
            "no CPU-only instance type; request an accelerator (known: T4) or name "
            "an instance_type",
        ),
    ],
)
def test_explain_edge_cases(catalog: list, request_: ResourceRequest, expected: str) -> None:
    assert explain_infeasible(request_, catalog) == expected
