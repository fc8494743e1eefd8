"""Serving simulator on small traces whose answers are worked out by hand.

Setup everywhere: target 3, a 4-tick cold start, costs counted (like availability) over the
ticks after the first 4, on-demand = 3 spot; so ``cost_vs_ondemand = units / (9 * counted)``.
"""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import pytest

from spotd.serve import hedge
from spotd.sim.serve import (
    Decision,
    EvenSpreadPolicy,
    NoticeModel,
    OnDemandPolicy,
    RoundRobinPolicy,
    ServeSetup,
    SimEventKind,
    SpotdPolicy,
    SpotHedgePolicy,
    TickView,
    WindowResult,
    base_policy,
    omniscient_window,
    run_policy,
    run_window,
    served_fraction,
)
from spotd.types import Market
from tests.simulate.helpers import alternating, write_traces, zone

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
    # b and c. Not calm yet (nothing has run 2 h), so the fallback keeps the overprovision
    # too, as SpotHedge's does (target + 1 - READY spot): 3 on-demand, 2 at t5 (2 spot READY),
    # none at t6.
    policy, r = run_down(SpotdPolicy)
    assert r.availability == 1.0
    assert r.spot_ticks == 64 and r.ondemand_ticks == 5
    assert frac(r.cost_vs_ondemand) == Fraction(64 + 15, 144)
    assert r.launch_failures == 2
    # the planner's own words: only plan_replicas writes this reason
    assert isinstance(policy.last_plan, hedge.ReplicaPlan)
    assert policy.last_plan.reason == "steady at target 3; avoiding bad zones sim/r-a/a"
    assert policy.last_plan.bad_zones == frozenset({A})


def test_one_zone_down_spotd_with_a_base_of_on_demand() -> None:
    # base_ondemand_fallback_replicas 1 (SkyServe's, counted inside the target): 2 spot needed
    # + the overprovision; once spot is READY, exactly 1 on-demand stays
    s = setup(20, base_ondemand=1)
    spy = Spy(SpotdPolicy([A, B, C], s, random.Random(0)))
    r = run_window(spy, DOWN, [A, B, C], s)
    assert r.availability == 1.0
    last = spy.views[-1].replicas
    assert sum(x.market is Market.ON_DEMAND for x in last) == 1
    assert sum(x.market is Market.SPOT for x in last) == 3
    assert r.ondemand_ticks >= 16  # never without its base
    with pytest.raises(ValueError, match="base_ondemand"):
        setup(20, base_ondemand=4)


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


# -- notices ------------------------------------------------------------------------------
# One zone, target 1: room for 1 until tick 12, none after; 20 ticks, 16 counted (4-19).
# Round robin ignores notices (it relaunches into the dead zone every tick).

ONE_THEN_NONE = [[1] * 12 + [0] * 8]


class Spy:
    """Wraps a policy and keeps every view it was shown and every decision it made."""

    def __init__(self, policy):  # type: ignore[no-untyped-def]
        self.policy = policy
        self.views: list[TickView] = []
        self.decisions: list[Decision] = []

    def decide(self, view: TickView) -> Decision:
        self.views.append(view)
        self.decisions.append(self.policy.decide(view))
        return self.decisions[-1]


def run_one_zone(notice: NoticeModel | None) -> tuple[Spy, WindowResult]:
    s = setup(20, target=1)
    spy = Spy(RoundRobinPolicy([A], s, random.Random(0)))
    return spy, run_window(spy, ONE_THEN_NONE, [A], s, notice=notice)


def test_without_notices_the_replica_serves_until_the_zone_takes_it() -> None:
    _, r = run_one_zone(None)
    assert r.ready[4:12] == (1,) * 8 and r.ready[12:] == (0,) * 8
    assert r.availability == 8 / 16
    assert r.preemptions == 1


class DrainAtNotice:
    """Round robin that drains a replica the moment it gets a notice (the executor before
    issue #16): the LB loses it at the notice, not at its deadline."""

    def __init__(self, policy: RoundRobinPolicy) -> None:
        self.policy = policy

    def decide(self, view: TickView) -> Decision:
        d = self.policy.decide(view)
        return Decision(d.launch, (*d.terminate, *sorted(view.noticed)))


def test_a_replica_under_notice_serves_until_it_is_drained() -> None:
    # a 60 s (2-tick) notice arrives at tick 10, the zone takes the replica at tick 12; round
    # robin ignores notices, so the LB routes to it until the executor drains it, 15 s before
    # its deadline (hedge.NOTICE_HANDOFF_SECONDS): ticks 4-10 and half of tick 11, of 16
    assert hedge.NOTICE_HANDOFF_SECONDS == 15.0
    spy, r = run_one_zone(NoticeModel(60.0, 60.0, missed=0.0))
    assert r.ready[4:12] == (1,) * 8 and r.ready[12:] == (0,) * 8
    assert r.availability == 7.5 / 16
    assert r.preemptions == 1  # counted once, at the notice
    (notice,) = [e for v in spy.views for e in v.events if e.kind is SimEventKind.NOTICE]
    assert (notice.tick, notice.deadline) == (10, 12)
    assert spy.views[10].noticed == frozenset({notice.replica})
    # drained at the notice, the LB loses it 2 ticks earlier: 6 serving ticks, not 8
    s = setup(20, target=1)
    drained = run_window(
        DrainAtNotice(RoundRobinPolicy([A], s, random.Random(0))),
        ONE_THEN_NONE,
        [A],
        s,
        notice=NoticeModel(60.0, 60.0, missed=0.0),
    )
    assert drained.ready[4:10] == (1,) * 6 and drained.ready[10:] == (0,) * 10
    assert drained.availability == 6 / 16


# Zone a has room for 1 until tick 12 and none after; zone b always has room for 1. Target 1,
# no overprovision: spotd holds 1 spot replica in a (the first zone on a tie) from tick 0.

A_THEN_B = [[1] * 12 + [0] * 8, [1] * 20]


@pytest.mark.parametrize(
    ("lead", "availability"),
    [
        # the notice comes at 240 s (tick 8, 4 ticks ahead): the replacement in b and the
        # on-demand fallback are launched when the daemon reads it, 1 s later
        # (REACTION_SECONDS), and are READY at 361 s; the noticed replica serves until 15 s
        # before a takes it at 360 s: 16 s short, 15 in tick 11 and 1 in tick 12
        (120.0, (16 - 16 / 30) / 16),
        # at 285 s (in tick 9; the simulator announces it at tick 10, the first tick within
        # its lead, and the daemon acts at 286 s): READY at 406 s; from 345 s none: 61 s short
        (75.0, (16 - 61 / 30) / 16),
        # at 300 s (tick 10): READY at 421 s; 76 s short
        (60.0, (16 - 76 / 30) / 16),
    ],
)
def test_spotd_keeps_a_noticed_replica_serving_until_its_replacement_is_ready(
    lead: float, availability: float
) -> None:
    s = setup(20, target=1, overprovision=0)
    spy = Spy(SpotdPolicy([A, B], s, random.Random(0)))
    r = run_window(spy, A_THEN_B, [A, B], s, notice=NoticeModel(lead, lead, missed=0.0))
    assert r.availability == availability
    (notice,) = [e for v in spy.views for e in v.events if e.kind is SimEventKind.NOTICE]
    assert notice.deadline == 12
    # from the notice on: the replacement launched at once, the noticed replica not drained
    # (the zone takes it at its deadline, before the replacement is READY)
    assert (B, Market.SPOT) in spy.decisions[notice.tick].launch
    assert not any(notice.replica in d.terminate for d in spy.decisions[notice.tick : 12])
    # without notices the planner learns of the loss at tick 12, when it happens
    plain = run_window(SpotdPolicy([A, B], s, random.Random(0)), A_THEN_B, [A, B], s)
    assert plain.availability < availability


def test_a_notice_that_never_comes_is_no_notice() -> None:
    spy, r = run_one_zone(NoticeModel(60.0, 120.0, missed=1.0))
    assert r.availability == 8 / 16
    assert not any(e.kind is SimEventKind.NOTICE for v in spy.views for e in v.events)


def test_notice_leads_and_misses_are_drawn_from_the_model_and_seeded() -> None:
    # zone a flips every 10 ticks for 400 ticks: ~20 preemption waves
    s = setup(400)
    cap = [alternating(10, 400, up=4, start_up=True), alternating(10, 400, up=4, start_up=False)]
    model = NoticeModel(30.0, 120.0, missed=0.3)

    def notices(offset: int) -> list[tuple[int, int]]:
        spy = Spy(RoundRobinPolicy([A, B], s, random.Random(0)))
        run_window(spy, cap, [A, B], s, offset=offset, notice=model)
        return [
            (e.tick, e.deadline)
            for v in spy.views
            for e in v.events
            if e.kind is SimEventKind.NOTICE
        ]

    first = notices(0)
    assert first == notices(0)  # the same seed and window: the same notices
    assert first != notices(1)  # another window draws again
    assert all(1 <= d - t <= 4 for t, d in first)  # 30-120 s at 30 s ticks
    assert {d - t for t, d in first} >= {1, 2, 3}
    r = run_window(RoundRobinPolicy([A, B], s, random.Random(0)), cap, [A, B], s, notice=model)
    assert 0 < len(first) < r.preemptions  # some came with a notice, some without


@pytest.mark.parametrize("policy_cls", [SpotdPolicy, SpotHedgePolicy])
def test_notice_aware_policies_replace_at_once_and_keep_the_noticed_until_replaced(
    policy_cls,
) -> None:  # type: ignore[no-untyped-def]
    # as spotd's executor does: the replacement of a replica under notice is launched in the
    # step that reads the notice; the noticed replica is drained (terminated) only once the
    # others READY make the target, else the zone takes it at its deadline
    s = setup(40)
    spy = Spy(policy_cls([A, B], s, random.Random(0)))
    r = run_window(spy, ALT, [A, B], s, notice=NoticeModel(120.0, 120.0, missed=0.0))
    noticed_at = [v.tick for v in spy.views if v.noticed]
    assert noticed_at  # every flip announces the replicas in the zone going down
    deadline = {e.replica: e.deadline for v in spy.views for e in v.events if e.deadline}
    first = [t for t in noticed_at if not spy.views[t - 1].noticed]
    for t in first:
        assert len(spy.decisions[t].launch) >= len(spy.views[t].noticed)
    for t in noticed_at:
        view, decision = spy.views[t], spy.decisions[t]
        others = sum(1 for x in view.replicas if x.id in view.ready and x.id not in view.noticed)
        drained = set(decision.terminate) & view.noticed
        assert view.noticed - view.ready <= drained  # it never served: nothing to keep
        # (at its deadline's tick it is drained whatever: its deadline is near)
        serving = {i for i in view.noticed & view.ready if deadline[i] > t}
        assert drained & serving == (serving if others >= 3 else set()), t
    assert r.preemptions >= 3


@pytest.mark.parametrize(
    ("lead", "full"), [(150.0, True), (136.0, True), (135.0, False), (120.0, False), (60.0, False)]
)
def test_a_notice_hides_a_loss_only_if_it_outlasts_the_cold_start(lead: float, full: bool) -> None:
    # each flip takes every replica of one zone; spotd keeps them serving while their
    # replacements start: they are READY 1 s (the reaction) + 120 s (the cold start) after
    # the notice, and the noticed replicas stop taking requests 15 s before their deadline,
    # so a notice hides the loss only from 136 s ahead; EC2's 120 s leaves 16 s per loss
    s = setup(40)
    plain = run_window(SpotdPolicy([A, B], s, random.Random(0)), ALT, [A, B], s)
    noticed = run_window(
        SpotdPolicy([A, B], s, random.Random(0)),
        ALT,
        [A, B],
        s,
        notice=NoticeModel(lead, lead, missed=0.0),
    )
    assert plain.availability < 1.0
    assert (noticed.availability == 1.0) is full
    assert noticed.availability > plain.availability  # the replacement starts earlier


INF = float("inf")


@pytest.mark.parametrize(
    ("spans", "target", "served"),
    [
        # (READY from, routable until) per replica; the tick is [300, 330)
        ([(0, INF)] * 3, 3, 1.0),  # READY before the tick: the whole tick
        ([(0, INF)] * 2, 3, 0.0),  # one short all along
        ([(0, INF), (0, INF), (330, INF)], 3, 0.0),  # READY at the next tick: none of this one
        ([(0, INF), (0, INF), (300, INF)], 3, 1.0),  # READY at its start: all of it
        ([(0, INF), (0, INF), (310, INF)], 3, 2 / 3),  # READY 10 s in: the last 20 s
        ([(0, INF), (0, INF), (0, 315)], 3, 0.5),  # drained 15 s before a deadline at 330
        ([(0, INF), (0, INF), (0, 315), (321, INF)], 3, 0.8),  # short from 315 to 321
        ([(0, INF), (0, 305), (310, 320), (325, INF)], 2, 20 / 30),  # two gaps of 5 s
        ([(0, 315), (310, INF)], 1, 1.0),  # the replacement READY before the handoff
        ([], 1, 0.0),
    ],
)
def test_served_fraction(spans: list[tuple[float, float]], target: int, served: float) -> None:
    assert served_fraction(spans, 300.0, 30.0, target) == pytest.approx(served)


# -- single-node traces ---------------------------------------------------------------------


def test_binary_traces_read_as_available_unlimited(tmp_path: Path) -> None:
    # one zone, 0/1 data: as the SpotHedge artifact reads it, a 1 holds any number of
    # replicas, so round robin keeps its 3 there; read as room for 1, it never reaches 3
    traces = write_traces(tmp_path / "t", {"us-east-1a": [1] * 40}, gap_seconds=30)
    unlimited = run_policy("round-robin", traces, setup(20))
    assert unlimited.availability == 1.0
    assert unlimited.windows[0].spot_ticks == 48
    one = run_policy("round-robin", traces, setup(20, binary_unlimited=False))
    assert one.availability == 0.0
    assert one.windows[0].spot_ticks == 16


def test_policy_names() -> None:
    assert base_policy("spotd+notice") == ("spotd", True)
    assert base_policy("omniscient") == ("omniscient", False)
    with pytest.raises(ValueError, match="unknown policy"):
        base_policy("round-robin+notice")


def test_cost_and_availability_count_the_same_ticks() -> None:
    s = setup(8)
    r = run_window(OnDemandPolicy([A], s, random.Random(0)), [[0] * 8], [A], s)
    assert r.ready == (0, 0, 0, 0, 3, 3, 3, 3)
    assert r.cumulative_cost[-1] == pytest.approx(4 * 9 * 30 / 3600)
