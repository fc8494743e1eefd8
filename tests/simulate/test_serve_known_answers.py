"""Serving simulator on small traces whose answers are worked out by hand.

Setup everywhere: target 3, a 4-tick cold start, costs counted (like availability) over the
ticks after the first 4, on-demand = 3 spot; so ``cost_vs_ondemand = units / (9 * counted)``.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from spotd.serve import hedge
from spotd.sim.serve import (
    EvenSpreadPolicy,
    OnDemandPolicy,
    RoundRobinPolicy,
    ServeSetup,
    SpotdPolicy,
    SpotHedgePolicy,
    omniscient_window,
    run_window,
)
from tests.simulate.helpers import alternating, zone

A, B, C = zone("a"), zone("b"), zone("c")


class FirstChoice(random.Random):
    """SpotHedge breaks ties at random; this one always takes the first candidate."""

    def choice(self, seq):  # type: ignore[no-untyped-def, override]
        return seq[0]


def setup(ticks: int, **kw: object) -> ServeSetup:
    return ServeSetup(window_ticks=ticks, windows=1, cold_start_seconds=120.0, **kw)  # type: ignore[arg-type]


def frac(x: float) -> Fraction:
    return Fraction(x).limit_denominator(10_000)


# -- one zone always down ------------------------------------------------------------------
# zones a (always 0), b (4), c (4); 20 ticks, 16 counted.

DOWN = [[0] * 20, [4] * 20, [4] * 20]


def run_down(policy_cls, rng=None, **kw):  # type: ignore[no-untyped-def]
    s = setup(20, **kw)
    policy = policy_cls([A, B, C], s, rng or random.Random(0))
    return policy, run_window(policy, DOWN, [A, B, C], s)


def test_one_zone_down_on_demand() -> None:
    _, r = run_down(OnDemandPolicy)
    assert r.availability == 1.0  # launched at 0, READY at 4 = the first counted tick
    assert r.cost_vs_ondemand == 1.0
    assert r.ondemand_ticks == 48 and r.spot_ticks == 0


def test_one_zone_down_round_robin() -> None:
    # t0: a (fails), b, c; t1: a again (fails); t2: b. b0 c0 READY at 4, b2 at 6.
    _, r = run_down(RoundRobinPolicy)
    assert r.availability == 14 / 16
    assert r.spot_ticks == 48  # 3 held on every counted tick
    assert frac(r.cost_vs_ondemand) == Fraction(48, 144)
    assert r.launch_failures == 2 and r.preemptions == 0


def test_one_zone_down_even_spread_never_leaves_the_dead_zone() -> None:
    # the emptiest zone is always a: every tick's third launch fails there
    _, r = run_down(EvenSpreadPolicy)
    assert r.availability == 0.0
    assert frac(r.cost_vs_ondemand) == Fraction(32, 144)
    assert r.launch_failures == 20


def test_one_zone_down_spothedge() -> None:
    # t0: 4 spot asked a, b, c, a (a fails twice) + 3 on-demand; t1: a is bad, 2 more to b.
    # On-demand: 3 until READY spot at t-1 is 2 (t5: keep 2), 4 (t6: none).
    policy, r = run_down(SpotHedgePolicy, FirstChoice())
    assert r.availability == 1.0
    assert r.spot_ticks == 64 and r.ondemand_ticks == 5
    assert frac(r.cost_vs_ondemand) == Fraction(64 + 15, 144)
    assert r.launch_failures == 2
    assert policy.bad == [0]  # zone a


def test_one_zone_down_spotd_calls_the_real_planner() -> None:
    # plan_replicas: 4 spot spread a, b, c, a by name; a's launches fail -> a is bad; 2 go to
    # b and c. Dynamic fallback is target - READY spot (not SpotHedge's target + 1 - READY):
    # 3 on-demand, then 1 at t5 (2 spot READY), none at t6.
    policy, r = run_down(SpotdPolicy)
    assert r.availability == 1.0
    assert r.spot_ticks == 64 and r.ondemand_ticks == 4
    assert frac(r.cost_vs_ondemand) == Fraction(64 + 12, 144)
    assert r.launch_failures == 2
    # the planner's own words: only plan_replicas writes this reason
    assert isinstance(policy.last_plan, hedge.ReplicaPlan)
    assert policy.last_plan.reason == "steady at target 3; avoiding bad zones sim/r-a/a"
    assert policy.last_plan.bad_zones == frozenset({A})


def test_one_zone_down_omniscient() -> None:
    r = omniscient_window(DOWN, setup(20))
    assert r.availability == 1.0
    assert r.spot_ticks == 48 and r.ondemand_ticks == 0
    assert frac(r.cost_vs_ondemand) == Fraction(1, 3)


# -- two zones alternating -----------------------------------------------------------------
# a: 4 for ticks 0-9, 0 for 10-19, 4 for 20-29, 0 for 30-39; b the opposite. 36 counted.

ALT = [alternating(10, 40, up=4, start_up=True), alternating(10, 40, up=4, start_up=False)]


def test_alternating_round_robin() -> None:
    # each flip preempts all 3; the next zone in turn gets 2 of 3 at once, the third after
    # two failed tries: READY 3 only at 6-9, 17-19, 27-29, 37-39
    s = setup(40)
    r = run_window(RoundRobinPolicy([A, B], s, random.Random(0)), ALT, [A, B], s)
    assert r.availability == 13 / 36
    assert r.spot_ticks == 93
    assert frac(r.cost_vs_ondemand) == Fraction(93, 324)
    assert r.preemptions == 9 and r.launch_failures == 8


def test_alternating_on_demand_and_omniscient() -> None:
    s = setup(40)
    od = run_window(OnDemandPolicy([A, B], s, random.Random(0)), ALT, [A, B], s)
    assert od.availability == 1.0 and od.cost_vs_ondemand == 1.0
    best = omniscient_window(ALT, s)
    # spot could be READY except in the 4 ticks after each flip (10-13, 20-23, 30-33)
    assert best.ondemand_ticks == 36 and best.spot_ticks == 72
    assert frac(best.cost_vs_ondemand) == Fraction(5, 9)


def test_alternating_spotd_needs_on_demand_at_every_flip() -> None:
    s = setup(40)
    r = run_window(SpotdPolicy([A, B], s, random.Random(0)), ALT, [A, B], s)
    best = omniscient_window(ALT, s)
    assert r.cost_vs_ondemand >= best.cost_vs_ondemand
    assert r.preemptions >= 3  # every flip takes the replicas in the zone that went down
    assert r.availability < 1.0  # no warning: the fallback is 4 ticks late at each flip


def test_alternating_spotd_with_notices_never_drops_below_target() -> None:
    # a 120 s notice is exactly the cold start: the replacement is READY as the loss lands
    s = setup(40, notice_seconds=120.0)
    r = run_window(SpotdPolicy([A, B], s, random.Random(0)), ALT, [A, B], s)
    assert r.availability == 1.0


def test_cost_and_availability_count_the_same_ticks() -> None:
    s = setup(8)
    r = run_window(OnDemandPolicy([A], s, random.Random(0)), [[0] * 8], [A], s)
    assert r.ready == (0, 0, 0, 0, 3, 3, 3, 3)
    assert r.cumulative_cost[-1] == pytest.approx(4 * 9 * 30 / 3600)
