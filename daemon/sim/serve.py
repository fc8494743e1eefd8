"""Replay spot traces through service placement policies, tick by tick.

The setup is the SpotHedge paper's microbenchmark (EuroSys'25, artifact
``MaoZiming/spothedge_ae``), so that numbers are comparable with the published ones:

- a service wants ``target`` (3) READY replicas; the clock ticks every 30 s;
- each zone of the trace folder is one failure domain; at tick ``t`` a zone can hold at most
  ``data[t]`` spot replicas. Holding more than that loses the newest ones: a replica launched
  at this very tick *failed to launch*, an older one was *preempted*. On-demand capacity never
  runs out;
- a replica launched at tick ``t0`` is READY from tick ``t0 + cold_start`` (120 s = 4 ticks) if
  it is still held then;
- a window is ``window_ticks`` (2,880 = 24 h) ticks from a seeded random offset (drawn exactly
  as the artifact draws them, ``numpy.random.RandomState(seed).randint``), ``windows`` (10) of
  them, and every policy sees the same windows;
- **cost** of a tick = spot replicas held + ``ondemand_cost`` (3) × on-demand replicas held,
  starting ones included, a failed launch free; **availability** = the fraction of ticks with at
  least ``target`` READY. Both count the ticks after the first ``cold_start`` ones (as the
  artifact does), and cost is reported as a fraction of holding ``target`` on-demand replicas
  over those ticks (``cost_vs_ondemand``) and in replica-hours priced spot 1 / on-demand 3
  (``cost``).

At every tick a policy sees the replicas alive after the previous tick (READY if they were
READY then) and what happened to earlier ones (``SimEvent``), and answers with launches and
terminations; then the trace decides which spot replicas survive the tick.

Policies (``POLICIES``):

``spotd``
    spotd's own planner, ``spotd.serve.hedge.plan_replicas``, called as the daemon calls it:
    ``replicas: 3`` with ``dynamic_ondemand_fallback`` and ``num_overprovision`` 1, the zone
    history it would have recorded (PREEMPTED / LAUNCH_FAILED / LAUNCHED), and the per-zone
    preemption risk that ``spotd.recovery.history.preemption_risk`` learns from preemptions and
    survival times (the zone's ``preemption_risk``).
``spothedge``
    The paper's policy as its artifact simulates it (``SpotHedge`` spot placer with the
    ``SpotFailoverNoSafety`` fallback): ``target + 1`` spot replicas; a new one goes to a random
    *good* zone that holds none yet (else any good zone); a zone whose count fell short of what
    was asked (preempted, or a launch failed) turns bad, one that kept all it was asked for
    turns good; when no more than ``min(1, zones - 3)`` zones are good, all are good again
    (for 3 zones: when none is); on-demand = ``min(target, target + 1 - READY spot)`` at the
    previous tick.
``round-robin``
    ``target`` spot replicas, each new one to the next zone in turn; no fallback.
``even-spread``
    ``target`` spot replicas, each new one to the zone holding fewest; no fallback.
``on-demand``
    ``target`` on-demand replicas.
``omniscient``
    A lower bound with hindsight, not a policy: at each tick, as many spot replicas as the
    traces could have kept READY (the zone's minimum availability over the cold-start window),
    on-demand for the rest, and no cost for warming up. The artifact's ILP charges warm-up and
    so lands a little higher.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from spotd.sim.serve_model import (
    Decision,
    PolicyFactory,
    PolicyResult,
    ServePolicy,
    ServeSetup,
    SimEvent,
    SimEventKind,
    SimReplica,
    TickView,
    WindowResult,
)
from spotd.sim.serve_policies import (
    POLICIES,
    POLICY_NAMES,
    EvenSpreadPolicy,
    OnDemandPolicy,
    RoundRobinPolicy,
    SpotdPolicy,
    SpotHedgePolicy,
)
from spotd.sim.traces import TraceError, ZoneTrace, common_ticks, window_offsets
from spotd.types import Market, ZoneKey

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "Decision",
    "EvenSpreadPolicy",
    "OnDemandPolicy",
    "PolicyFactory",
    "PolicyResult",
    "RoundRobinPolicy",
    "ServePolicy",
    "ServeSetup",
    "SimEvent",
    "SimEventKind",
    "SimReplica",
    "SpotHedgePolicy",
    "SpotdPolicy",
    "TickView",
    "WindowResult",
    "omniscient_window",
    "run_policy",
    "run_window",
    "simulate_serve",
    "windows_of",
]


# -- the simulator -------------------------------------------------------------------------


def run_window(
    policy: ServePolicy,
    capacity: Sequence[Sequence[int]],
    zones: Sequence[ZoneKey],
    setup: ServeSetup,
    *,
    offset: int = 0,
) -> WindowResult:
    """Run one policy over one window. ``capacity[z][t]``: spot replicas zone ``z`` allows at
    tick ``t`` of the window (already cut to the window)."""
    T, C, dt = setup.window_ticks, setup.cold_ticks, setup.tick_seconds
    zone_index = {z: i for i, z in enumerate(zones)}
    alive: list[SimReplica] = []
    ready_prev: frozenset[int] = frozenset()
    events: list[SimEvent] = []
    notices: dict[int, int] = {}  # replica id -> the tick its zone takes it back
    next_id = 1
    spot_ticks = ondemand_ticks = preemptions = failures = counted_ok = 0
    cost_units = 0.0
    ready_series: list[int] = []
    cum: list[float] = []
    for t in range(T):
        now = t * dt
        if setup.notice_ticks:
            _issue_notices(alive, capacity, zone_index, t, setup.notice_ticks, notices)
        view = TickView(
            t, now, setup.target, tuple(alive), ready_prev, tuple(events), frozenset(notices)
        )
        decision = policy.decide(view)
        events = []
        gone = set(decision.terminate)
        for r in alive:
            if r.id in gone:
                events.append(
                    SimEvent(
                        SimEventKind.TERMINATED,
                        r.zone,
                        r.market,
                        t,
                        now,
                        r.id,
                        (t - r.launched_tick) * dt,
                    )
                )
        alive = [r for r in alive if r.id not in gone]
        launched: list[SimReplica] = []
        for zone, market in decision.launch:
            if market is Market.SPOT and zone not in zone_index:
                raise ValueError(f"policy launched spot in unknown zone {zone}")
            launched.append(SimReplica(next_id, zone, market, t))
            next_id += 1
        alive += launched
        # the trace decides: a zone holding more spot than it allows loses the newest
        by_zone: dict[ZoneKey, list[SimReplica]] = {}
        for r in alive:
            if r.market is Market.SPOT:
                by_zone.setdefault(r.zone, []).append(r)
        lost: set[int] = set()
        for zone, held in by_zone.items():
            allowed = capacity[zone_index[zone]][t]
            due = [r for r in held if notices.get(r.id) == t]
            if len(held) > allowed or due:
                # a replica whose notice runs out goes first, then the newest
                held.sort(key=lambda r: (notices.get(r.id) == t, r.launched_tick, r.id))
                for r in held[min(allowed, len(held) - len(due)) :]:
                    lost.add(r.id)
                    if r.launched_tick == t:
                        failures += 1
                        events.append(
                            SimEvent(SimEventKind.LAUNCH_FAILED, zone, r.market, t, now, r.id)
                        )
                    else:
                        preemptions += 1
                        events.append(
                            SimEvent(
                                SimEventKind.PREEMPTED,
                                zone,
                                r.market,
                                t,
                                now,
                                r.id,
                                (t - r.launched_tick) * dt,
                            )
                        )
        alive = [r for r in alive if r.id not in lost]
        for i in lost | gone:
            notices.pop(i, None)
        for r in alive:
            if r.launched_tick == t:
                events.append(SimEvent(SimEventKind.LAUNCHED, r.zone, r.market, t, now, r.id))
            elif t - r.launched_tick == C:
                events.append(SimEvent(SimEventKind.READY, r.zone, r.market, t, now, r.id))
        ready_now = frozenset(r.id for r in alive if t - r.launched_tick >= C)
        n_spot = sum(1 for r in alive if r.market is Market.SPOT)
        n_od = len(alive) - n_spot
        if t >= C:
            spot_ticks += n_spot
            ondemand_ticks += n_od
            cost_units += n_spot + setup.ondemand_cost * n_od
            counted_ok += len(ready_now) >= setup.target
        ready_series.append(len(ready_now))
        cum.append(cost_units * dt / 3600.0)
        ready_prev = ready_now
    counted = T - C
    return WindowResult(
        offset=offset,
        availability=counted_ok / counted,
        cost=cost_units * dt / 3600.0,
        cost_vs_ondemand=cost_units / (setup.ondemand_cost * setup.target * counted),
        spot_ticks=spot_ticks,
        ondemand_ticks=ondemand_ticks,
        preemptions=preemptions,
        launch_failures=failures,
        ready=tuple(ready_series),
        cumulative_cost=tuple(cum),
    )


def _issue_notices(
    alive: Sequence[SimReplica],
    capacity: Sequence[Sequence[int]],
    zone_index: dict[ZoneKey, int],
    t: int,
    horizon: int,
    notices: dict[int, int],
) -> None:
    """Warn the spot replicas that the trace will take back within ``horizon`` ticks: in a
    zone holding ``n``, the newest ``n - c`` un-warned ones when capacity falls to ``c``."""
    by_zone: dict[ZoneKey, list[SimReplica]] = {}
    pending: dict[ZoneKey, list[int]] = {}  # deadlines of the warned ones, per zone
    for r in alive:
        if r.market is not Market.SPOT:
            continue
        if r.id in notices:
            pending.setdefault(r.zone, []).append(notices[r.id])
        else:
            by_zone.setdefault(r.zone, []).append(r)
    for zone, held in by_zone.items():
        held.sort(key=lambda r: (r.launched_tick, r.id))
        cap = capacity[zone_index[zone]]
        due = pending.get(zone, [])
        for d in range(t, min(t + horizon + 1, len(cap))):
            excess = len(held) + sum(1 for x in due if x > d) - cap[d]
            while excess > 0 and held:
                notices[held.pop().id] = d
                due.append(d)
                excess -= 1


def omniscient_window(
    capacity: Sequence[Sequence[int]], setup: ServeSetup, *, offset: int = 0
) -> WindowResult:
    """The hindsight lower bound (module docstring): per tick, the cheapest mix of replicas
    that *could* be READY, with warm-up free. No online policy can cost less."""
    T, C, dt, n = setup.window_ticks, setup.cold_ticks, setup.tick_seconds, setup.target
    spot_ticks = ondemand_ticks = 0
    cost_units = 0.0
    cum: list[float] = []
    for t in range(T):
        if t >= C:
            keepable = sum(min(zone[t - C : t + 1]) for zone in capacity)
            spot = min(n, keepable)
            spot_ticks += spot
            ondemand_ticks += n - spot
            cost_units += spot + setup.ondemand_cost * (n - spot)
        cum.append(cost_units * dt / 3600.0)
    counted = T - C
    return WindowResult(
        offset=offset,
        availability=1.0,
        cost=cost_units * dt / 3600.0,
        cost_vs_ondemand=cost_units / (setup.ondemand_cost * n * counted),
        spot_ticks=spot_ticks,
        ondemand_ticks=ondemand_ticks,
        preemptions=0,
        launch_failures=0,
        ready=tuple([0] * C + [n] * (T - C)),
        cumulative_cost=tuple(cum),
    )


def windows_of(
    traces: Sequence[ZoneTrace], setup: ServeSetup
) -> tuple[list[int], list[list[list[int]]]]:
    """The seeded window offsets and, per window, each zone's capacity per tick."""
    if not traces:
        raise TraceError("no zones in the trace")
    ticks = [t.ticks(setup.tick_seconds) for t in traces]
    length = common_ticks(traces, setup.tick_seconds)
    offsets = window_offsets(length, setup.window_ticks, setup.windows, seed=setup.seed)
    cut = [[list(z[o : o + setup.window_ticks]) for z in ticks] for o in offsets]
    return offsets, cut


def run_policy(
    name: str, traces: Sequence[ZoneTrace], setup: ServeSetup = ServeSetup()
) -> PolicyResult:
    """Run the policy called ``name`` (a key of ``POLICIES``, or ``omniscient``)."""
    offsets, cut = windows_of(traces, setup)
    zones = [t.zone for t in traces]
    results = []
    # zone order per window: the artifact shuffles its zone list before every window; the
    # order only matters to policies that break ties by position (round robin, SpotHedge)
    order_rng = random.Random(setup.seed)
    policy_rng = random.Random(setup.seed)
    for offset, capacity in zip(offsets, cut, strict=True):
        order = list(range(len(zones)))
        order_rng.shuffle(order)
        window_zones = [zones[i] for i in order]
        window_capacity = [capacity[i] for i in order]
        if name == "omniscient":
            results.append(omniscient_window(window_capacity, setup, offset=offset))
            continue
        try:
            factory = POLICIES[name]
        except KeyError:
            raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}") from None
        policy = factory(window_zones, setup, policy_rng)
        results.append(run_window(policy, window_capacity, window_zones, setup, offset=offset))
    return PolicyResult(name, tuple(results))


def simulate_serve(
    traces: Sequence[ZoneTrace],
    setup: ServeSetup = ServeSetup(),
    policies: Sequence[str] | None = None,
) -> list[PolicyResult]:
    return [run_policy(p, traces, setup) for p in (policies or POLICY_NAMES)]
