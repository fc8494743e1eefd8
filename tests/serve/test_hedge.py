"""SpotHedge planning: zone spread, bad zones and their reset, the spot/on-demand mix."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest

from spotd.serve.autoscaler import AutoscalePolicy
from spotd.serve.hedge import (
    LaunchSpec,
    ReplicaPlan,
    ReplicaView,
    ZoneEvent,
    ZoneOption,
    bad_zones,
    plan_replicas,
)
from spotd.serve.replica_state import ReplicaId
from spotd.serve.replica_state import ReplicaStatus as S
from spotd.types import Market, ZoneEventKind, ZoneKey

SPOT, OD = Market.SPOT, Market.ON_DEMAND
NOW = 10_000.0


def zk(letter: str) -> ZoneKey:
    return ZoneKey("aws", "us-east-1", f"us-east-1{letter.lower()}")


A, B, C = zk("A"), zk("B"), zk("C")
LETTER = {A: "A", B: "B", C: "C"}

# spot: A < B < C; on-demand: B < A < C
ZONES = (
    ZoneOption(A, spot_price=1.0, ondemand_price=3.0),
    ZoneOption(B, spot_price=1.1, ondemand_price=2.9),
    ZoneOption(C, spot_price=1.2, ondemand_price=3.1),
)
NO_SPOT = tuple(ZoneOption(z.zone, None, z.ondemand_price) for z in ZONES)
A_SOLD_OUT = (ZoneOption(A, 1.0, 3.0, spot_available=False), *ZONES[1:])


def r(rid: int, zone: str, status: S = S.READY, market: Market = SPOT) -> ReplicaView:
    return ReplicaView(ReplicaId(rid), zk(zone), market, status, launched_at=float(rid))


def noticed(rid: int, zone: str, status: S = S.READY, in_seconds: float = 90.0) -> ReplicaView:
    """A spot replica under a preemption notice, reclaimed ``in_seconds`` from NOW."""
    return ReplicaView(
        ReplicaId(rid),
        zk(zone),
        SPOT,
        status,
        launched_at=float(rid),
        notice_deadline=NOW + in_seconds,
    )


def ev(zone: str, kind: ZoneEventKind, ago: float, market: Market = SPOT) -> ZoneEvent:
    return ZoneEvent(zk(zone), kind, NOW - ago, market)


PRE, FAIL, UP = ZoneEventKind.PREEMPTED, ZoneEventKind.LAUNCH_FAILED, ZoneEventKind.LAUNCHED
DYN = {"dynamic_ondemand_fallback": True}


def launches(plan: ReplicaPlan) -> Counter[str]:
    return Counter(f"{LETTER[s.zone]} {s.market}" for s in plan.launch)


# (label, target, policy overrides, zones, current, history, launches, terminate, bad zones)
SCENARIOS = [
    (
        "3 zones, target 3, overprovision 1 → 4 spot across 3 zones (2,1,1)",
        3,
        {"num_overprovision": 1},
        ZONES,
        [],
        [],
        {"A spot": 2, "B spot": 1, "C spot": 1},
        (),
        "",
    ),
    (
        "target 3 from nothing → one spot per zone",
        3,
        {},
        ZONES,
        [],
        [],
        {"A spot": 1, "B spot": 1, "C spot": 1},
        (),
        "",
    ),
    (
        "zone A preempted → A bad, replacements go to B and C",
        4,
        {},
        ZONES,
        [r(1, "A", S.PREEMPTED), r(2, "A", S.PREEMPTED), r(3, "B"), r(4, "C")],
        [ev("A", PRE, 60), ev("A", PRE, 60)],
        {"B spot": 1, "C spot": 1},
        (),
        "A",
    ),
    (
        "all but one zone bad → the replacements go to the good zone",
        3,
        {},
        ZONES,
        [r(1, "A", S.PREEMPTED), r(2, "B", S.PREEMPTED), r(3, "C")],
        [ev("A", PRE, 60), ev("B", PRE, 30)],
        {"C spot": 2},
        (),
        "AB",
    ),
    (
        "every zone bad → reset, every zone good again",
        3,
        {},
        ZONES,
        [r(1, "A", S.PREEMPTED), r(2, "B", S.PREEMPTED), r(3, "C", S.PREEMPTED)],
        [ev("A", PRE, 60), ev("B", PRE, 30), ev("C", PRE, 20)],
        {"A spot": 1, "B spot": 1, "C spot": 1},
        (),
        "",
    ),
    (
        "a spot launch failed in A 10 min ago → A bad",
        2,
        {},
        ZONES,
        [],
        [ev("A", FAIL, 600)],
        {"B spot": 1, "C spot": 1},
        (),
        "A",
    ),
    (
        "a spot launch failed in A 2 h ago → past bad_zone_seconds, A good",
        2,
        {},
        ZONES,
        [],
        [ev("A", FAIL, 7200)],
        {"A spot": 1, "B spot": 1},
        (),
        "",
    ),
    (
        "A preempted, then a replica became READY there → A good",
        2,
        {},
        ZONES,
        [],
        [ev("A", PRE, 600), ev("A", UP, 300)],
        {"A spot": 1, "B spot": 1},
        (),
        "",
    ),
    (
        "an on-demand launch failure does not make a zone bad for spot",
        2,
        {},
        ZONES,
        [],
        [ev("A", FAIL, 60, OD)],
        {"A spot": 1, "B spot": 1},
        (),
        "",
    ),
    (
        "A has no spot capacity now → spot in B and C",
        2,
        {},
        A_SOLD_OUT,
        [],
        [],
        {"B spot": 1, "C spot": 1},
        (),
        "",
    ),
    (
        "base 1, target 3 → 2 spot + 1 on-demand in the cheapest on-demand zone",
        3,
        {"base_ondemand_fallback_replicas": 1},
        ZONES,
        [],
        [],
        {"A spot": 1, "B spot": 1, "B on-demand": 1},
        (),
        "",
    ),
    (
        "dynamic fallback: 2 of 3 spot lost → 2 spot (in the good zone) and 2 on-demand",
        3,
        DYN,
        ZONES,
        [r(1, "A"), r(2, "B", S.PREEMPTED), r(3, "C", S.PREEMPTED)],
        [ev("B", PRE, 60), ev("C", PRE, 60)],
        {"A spot": 2, "B on-demand": 1, "A on-demand": 1},
        (),
        "BC",
    ),
    (
        "dynamic fallback: replacement spot still STARTING → on-demand kept",
        3,
        DYN,
        ZONES,
        [
            r(1, "A"),
            r(4, "B", S.STARTING),
            r(5, "C", S.STARTING),
            r(6, "B", market=OD),
            r(7, "A", market=OD),
        ],
        [ev("B", PRE, 60), ev("C", PRE, 60)],
        {},
        (),
        "BC",
    ),
    (
        "dynamic fallback: spot READY again → on-demand terminated, newest first",
        3,
        DYN,
        ZONES,
        [r(1, "A"), r(4, "B"), r(5, "C"), r(6, "B", market=OD), r(7, "A", market=OD)],
        [ev("B", PRE, 1200), ev("C", PRE, 1200), ev("B", UP, 60), ev("C", UP, 60)],
        {},
        (7, 6),
        "",
    ),
    (
        "shaky zone: A preempted 5 min ago → 2 on-demand: A's 2 READY as if lost, + the cushion",
        3,
        {**DYN, "num_overprovision": 1},
        ZONES,
        [r(1, "A"), r(2, "A"), r(3, "B"), r(4, "C")],
        [ev("A", PRE, 300)],
        {"B on-demand": 1, "A on-demand": 1},
        (),
        "A",
    ),
    (
        "shaky zone: A preempted 15 min ago → no cover (A still bad: no spot launched there)",
        3,
        {**DYN, "num_overprovision": 1},
        ZONES,
        [r(1, "A"), r(2, "A"), r(3, "B"), r(4, "C")],
        [ev("A", PRE, 900)],
        {},
        (),
        "A",
    ),
    (
        "shaky zone: the cover leaves once the window has passed (READY capacity stays >= 3)",
        3,
        {**DYN, "num_overprovision": 1},
        ZONES,
        [r(1, "A"), r(2, "A"), r(3, "B"), r(4, "C"), r(5, "B", market=OD)],
        [ev("A", PRE, 900)],
        {},
        (5,),
        "A",
    ),
    (
        "shaky zone: a preemption in a zone holding no READY replica: the cushion only",
        3,
        {**DYN, "num_overprovision": 1},
        ZONES,
        [r(1, "A"), r(2, "A"), r(3, "B"), r(4, "C", S.STARTING)],
        [ev("C", PRE, 60)],
        {"B on-demand": 1},
        (),
        "C",
    ),
    (
        "dynamic fallback: one spot READY again → one on-demand goes",
        3,
        DYN,
        ZONES,
        [r(1, "A"), r(4, "B"), r(5, "C", S.STARTING), r(6, "B", market=OD), r(7, "A", market=OD)],
        [],
        {},
        (7,),
        "",
    ),
    (
        "calm (no preemption in 2 h, READY that long) → no overprovision: the extra spot goes",
        2,
        {**DYN, "num_overprovision": 1},
        ZONES,
        [r(1, "A"), r(2, "B"), r(3, "C", S.STARTING)],
        [],
        {},
        (3,),
        "",
    ),
    (
        "turbulent (A preempted 30 min ago) → overprovision kept, the fallback covers it too",
        2,
        {**DYN, "num_overprovision": 1},
        ZONES,
        [r(1, "A"), r(2, "B"), r(3, "C", S.STARTING)],
        [ev("A", PRE, 1800)],
        {"B on-demand": 1},
        (),
        "A",
    ),
    (
        "not calm yet: the oldest READY spot has run 1 h → overprovision, on-demand till READY",
        2,
        {**DYN, "num_overprovision": 1},
        ZONES,
        [
            ReplicaView(ReplicaId(1), A, SPOT, S.READY, launched_at=NOW - 3600),
            ReplicaView(ReplicaId(2), B, SPOT, S.READY, launched_at=NOW - 3600),
        ],
        [],
        {"C spot": 1, "B on-demand": 1},
        (),
        "",
    ),
    (
        "dynamic fallback with spot sold out everywhere → on-demand covers the target",
        3,
        DYN,
        NO_SPOT,
        [],
        [],
        {"B on-demand": 1, "A on-demand": 1, "C on-demand": 1},
        (),
        "",
    ),
    (
        "no spot anywhere and no fallback → nothing to launch",
        3,
        {},
        NO_SPOT,
        [],
        [],
        {},
        (),
        "",
    ),
    (
        "target 3 → 1: the STARTING replica goes first, then the newest READY",
        1,
        {},
        ZONES,
        [r(1, "A"), r(2, "B"), r(3, "C", S.STARTING)],
        [],
        {},
        (3, 2),
        "",
    ),
    (
        "scale down: NOT_READY goes before a newer READY",
        2,
        {},
        ZONES,
        [r(1, "A", S.NOT_READY), r(2, "B"), r(3, "C")],
        [],
        {},
        (1,),
        "",
    ),
    (
        "scale down: from the most crowded zone",
        2,
        {},
        ZONES,
        [r(1, "A"), r(2, "A"), r(3, "B")],
        [],
        {},
        (2,),
        "",
    ),
    (
        "scale down: from a bad zone first",
        2,
        {},
        ZONES,
        [r(1, "A"), r(2, "B"), r(3, "C")],
        [ev("B", PRE, 60)],
        {},
        (2,),
        "B",
    ),
    (
        "without dynamic fallback, on-demand stays until spot is READY (make before break)",
        2,
        {},
        ZONES,
        [r(1, "A"), r(2, "B", S.STARTING), r(3, "A", market=OD)],
        [],
        {},
        (),
        "",
    ),
    (
        "without dynamic fallback, on-demand goes once spot is READY",
        2,
        {},
        ZONES,
        [r(1, "A"), r(2, "B"), r(3, "A", market=OD)],
        [],
        {},
        (3,),
        "",
    ),
    (
        "a not-ready on-demand replica goes even when spot is not READY",
        2,
        {},
        ZONES,
        [r(1, "A"), r(2, "B", S.STARTING), r(3, "A", S.STARTING, OD)],
        [],
        {},
        (3,),
        "",
    ),
    (
        "target 0 with overprovision → everything goes (scale to zero)",
        0,
        {"num_overprovision": 1, "base_ondemand_fallback_replicas": 1},
        ZONES,
        [r(1, "A"), r(2, "B", market=OD)],
        [],
        {},
        (1, 2),
        "",
    ),
    (
        "DRAINING and SHUTTING_DOWN replicas are not counted nor retired again",
        2,
        {},
        ZONES,
        [r(1, "A", S.DRAINING), r(2, "B"), r(3, "C", S.SHUTTING_DOWN)],
        [],
        {"A spot": 1},
        (),
        "",
    ),
    (
        "a READY replica under notice: replaced at once, still serving (not retired)",
        3,
        {},
        ZONES,
        [r(1, "A"), r(2, "B"), noticed(3, "C")],
        [ev("C", PRE, 0)],
        {"A spot": 1},
        (),
        "C",
    ),
    (
        "under notice, with the dynamic fallback → on-demand covers it too, still serving",
        3,
        DYN,
        ZONES,
        [r(1, "A"), r(2, "B"), noticed(3, "C")],
        [ev("C", PRE, 0)],
        {"A spot": 1, "B on-demand": 1},
        (),
        "C",
    ),
    (
        "under notice, the replacement STARTING → kept serving",
        3,
        {},
        ZONES,
        [r(1, "A"), r(2, "B"), noticed(3, "C"), r(4, "A", S.STARTING)],
        [ev("C", PRE, 30)],
        {},
        (),
        "C",
    ),
    (
        "under notice, the replacement READY → drained now",
        3,
        {},
        ZONES,
        [r(1, "A"), r(2, "B"), noticed(3, "C"), r(4, "A")],
        [ev("C", PRE, 150)],
        {},
        (3,),
        "C",
    ),
    (
        "under notice, 15 s to its deadline, no replacement READY → drained now",
        3,
        {},
        ZONES,
        [r(1, "A"), r(2, "B"), noticed(3, "C", in_seconds=15), r(4, "A", S.STARTING)],
        [ev("C", PRE, 105)],
        {},
        (3,),
        "C",
    ),
    (
        "under notice before it was READY → goes at once (it never served)",
        3,
        {},
        ZONES,
        [r(1, "A"), r(2, "B"), noticed(3, "C", S.STARTING)],
        [ev("C", PRE, 0)],
        {"A spot": 1},
        (3,),
        "C",
    ),
    (
        "overprovision 1, two good zones → 3 + 1, not 2 + 2: the zone with 1 can be lost",
        3,
        {"num_overprovision": 1},
        ZONES,
        [],
        [ev("C", PRE, 60)],
        {"A spot": 3, "B spot": 1},
        (),
        "C",
    ),
    (
        "overprovision 1, A2 B1 C1, A preempted → both replacements to B (3 + 1), C keeps 1",
        3,
        {"num_overprovision": 1},
        ZONES,
        [r(1, "A", S.PREEMPTED), r(2, "A", S.PREEMPTED), r(3, "B"), r(4, "C")],
        [ev("A", PRE, 60), ev("A", PRE, 60)],
        {"B spot": 2},
        (),
        "A",
    ),
    (
        "overprovision 2, three zones → B and C up to 2, A the rest: any zone can be lost",
        3,
        {"num_overprovision": 2},
        ZONES,
        [],
        [],
        {"A spot": 1, "B spot": 2, "C spot": 2},
        (),
        "",
    ),
    (
        "steady state → nothing to do",
        2,
        {"base_ondemand_fallback_replicas": 1},
        ZONES,
        [r(1, "A"), r(2, "B", market=OD)],
        [],
        {},
        (),
        "",
    ),
]


@pytest.mark.parametrize(
    ("label", "target", "overrides", "zones", "current", "history", "launch", "terminate", "bad"),
    SCENARIOS,
    ids=[s[0] for s in SCENARIOS],
)
def test_scenarios(
    label: str,
    target: int,
    overrides: dict[str, object],
    zones: tuple[ZoneOption, ...],
    current: list[ReplicaView],
    history: list[ZoneEvent],
    launch: dict[str, int],
    terminate: tuple[int, ...],
    bad: str,
) -> None:
    policy = AutoscalePolicy(min_replicas=0, max_replicas=10, target_qps_per_replica=1, **overrides)
    plan = plan_replicas(
        target, zones=zones, current=current, zone_history=history, policy=policy, now=NOW
    )
    assert launches(plan) == Counter(launch), plan.reason
    assert plan.terminate == terminate, plan.reason
    assert plan.bad_zones == frozenset(zk(z) for z in bad)
    assert plan.reason
    # pure: the same inputs give the same plan
    assert plan == plan_replicas(
        target, zones=zones, current=current, zone_history=history, policy=policy, now=NOW
    )


@pytest.mark.parametrize("n_zones", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", range(1, 13))
def test_spread_never_exceeds_ceil_n_over_zones(n: int, n_zones: int) -> None:
    zones = tuple(ZoneOption(zk(chr(ord("A") + i)), 1.0 + i / 10, 3.0) for i in range(n_zones))
    plan = plan_replicas(
        n,
        zones=zones,
        current=(),
        zone_history=(),
        policy=AutoscalePolicy(min_replicas=0, max_replicas=20, target_qps_per_replica=1),
        now=NOW,
    )
    per_zone = Counter(s.zone for s in plan.launch)
    assert sum(per_zone.values()) == n
    assert max(per_zone.values()) <= math.ceil(n / n_zones)
    # the cheapest zones fill first: counts never increase with the price
    counts = [per_zone[z.zone] for z in zones]
    assert counts == sorted(counts, reverse=True)


def test_use_spot_false_runs_everything_on_demand() -> None:
    plan = plan_replicas(
        2,
        zones=ZONES,
        current=[],
        zone_history=[ev("B", FAIL, 60, OD)],
        policy=AutoscalePolicy.fixed(2),
        now=NOW,
        use_spot=False,
    )
    # B is the cheapest on-demand zone but just refused an on-demand launch
    assert plan.launch == (LaunchSpec(A, OD), LaunchSpec(C, OD))


def test_reset_is_reported_in_the_reason() -> None:
    plan = plan_replicas(
        2,
        zones=ZONES,
        current=[],
        zone_history=[ev("A", PRE, 1), ev("B", PRE, 1), ev("C", PRE, 1)],
        policy=AutoscalePolicy.fixed(2),
        now=NOW,
    )
    assert "reset" in plan.reason


class TestBadZones:
    def test_latest_event_wins_whatever_the_input_order(self) -> None:
        history = [ev("A", PRE, 10), ev("A", UP, 20), ev("B", UP, 10), ev("B", PRE, 20)]
        assert bad_zones(history, now=NOW) == {A}

    def test_events_after_now_are_ignored(self) -> None:
        assert bad_zones([ev("A", PRE, -5)], now=NOW) == frozenset()

    def test_expiry_is_exclusive(self) -> None:
        assert bad_zones([ev("A", PRE, 99.9)], now=NOW, bad_zone_seconds=100) == {A}
        assert bad_zones([ev("A", PRE, 100)], now=NOW, bad_zone_seconds=100) == frozenset()

    def test_market_is_separate(self) -> None:
        history = [ev("A", FAIL, 10, OD), ev("B", PRE, 10)]
        assert bad_zones(history, now=NOW, market=OD) == {A}
        assert bad_zones(history, now=NOW) == {B}

    @pytest.mark.parametrize(
        ("history", "bad"),
        [
            # a survival time (RAN) says nothing about launching there: the loss before it stands
            ([ev("A", PRE, 20), ev("A", ZoneEventKind.RAN, 10)], {"A"}),
            ([ev("A", FAIL, 20), ev("A", ZoneEventKind.RAN, 10)], {"A"}),
            # ...and neither does it make a zone bad on its own
            ([ev("A", ZoneEventKind.RAN, 10)], set()),
            # a launch that came up after the RAN still clears the zone
            ([ev("A", PRE, 30), ev("A", ZoneEventKind.RAN, 20), ev("A", UP, 10)], set()),
        ],
    )
    def test_ran_events_are_not_read(self, history: list[ZoneEvent], bad: set[str]) -> None:
        want = {zk(z) for z in bad}
        assert bad_zones(history, now=NOW) == want


def test_negative_target_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_replicas(
            -1, zones=ZONES, current=[], zone_history=[], policy=AutoscalePolicy.fixed(1), now=NOW
        )


@pytest.mark.parametrize("use_spot", [True, False])
def test_on_demand_goes_only_to_zones_that_sell_it(use_spot: bool) -> None:
    """A zone with spot but no on-demand option for this service (an infinite price: say
    ``max_hourly_cost`` rules its on-demand out) gets no on-demand launch: the executor has
    nothing to launch there, and a fallback planned into it would stay one replica short."""
    zones = (ZoneOption(zk("A"), 1.0, 3.0), ZoneOption(zk("B"), 0.9, math.inf))
    policy = AutoscalePolicy(min_replicas=2, max_replicas=2, dynamic_ondemand_fallback=True)
    plan = plan_replicas(
        2, zones=zones, current=[], zone_history=[], policy=policy, now=NOW, use_spot=use_spot
    )
    ondemand = [s.zone for s in plan.launch if s.market is Market.ON_DEMAND]
    assert ondemand == [zk("A"), zk("A")], plan.reason
    none = tuple(dataclasses.replace(z, ondemand_price=math.inf) for z in zones)
    plan = plan_replicas(
        2, zones=none, current=[], zone_history=[], policy=policy, now=NOW, use_spot=use_spot
    )
    assert all(s.market is Market.SPOT for s in plan.launch), plan.reason
    assert "no zone to launch in" in plan.reason


@pytest.mark.parametrize(("elsewhere", "ondemand"), [(0, 3), (2, 2), (3, 1), (4, 0)])
def test_an_update_falls_back_only_for_what_the_old_version_leaves_short(
    elsewhere: int, ondemand: int
) -> None:
    """A rolling update: the new version has no replica yet, the old one has ``elsewhere``
    READY replicas serving (retired as new ones become READY). Target 3, one spare while
    turbulent: 4 new spot replicas, and on-demand only for what the old READY ones do not
    cover (before, 3 on-demand replicas started at every update, whatever was serving)."""
    zones = (ZoneOption(zk("A"), 1.0, 3.0), ZoneOption(zk("B"), 1.1, 3.0))
    policy = AutoscalePolicy(
        min_replicas=3, max_replicas=3, num_overprovision=1, dynamic_ondemand_fallback=True
    )
    plan = plan_replicas(
        3,
        zones=zones,
        current=[],
        zone_history=[],
        policy=policy,
        now=NOW,
        ready_elsewhere=elsewhere,
    )
    got = Counter(s.market for s in plan.launch)
    assert (got[Market.SPOT], got[Market.ON_DEMAND]) == (4, ondemand), plan.reason
    # no spot anywhere: nothing new is on its way, so the fallback carries the update (the
    # old version is retired as on-demand replicas of the new one become READY)
    no_spot = tuple(dataclasses.replace(z, spot_available=False) for z in zones)
    plan = plan_replicas(
        3,
        zones=no_spot,
        current=[],
        zone_history=[],
        policy=policy,
        now=NOW,
        ready_elsewhere=elsewhere,
    )
    assert Counter(s.market for s in plan.launch) == Counter({Market.ON_DEMAND: 3}), plan.reason
