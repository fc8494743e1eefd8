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
  least ``target`` replicas the load balancer routes to: READY and not drained (a replica
  under a preemption notice serves until the policy drains it, as the daemon's planner does
  once its replacement is READY, or ``hedge.NOTICE_HANDOFF_SECONDS`` before its deadline).
  Without notices everything happens on tick boundaries and a tick counts whole or not at
  all, as in the artifact; with notices a tick counts for the part of it with enough
  (``served_fraction``, "Notices" below). Both count
  the ticks after the first ``cold_start`` ones (as the artifact does), and cost is reported
  as a fraction of holding ``target`` on-demand replicas over those ticks
  (``cost_vs_ondemand``) and in replica-hours priced spot 1 / on-demand 3 (``cost``).

At every tick a policy sees the replicas alive after the previous tick (READY if they were
READY then), those under notice, and what happened to earlier ones (``SimEvent``), and answers
with launches and terminations; then the trace decides which spot replicas survive the tick.

Notices. A ``+notice`` policy (``spotd+notice``, ``spothedge+notice``) runs with preemption
notices drawn from a :class:`NoticeModel` (the setup's, else the trace cloud's default:
``EC2_NOTICE``, ``GCP_NOTICE``): each spot replica draws at launch whether its preemption will
be announced and how long before; at every tick the simulator looks ahead in the trace and
announces the losses within their replica's lead. An announced replica goes at its deadline
whatever the zone holds by then; one never announced is lost as without notices. The draws
are seeded by the run's seed and the window's offset. Both notice-aware policies react as
spotd's executor does: the noticed replica stops counting as capacity, so its replacement is
planned in the same step; it keeps serving (the LB still routes to it) until the others READY
make the target, then it is drained and let go within the tick (``hedge.plan_replicas``,
"Notices"). Time is kept to the second around a notice, as the daemon acts on one at once
and not at the next tick: the tick that reads a notice is decided ``REACTION_SECONDS`` after
the notice came (its launches are READY a cold start later, part-way through a tick, and are
paid from then), and the noticed replica stops taking requests ``NOTICE_HANDOFF_SECONDS``
before its deadline. So a replacement launched at the notice covers the loss only if the lead
is at least the cold start + 16 s; with EC2's two minutes each loss not covered by a spare
leaves a gap of 16 s or more, counted to the second (a whole tick before issue #16's fourth
round: a 119 s notice cost 30 s and a 120 s one nothing).

Single-node traces. A folder whose values are all 0 or 1 reads as "available, unlimited" (the
artifact's reading of its 2-month trace) unless ``binary_unlimited`` is off.

Policies (``POLICIES``):

``spotd``
    spotd's own planner, ``spotd.serve.hedge.plan_replicas``, called as the daemon calls it:
    ``replicas: 3`` with ``dynamic_ondemand_fallback`` and ``num_overprovision`` 1, the zone
    history it would have recorded (PREEMPTED / LAUNCH_FAILED / LAUNCHED), and the per-zone
    preemption risk that ``spotd.recovery.history.preemption_risk`` learns from preemptions and
    survival times (the zone's ``preemption_risk``). Its calm mode (``calm_seconds``) and
    shaky-zone cover (``shaky_zone_seconds``) are the daemon's defaults.
``spothedge``
    The paper's policy as its artifact simulates it (``SpotHedge`` spot placer with the
    ``SpotFailoverNoSafety`` fallback): ``target + 1`` spot replicas; a new one goes to a random
    *good* zone that holds none yet (else any good zone); a zone whose count fell short of what
    was asked (preempted, or a launch failed) turns bad, one that kept all it was asked for
    turns good; when no more than ``max(0, min(1, zones - 3))`` zones are good, all are good
    again (for 3 zones or fewer: when none is; the artifact's ``min(1, zones - 3)`` never
    fires below 3 zones); a replica under notice no longer counts as held (it serves until
    the others READY make the target, as in spotd's executor); on-demand =
    ``min(target, target + 1 - READY spot)`` at the previous tick.
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

import dataclasses
import itertools
import math
import random
from collections.abc import Sequence

from spotd.serve import hedge
from spotd.sim.serve_model import (
    EC2_NOTICE,
    GCP_NOTICE,
    Decision,
    NoticeModel,
    PolicyFactory,
    PolicyResult,
    ServePolicy,
    ServeSetup,
    SimEvent,
    SimEventKind,
    SimReplica,
    TickView,
    WindowResult,
    default_notice,
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

UNLIMITED = 10**9  # the capacity of a zone that a binary trace says is available
# the daemon acts on a notice this long after it is posted: the agent polls the metadata
# service every 0.2 s and reports at once; the service controller plans in that step
REACTION_SECONDS = 1.0

__all__ = [
    "EC2_NOTICE",
    "GCP_NOTICE",
    "POLICIES",
    "POLICY_NAMES",
    "Decision",
    "EvenSpreadPolicy",
    "NoticeModel",
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
    "base_policy",
    "default_notice",
    "omniscient_window",
    "run_policy",
    "run_window",
    "served_fraction",
    "simulate_serve",
    "windows_of",
    "with_notice",
]


# -- the simulator -------------------------------------------------------------------------


def run_window(
    policy: ServePolicy,
    capacity: Sequence[Sequence[int]],
    zones: Sequence[ZoneKey],
    setup: ServeSetup,
    *,
    offset: int = 0,
    notice: NoticeModel | None = None,
) -> WindowResult:
    """Run one policy over one window. ``capacity[z][t]``: spot replicas zone ``z`` allows at
    tick ``t`` of the window (already cut to the window). ``notice``: preemptions come with
    notices drawn from this model (None: never)."""
    T, C, dt = setup.window_ticks, setup.cold_ticks, setup.tick_seconds
    zone_index = {z: i for i, z in enumerate(zones)}
    alive: list[SimReplica] = []
    ready_prev: frozenset[int] = frozenset()
    events: list[SimEvent] = []
    notices = _Notices(notice, dt, seed=setup.seed, offset=offset)
    next_id = 1
    spot_ticks = ondemand_ticks = preemptions = failures = 0
    counted_ok = cost_units = 0.0
    ready_series: list[int] = []
    cum: list[float] = []
    started: dict[int, float] = {}  # replica id -> when it was launched (seconds)
    for t in range(T):
        now = t * dt
        # a tick's decision is taken at the tick, or, when it reads a notice, when the
        # daemon would have read it: the notice's time (never before the previous tick,
        # whose events it also reads) plus REACTION_SECONDS
        issued = notices.issue(alive, capacity, zone_index, t)
        seen_at = [max(at, (t - 1) * dt, 0.0) for _, _, at in issued]
        decide_at = min(seen_at) + REACTION_SECONDS if issued else now
        for (r, deadline, _), seen in zip(issued, seen_at, strict=True):
            preemptions += 1  # counted when announced, not again when the zone takes it
            ran = seen - r.launched_tick * dt  # what the executor records as its run (RAN)
            events.append(
                SimEvent(
                    SimEventKind.NOTICE, r.zone, r.market, t, seen, r.id, ran, deadline=deadline
                )
            )
        view = TickView(
            t, decide_at, setup.target, tuple(alive), ready_prev, tuple(events), notices.announced()
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
        for zone, market in decision.launch:
            if market is Market.SPOT and zone not in zone_index:
                raise ValueError(f"policy launched spot in unknown zone {zone}")
            alive.append(SimReplica(next_id, zone, market, t))
            started[next_id] = decide_at
            if t > C:  # held from decide_at: more (or less) than the tick's whole
                cost_units += (now - decide_at) / dt * _unit_cost(market, setup)
            if market is Market.SPOT:
                notices.draw(next_id)
            next_id += 1
        # the trace decides: a zone holding more spot than it allows loses the newest
        by_zone: dict[ZoneKey, list[SimReplica]] = {}
        for r in alive:
            if r.market is Market.SPOT:
                by_zone.setdefault(r.zone, []).append(r)
        lost: set[int] = set()
        for zone, held in by_zone.items():
            allowed = capacity[zone_index[zone]][t]
            due = [r for r in held if notices.due(r.id) == t]
            if len(held) > allowed or due:
                # a replica whose notice runs out goes first, then the newest
                held.sort(key=lambda r: (notices.due(r.id) == t, r.launched_tick, r.id))
                for r in held[min(allowed, len(held) - len(due)) :]:
                    lost.add(r.id)
                    if r.launched_tick == t:
                        failures += 1
                        events.append(
                            SimEvent(SimEventKind.LAUNCH_FAILED, zone, r.market, t, now, r.id)
                        )
                    else:
                        preemptions += notices.due(r.id) is None
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
        notices.forget(lost | gone)
        for i in lost | gone:
            started.pop(i, None)
        for r in alive:
            if r.launched_tick == t:
                events.append(SimEvent(SimEventKind.LAUNCHED, r.zone, r.market, t, now, r.id))
            elif t - r.launched_tick == C:
                events.append(SimEvent(SimEventKind.READY, r.zone, r.market, t, now, r.id))
        warm = frozenset(r.id for r in alive if t - r.launched_tick >= C)
        # what the LB routes to: the READY replicas; one under notice counts until the policy
        # drains it (terminated above) or the zone takes it
        serving = warm
        n_spot = sum(1 for r in alive if r.market is Market.SPOT)
        n_od = len(alive) - n_spot
        if t >= C:
            spot_ticks += n_spot
            ondemand_ticks += n_od
            cost_units += n_spot + setup.ondemand_cost * n_od
            spans = [(started[r.id] + C * dt, notices.serves_until(r.id)) for r in alive]
            counted_ok += served_fraction(spans, now, dt, setup.target)
        ready_series.append(len(serving))
        cum.append(cost_units * dt / 3600.0)
        ready_prev = warm
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


def _unit_cost(market: Market, setup: ServeSetup) -> float:
    return setup.ondemand_cost if market is Market.ON_DEMAND else 1.0


def served_fraction(
    spans: Sequence[tuple[float, float]], start: float, dt: float, target: int
) -> float:
    """The part of the tick ``[start, start + dt)`` during which at least ``target`` of the
    replicas held over it are routable; ``spans``: when each one is, (READY from, drained at).

    Replicas launched at a tick are READY on a tick boundary and lost on one, so without
    notices this is 0 or 1, the artifact's count of ticks. One launched when a notice was read
    is READY part-way through a tick, and one under notice stops taking requests
    ``NOTICE_HANDOFF_SECONDS`` before its deadline: such a tick counts for the part of it with
    enough of them (module docstring, "Notices").
    """
    end = start + dt

    def enough(a: float, b: float) -> bool:
        return sum(1 for ready, until in spans if ready <= a and b <= until) >= target

    inside = {x for span in spans for x in span if start < x < end}
    if not inside:  # nothing changes within the tick: whole or nothing, exactly
        return float(enough(start, end))
    points = sorted({start, end, *inside})
    return sum(b - a for a, b in itertools.pairwise(points) if enough(a, b)) / dt


class _Notices:
    """The preemption notices of one window (module docstring, "Notices").

    ``draw`` decides when a spot replica is launched whether its preemption will be announced
    and how many ticks ahead; ``issue`` looks ahead in the trace at every tick and announces
    the losses that are now within their replica's lead. An announced replica is lost at its
    deadline whatever the zone's capacity is by then (the cloud has decided); one without a
    notice is lost as it would be with no notices at all, when the trace takes it.
    """

    def __init__(
        self, model: NoticeModel | None, tick_seconds: float, *, seed: int, offset: int
    ) -> None:
        self.model = model
        self.tick_seconds = tick_seconds
        self.horizon = 0 if model is None else int(model.lead_max_seconds // tick_seconds)
        self.rng = random.Random(f"notices/{seed}/{offset}")  # str seeds are stable
        self.lead: dict[int, float] = {}  # replica id -> its notice's lead, s (absent: none)
        self.deadline: dict[int, int] = {}  # announced replica id -> the tick it is lost

    def draw(self, replica: int) -> None:
        m = self.model
        if m is None:
            return
        missed = self.rng.random() < m.missed
        lead = self.rng.uniform(m.lead_min_seconds, m.lead_max_seconds)
        if not missed:
            self.lead[replica] = lead

    def due(self, replica: int) -> int | None:
        return self.deadline.get(replica)

    def serves_until(self, replica: int) -> float:
        """When the LB stops routing to it: ``NOTICE_HANDOFF_SECONDS`` before its deadline,
        as the daemon drains a replica under notice (never, as far as notices know)."""
        d = self.deadline.get(replica)
        return math.inf if d is None else d * self.tick_seconds - hedge.NOTICE_HANDOFF_SECONDS

    def announced(self) -> frozenset[int]:
        return frozenset(self.deadline)

    def forget(self, replicas: set[int]) -> None:
        for i in replicas:
            self.deadline.pop(i, None)
            self.lead.pop(i, None)

    def issue(
        self,
        alive: Sequence[SimReplica],
        capacity: Sequence[Sequence[int]],
        zone_index: dict[ZoneKey, int],
        t: int,
    ) -> list[tuple[SimReplica, int, float]]:
        """The notices of tick ``t``: the losses the trace holds within each replica's lead
        (in a zone holding ``n`` when its capacity falls to ``c``, the newest ``n - c``), as
        (replica, the tick it is lost, when the notice came in seconds: its lead before that
        tick, in the tick before ``t`` or at ``t``)."""
        if not self.lead:
            return []
        by_zone: dict[ZoneKey, list[SimReplica]] = {}
        pending: dict[ZoneKey, list[int]] = {}  # deadlines of the announced ones, per zone
        for r in alive:
            if r.market is not Market.SPOT:
                continue
            if r.id in self.deadline:
                pending.setdefault(r.zone, []).append(self.deadline[r.id])
            else:
                by_zone.setdefault(r.zone, []).append(r)
        issued: list[tuple[SimReplica, int, float]] = []
        dt = self.tick_seconds
        for zone, held in by_zone.items():
            held.sort(key=lambda r: (r.launched_tick, r.id))
            cap = capacity[zone_index[zone]]
            due = pending.get(zone, [])
            for d in range(t, min(t + self.horizon + 1, len(cap))):
                excess = len(held) + sum(1 for x in due if x > d) - cap[d]
                while excess > 0 and held:
                    r = held.pop()  # lost at d as things stand; announced once within its lead
                    excess -= 1
                    lead = self.lead.get(r.id)
                    if lead is not None and (d - t) * dt <= lead:
                        self.deadline[r.id] = d
                        due.append(d)
                        issued.append((r, d, d * dt - lead))
        return issued


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
    """The seeded window offsets and, per window, each zone's capacity per tick.

    A folder whose every value is 0 or 1 (a single-node trace: did one launch succeed?) says
    nothing of how many replicas a zone could hold; with ``setup.binary_unlimited`` (the
    default) a 1 reads as "available, unlimited", as the SpotHedge artifact reads its 2-month
    trace, otherwise as room for one replica.
    """
    if not traces:
        raise TraceError("no zones in the trace")
    ticks = [t.ticks(setup.tick_seconds) for t in traces]
    if setup.binary_unlimited and all(t.binary for t in traces):
        ticks = [tuple(UNLIMITED if v else 0 for v in z) for z in ticks]
    length = common_ticks(traces, setup.tick_seconds)
    offsets = window_offsets(length, setup.window_ticks, setup.windows, seed=setup.seed)
    cut = [[list(z[o : o + setup.window_ticks]) for z in ticks] for o in offsets]
    return offsets, cut


def with_notice(
    setup: ServeSetup,
    traces: Sequence[ZoneTrace],
    *,
    lead: tuple[float, float] | None = None,
    missed: float | None = None,
) -> ServeSetup:
    """``setup`` with its notice model settled: the model given, else the default of the
    traces' cloud, with ``lead`` (min, max seconds) and ``missed`` replaced when given."""
    base = setup.notice or default_notice(traces[0].zone.provider if traces else "aws")
    lo, hi = lead if lead is not None else (base.lead_min_seconds, base.lead_max_seconds)
    model = NoticeModel(lo, hi, base.missed if missed is None else missed)
    return dataclasses.replace(setup, notice=model)


def base_policy(name: str) -> tuple[str, bool]:
    """``"spotd+notice"`` -> (``"spotd"``, True): the policy and whether it gets notices."""
    base, plus, suffix = name.partition("+")
    if name not in POLICY_NAMES or (plus and suffix != "notice"):
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    return base, bool(plus)


def run_policy(
    name: str, traces: Sequence[ZoneTrace], setup: ServeSetup = ServeSetup()
) -> PolicyResult:
    """Run the policy called ``name`` (one of ``POLICY_NAMES``)."""
    base, noticed = base_policy(name)
    offsets, cut = windows_of(traces, setup)
    zones = [t.zone for t in traces]
    notice = None
    if noticed:
        notice = setup.notice or default_notice(zones[0].provider)
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
        if base == "omniscient":
            results.append(omniscient_window(window_capacity, setup, offset=offset))
            continue
        policy = POLICIES[base](window_zones, setup, policy_rng)
        results.append(
            run_window(policy, window_capacity, window_zones, setup, offset=offset, notice=notice)
        )
    return PolicyResult(name, tuple(results))


def simulate_serve(
    traces: Sequence[ZoneTrace],
    setup: ServeSetup = ServeSetup(),
    policies: Sequence[str] | None = None,
) -> list[PolicyResult]:
    return [run_policy(p, traces, setup) for p in (policies or POLICY_NAMES)]
