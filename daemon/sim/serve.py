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
    history it would have recorded (PREEMPTED / LAUNCH_FAILED / READY), and the per-zone
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

import enum
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from spotd.recovery import history as rhist
from spotd.serve import hedge
from spotd.serve.autoscaler import AutoscalePolicy
from spotd.serve.replica_state import ReplicaId, ReplicaStatus
from spotd.sim.traces import TraceError, ZoneTrace, common_ticks, window_offsets
from spotd.types import Market, ZoneKey

__all__ = [
    "POLICIES",
    "PolicyResult",
    "ServeSetup",
    "SimEvent",
    "SimEventKind",
    "SimReplica",
    "TickView",
    "WindowResult",
    "omniscient_window",
    "run_policy",
    "run_window",
    "simulate_serve",
]


@dataclass(frozen=True, slots=True)
class ServeSetup:
    """Every parameter of a serving run; the defaults are the SpotHedge paper's."""

    target: int = 3  # READY replicas the service needs
    tick_seconds: float = 30.0
    window_ticks: int = 2880  # 24 h of 30 s ticks
    windows: int = 10
    seed: int = 0
    cold_start_seconds: float = 120.0  # launch to READY
    ondemand_cost: float = 3.0  # an on-demand replica-tick costs this many spot replica-ticks
    overprovision: int = 1  # extra spot replicas (spotd, spothedge)
    bad_zone_seconds: float = hedge.DEFAULT_BAD_ZONE_SECONDS  # spotd: how long a zone stays bad
    use_risk: bool = True  # spotd: rank zones by the learned preemption risk
    notice_seconds: float = 0.0  # advance warning of a preemption (0: none, as in the paper)

    def __post_init__(self) -> None:
        if self.target < 1 or self.windows < 1 or self.window_ticks < 1:
            raise ValueError("target, windows and window_ticks must be >= 1")
        if not self.tick_seconds > 0 or self.cold_start_seconds < 0:
            raise ValueError("tick_seconds must be > 0 and cold_start_seconds >= 0")
        if self.window_ticks <= self.cold_ticks:
            raise ValueError("a window must be longer than the cold start")

    @property
    def cold_ticks(self) -> int:
        """Ticks from launch to READY (the artifact's ``cold_start_delay``)."""
        return int(self.cold_start_seconds // self.tick_seconds)

    @property
    def notice_ticks(self) -> int:
        return int(self.notice_seconds // self.tick_seconds)


class SimEventKind(enum.StrEnum):
    LAUNCHED = "LAUNCHED"  # a launch that the trace allowed
    LAUNCH_FAILED = "LAUNCH_FAILED"  # a spot launch into a zone with no capacity left
    READY = "READY"  # a replica finished its cold start
    PREEMPTED = "PREEMPTED"  # the zone's capacity fell below what we held there
    TERMINATED = "TERMINATED"  # the policy retired it


@dataclass(frozen=True, slots=True)
class SimReplica:
    id: int
    zone: ZoneKey
    market: Market
    launched_tick: int


@dataclass(frozen=True, slots=True)
class SimEvent:
    kind: SimEventKind
    zone: ZoneKey
    market: Market
    tick: int
    at: float  # seconds since the window began
    replica: int
    ran_seconds: float = 0.0  # PREEMPTED / TERMINATED: how long it was held


@dataclass(frozen=True, slots=True)
class TickView:
    """What a policy knows when it decides at ``tick``."""

    tick: int
    now: float
    target: int
    replicas: tuple[SimReplica, ...]  # alive after the previous tick
    ready: frozenset[int]  # ids of those that were READY at the previous tick
    events: tuple[SimEvent, ...]  # what happened during the previous tick
    noticed: frozenset[int] = frozenset()  # spot replicas under a preemption notice


@dataclass(frozen=True, slots=True)
class Decision:
    launch: tuple[tuple[ZoneKey, Market], ...] = ()
    terminate: tuple[int, ...] = ()


class ServePolicy(Protocol):
    def decide(self, view: TickView) -> Decision: ...


PolicyFactory = Callable[[Sequence[ZoneKey], ServeSetup, random.Random], ServePolicy]


@dataclass(frozen=True, slots=True)
class WindowResult:
    offset: int
    availability: float
    cost: float  # replica-hours, spot 1 / on-demand ondemand_cost
    cost_vs_ondemand: float
    spot_ticks: int
    ondemand_ticks: int
    preemptions: int
    launch_failures: int
    ready: tuple[int, ...] = field(repr=False, default=())  # READY replicas at each tick
    cumulative_cost: tuple[float, ...] = field(repr=False, default=())  # replica-hours


@dataclass(frozen=True, slots=True)
class PolicyResult:
    policy: str
    windows: tuple[WindowResult, ...]

    @property
    def availability(self) -> float:
        return sum(w.availability for w in self.windows) / len(self.windows)

    @property
    def cost(self) -> float:
        return sum(w.cost for w in self.windows) / len(self.windows)

    @property
    def cost_vs_ondemand(self) -> float:
        return sum(w.cost_vs_ondemand for w in self.windows) / len(self.windows)

    @property
    def min_availability(self) -> float:
        return min(w.availability for w in self.windows)

    @property
    def preemptions(self) -> float:
        return sum(w.preemptions for w in self.windows) / len(self.windows)

    @property
    def launch_failures(self) -> float:
        return sum(w.launch_failures for w in self.windows) / len(self.windows)


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
                    SimEvent(SimEventKind.TERMINATED, r.zone, r.market, t, now, r.id,
                             (t - r.launched_tick) * dt)
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
                            SimEvent(SimEventKind.PREEMPTED, zone, r.market, t, now, r.id,
                                     (t - r.launched_tick) * dt)
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


# -- spotd: the daemon's own planner -------------------------------------------------------


class SpotdPolicy:
    """Drives ``spotd.serve.hedge.plan_replicas`` with what the daemon would know.

    History is kept as the daemon keeps it (24 h of zone events); the preemption risk is
    ``spotd.recovery.history.preemption_risk`` over PREEMPTED events and survival times (RAN),
    passed as each zone's ``ZoneOption.preemption_risk``.
    """

    _MEMORY_SECONDS = 24 * 3600.0  # the controller reads 24 h of zone events

    def __init__(self, zones: Sequence[ZoneKey], setup: ServeSetup, rng: random.Random) -> None:
        del rng  # deterministic
        self.zones = list(zones)
        self.setup = setup
        self.policy = AutoscalePolicy(
            min_replicas=setup.target,
            max_replicas=setup.target,
            dynamic_ondemand_fallback=True,
            num_overprovision=setup.overprovision,
        )
        self.zone_history: list[hedge.ZoneEvent] = []
        self.risk_history: list[rhist.ZoneEvent] = []

    def _record(self, events: Sequence[SimEvent]) -> None:
        for e in events:
            if e.market is not Market.SPOT:
                continue
            if e.kind is SimEventKind.PREEMPTED:
                self.zone_history.append(
                    hedge.ZoneEvent(e.zone, hedge.ZoneEventKind.PREEMPTED, e.at)
                )
                self.risk_history.append(rhist.ZoneEvent(e.zone, rhist.ZoneEventKind.PREEMPTED, e.at))
                self.risk_history.append(
                    rhist.ZoneEvent(e.zone, rhist.ZoneEventKind.RAN, e.at, seconds=e.ran_seconds)
                )
            elif e.kind is SimEventKind.LAUNCH_FAILED:
                self.zone_history.append(
                    hedge.ZoneEvent(e.zone, hedge.ZoneEventKind.LAUNCH_FAILED, e.at)
                )
            elif e.kind is SimEventKind.READY:
                self.zone_history.append(hedge.ZoneEvent(e.zone, hedge.ZoneEventKind.READY, e.at))
            elif e.kind is SimEventKind.TERMINATED:
                self.risk_history.append(
                    rhist.ZoneEvent(e.zone, rhist.ZoneEventKind.RAN, e.at, seconds=e.ran_seconds)
                )

    def decide(self, view: TickView) -> Decision:
        self._record(view.events)
        # The daemon reads 24 h of events. plan_replicas only asks "is the latest event of
        # this zone a loss less than bad_zone_seconds ago", which events older than that cannot
        # change, so they are dropped here to keep each call cheap (results are identical).
        horizon = view.now - min(self._MEMORY_SECONDS, self.setup.bad_zone_seconds)
        if self.zone_history and self.zone_history[0].at < horizon:
            self.zone_history = [e for e in self.zone_history if e.at >= horizon]
        horizon = view.now - self._MEMORY_SECONDS
        if self.risk_history and self.risk_history[0].at < horizon:
            self.risk_history = [e for e in self.risk_history if e.at >= horizon]
        risk = rhist.preemption_risk(self.risk_history, view.now) if self.setup.use_risk else {}
        options = [
            hedge.ZoneOption(z, spot_price=1.0, ondemand_price=self.setup.ondemand_cost,
                             preemption_risk=risk.get(z, 0.0))
            for z in self.zones
        ]
        current = [
            hedge.ReplicaView(
                ReplicaId(r.id), r.zone, r.market,
                _status(r, view),
                launched_at=r.launched_tick * self.setup.tick_seconds,
            )
            for r in view.replicas
        ]
        plan = hedge.plan_replicas(
            view.target,
            zones=options,
            current=current,
            zone_history=self.zone_history,
            policy=self.policy,
            now=view.now,
            bad_zone_seconds=self.setup.bad_zone_seconds,
        )
        self.last_plan = plan
        return Decision(
            launch=tuple((s.zone, s.market) for s in plan.launch),
            terminate=tuple(int(i) for i in plan.terminate),
        )


def _status(r: SimReplica, view: TickView) -> ReplicaStatus:
    if r.id in view.noticed:
        return ReplicaStatus.DRAINING  # the daemon drains a replica under notice and replaces it
    return ReplicaStatus.READY if r.id in view.ready else ReplicaStatus.STARTING


# -- baselines -----------------------------------------------------------------------------


def _ondemand_zone(zones: Sequence[ZoneKey]) -> ZoneKey:
    return zones[0]  # on-demand capacity never runs out here; the zone is a label


def _set_ondemand(view: TickView, want: int, zones: Sequence[ZoneKey]) -> Decision:
    """Hold exactly ``want`` on-demand replicas: launch the missing, retire the newest."""
    od = sorted(
        (r for r in view.replicas if r.market is Market.ON_DEMAND),
        key=lambda r: (r.launched_tick, r.id),
    )
    if len(od) < want:
        return Decision(launch=((_ondemand_zone(zones), Market.ON_DEMAND),) * (want - len(od)))
    return Decision(terminate=tuple(r.id for r in od[want:]))


def _merge(*decisions: Decision) -> Decision:
    return Decision(
        launch=tuple(x for d in decisions for x in d.launch),
        terminate=tuple(x for d in decisions for x in d.terminate),
    )


class SpotHedgePolicy:
    """The artifact's SpotHedge placer with its SpotFailoverNoSafety fallback (module
    docstring). Tie-breaking is random, from the run's seeded generator."""

    def __init__(self, zones: Sequence[ZoneKey], setup: ServeSetup, rng: random.Random) -> None:
        self.zones = list(zones)
        self.setup = setup
        self.rng = rng
        self.good: list[int] = list(range(len(zones)))  # order matters to rng.choice
        self.bad: list[int] = []
        self.asked: list[int] | None = None  # per zone, what the last tick asked for

    def _mark(self, held: list[int]) -> None:
        if self.asked is None:
            return
        for z in range(len(self.zones)):
            if self.asked[z] > held[z]:
                if z in self.good:
                    self.good.remove(z)
                    self.bad.append(z)
            elif self.asked[z] > 0 and self.asked[z] == held[z] and z in self.bad:
                self.bad.remove(z)
                self.good.append(z)

    def decide(self, view: TickView) -> Decision:
        target = view.target
        provision = target + self.setup.overprovision
        spot = [r for r in view.replicas if r.market is Market.SPOT]
        ready_spot = sum(1 for r in spot if r.id in view.ready)
        ondemand = min(target, provision - ready_spot) if provision > ready_spot else 0

        index = {z: i for i, z in enumerate(self.zones)}
        held = [0] * len(self.zones)
        for r in spot:
            held[index[r.zone]] += 1
        self._mark(held)
        terminate: tuple[int, ...] = ()
        if provision >= len(spot):
            plan, extra = list(held), provision - len(spot)
        else:  # fewer wanted than held: start over (the artifact's rule)
            plan, extra = [0] * len(self.zones), provision
            terminate = tuple(r.id for r in spot)
        if len(self.good) <= min(1, len(self.zones) - 3):
            self.good, self.bad = list(range(len(self.zones))), []
        launch: list[tuple[ZoneKey, Market]] = []
        for _ in range(extra):
            empty = [z for z in self.good if plan[z] == 0]
            z = self.rng.choice(empty or self.good)
            plan[z] += 1
            launch.append((self.zones[z], Market.SPOT))
        self.asked = plan
        return _merge(Decision(tuple(launch), terminate), _set_ondemand(view, ondemand, self.zones))


class RoundRobinPolicy:
    """``target`` spot replicas, each new one to the next zone in turn; no fallback."""

    def __init__(self, zones: Sequence[ZoneKey], setup: ServeSetup, rng: random.Random) -> None:
        del rng
        self.zones = list(zones)
        self.next = 0

    def decide(self, view: TickView) -> Decision:
        spot = [r for r in view.replicas if r.market is Market.SPOT]
        launch = []
        for _ in range(view.target - len(spot)):
            launch.append((self.zones[self.next], Market.SPOT))
            self.next = (self.next + 1) % len(self.zones)
        return Decision(launch=tuple(launch))


class EvenSpreadPolicy:
    """``target`` spot replicas, each new one to the zone holding fewest (first in order on
    a tie); no fallback."""

    def __init__(self, zones: Sequence[ZoneKey], setup: ServeSetup, rng: random.Random) -> None:
        del rng
        self.zones = list(zones)

    def decide(self, view: TickView) -> Decision:
        held = Counter(r.zone for r in view.replicas if r.market is Market.SPOT)
        launch = []
        for _ in range(view.target - sum(held.values())):
            zone = min(self.zones, key=lambda z: (held[z], self.zones.index(z)))
            held[zone] += 1
            launch.append((zone, Market.SPOT))
        return Decision(launch=tuple(launch))


class OnDemandPolicy:
    """``target`` on-demand replicas, nothing else."""

    def __init__(self, zones: Sequence[ZoneKey], setup: ServeSetup, rng: random.Random) -> None:
        del rng
        self.zones = list(zones)

    def decide(self, view: TickView) -> Decision:
        return _set_ondemand(view, view.target, self.zones)


POLICIES: dict[str, PolicyFactory] = {
    "spotd": SpotdPolicy,
    "spothedge": SpotHedgePolicy,
    "round-robin": RoundRobinPolicy,
    "even-spread": EvenSpreadPolicy,
    "on-demand": OnDemandPolicy,
}
POLICY_NAMES: tuple[str, ...] = (*POLICIES, "omniscient")
