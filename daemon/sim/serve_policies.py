"""The placement policies the serving simulator compares (``spotd.sim.serve`` describes each).

``spotd`` drives the daemon's own planner (``spotd.serve.hedge.plan_replicas``); the others
are the baselines of the SpotHedge paper, written as its artifact simulates them. Every policy
is a :class:`~spotd.sim.serve_model.ServePolicy`: a :class:`~spotd.sim.serve_model.TickView`
in, a :class:`~spotd.sim.serve_model.Decision` out, with whatever memory the policy keeps on
itself (one instance per window, so nothing outlives a window).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from spotd.recovery import history as rhist
from spotd.serve import hedge
from spotd.serve.autoscaler import AutoscalePolicy
from spotd.serve.replica_state import ReplicaId, ReplicaStatus
from spotd.sim.serve_model import (
    Decision,
    PolicyFactory,
    ServeSetup,
    SimEvent,
    SimEventKind,
    TickView,
)
from spotd.types import Market, ZoneEventKind, ZoneKey

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "EvenSpreadPolicy",
    "OnDemandPolicy",
    "RoundRobinPolicy",
    "SpotHedgePolicy",
    "SpotdPolicy",
]


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
            base_ondemand_fallback_replicas=setup.base_ondemand,
        )
        self.zone_history: list[hedge.ZoneEvent] = []
        self.risk_history: list[rhist.ZoneEvent] = []
        self.deadlines: dict[int, float] = {}  # replica under notice -> its deadline (seconds)

    def _record(self, events: Sequence[SimEvent]) -> None:
        for e in events:
            if e.market is not Market.SPOT:
                continue
            if e.kind in (SimEventKind.PREEMPTED, SimEventKind.TERMINATED) and (
                self.deadlines.pop(e.replica, None) is not None
            ):
                continue  # recorded when its notice came, as the executor records it
            if e.kind in (SimEventKind.PREEMPTED, SimEventKind.NOTICE):
                # the executor records PREEMPTED when the notice comes (control/draining.py)
                self.zone_history.append(hedge.ZoneEvent(e.zone, ZoneEventKind.PREEMPTED, e.at))
                self.risk_history.append(rhist.ZoneEvent(e.zone, ZoneEventKind.PREEMPTED, e.at))
                self.risk_history.append(
                    rhist.ZoneEvent(e.zone, ZoneEventKind.RAN, e.at, seconds=e.ran_seconds)
                )
            elif e.kind is SimEventKind.LAUNCH_FAILED:
                self.zone_history.append(hedge.ZoneEvent(e.zone, ZoneEventKind.LAUNCH_FAILED, e.at))
            elif e.kind is SimEventKind.READY:
                # a replica READY in the zone: the daemon's prober records LAUNCHED
                self.zone_history.append(hedge.ZoneEvent(e.zone, ZoneEventKind.LAUNCHED, e.at))
            elif e.kind is SimEventKind.TERMINATED:
                self.risk_history.append(
                    rhist.ZoneEvent(e.zone, ZoneEventKind.RAN, e.at, seconds=e.ran_seconds)
                )

    def decide(self, view: TickView) -> Decision:
        self._record(view.events)
        # The daemon reads 24 h of events. plan_replicas only asks "is the latest event of
        # this zone a loss less than bad_zone_seconds ago" and "was a zone preempted less
        # than shaky_zone_seconds (calm_seconds) ago", which older events cannot change, so
        # they are dropped here to keep each call cheap (results are identical: an event
        # older than bad_zone_seconds can only be the latest of a zone that is not bad).
        s = self.setup
        recent = view.now - min(self._MEMORY_SECONDS, s.bad_zone_seconds)
        preempted = view.now - min(
            self._MEMORY_SECONDS, max(s.bad_zone_seconds, s.shaky_zone_seconds, s.calm_seconds)
        )
        if self.zone_history and self.zone_history[0].at < recent:
            self.zone_history = [
                e
                for e in self.zone_history
                if e.at >= recent or (e.kind is ZoneEventKind.PREEMPTED and e.at >= preempted)
            ]
        horizon = view.now - self._MEMORY_SECONDS
        if self.risk_history and self.risk_history[0].at < horizon:
            self.risk_history = [e for e in self.risk_history if e.at >= horizon]
        risk = rhist.preemption_risk(self.risk_history, view.now) if self.setup.use_risk else {}
        options = [
            hedge.ZoneOption(
                z,
                spot_price=1.0,
                ondemand_price=self.setup.ondemand_cost,
                preemption_risk=risk.get(z, 0.0),
            )
            for z in self.zones
        ]
        for e in view.events:
            if e.kind is SimEventKind.NOTICE:
                self.deadlines[e.replica] = e.deadline * self.setup.tick_seconds
        current = [
            hedge.ReplicaView(
                ReplicaId(r.id),
                r.zone,
                r.market,
                ReplicaStatus.READY if r.id in view.ready else ReplicaStatus.STARTING,
                launched_at=r.launched_tick * self.setup.tick_seconds,
                notice_deadline=self.deadlines.get(r.id) if r.id in view.noticed else None,
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
            shaky_zone_seconds=self.setup.shaky_zone_seconds,
            calm_seconds=self.setup.calm_seconds,
        )
        self.last_plan = plan
        # the executor drains what the plan retires (a replica under notice once its replacement
        # is READY) and lets it go once its requests are done: within a tick
        return Decision(
            launch=tuple((s.zone, s.market) for s in plan.launch),
            terminate=tuple(int(i) for i in plan.terminate),
        )


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

    def _turn_bad(self, z: int) -> None:
        if z in self.good:
            self.good.remove(z)
            self.bad.append(z)

    def _mark(self, held: list[int]) -> None:
        if self.asked is None:
            return
        for z in range(len(self.zones)):
            if self.asked[z] > held[z]:
                self._turn_bad(z)
            elif self.asked[z] > 0 and self.asked[z] == held[z] and z in self.bad:
                self.bad.remove(z)
                self.good.append(z)

    def decide(self, view: TickView) -> Decision:
        target = view.target
        provision = target + self.setup.overprovision
        # with notices, as spotd's executor does: a replica under notice drains and goes now,
        # and its replacement is launched in the same step
        spot = [r for r in view.replicas if r.market is Market.SPOT and r.id not in view.noticed]
        ready_spot = sum(1 for r in spot if r.id in view.ready)
        ondemand = min(target, provision - ready_spot) if provision > ready_spot else 0

        index = {z: i for i, z in enumerate(self.zones)}
        held = [0] * len(self.zones)
        for r in spot:
            held[index[r.zone]] += 1
        self._mark(held)  # a zone with a replica under notice fell short: it turns bad now
        terminate: tuple[int, ...] = ()
        if provision >= len(spot):
            plan, extra = list(held), provision - len(spot)
        else:  # fewer wanted than held: start over (the artifact's rule)
            plan, extra = [0] * len(self.zones), provision
            terminate = tuple(r.id for r in spot)
        terminate += _release_noticed(view, ready_spot, terminate)
        # the artifact resets at min(1, zones - 3) good zones; below 3 zones that is never, and
        # its random.choice fails on an empty list: here it resets when no zone is good
        if len(self.good) <= max(0, min(1, len(self.zones) - 3)):
            self.good, self.bad = list(range(len(self.zones))), []
        launch: list[tuple[ZoneKey, Market]] = []
        for _ in range(extra):
            empty = [z for z in self.good if plan[z] == 0]
            z = self.rng.choice(empty or self.good)
            plan[z] += 1
            launch.append((self.zones[z], Market.SPOT))
        self.asked = plan
        return _merge(Decision(tuple(launch), terminate), _set_ondemand(view, ondemand, self.zones))


def _release_noticed(view: TickView, ready_spot: int, retired: Sequence[int]) -> tuple[int, ...]:
    """As spotd's executor does (``hedge.plan_replicas``): a replica under notice serves until
    the others READY make the target; one not READY goes at once."""
    ready_od = sum(1 for r in view.replicas if r.market is Market.ON_DEMAND and r.id in view.ready)
    whole = ready_spot - sum(1 for i in retired if i in view.ready) + ready_od >= view.target
    return tuple(sorted(i for i in view.noticed if whole or i not in view.ready))


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


POLICIES: Mapping[str, PolicyFactory] = MappingProxyType(
    {
        "spotd": SpotdPolicy,
        "spothedge": SpotHedgePolicy,
        "round-robin": RoundRobinPolicy,
        "even-spread": EvenSpreadPolicy,
        "on-demand": OnDemandPolicy,
    }
)
NOTICED: tuple[str, ...] = ("spotd", "spothedge")  # the policies also run with notices
POLICY_NAMES: tuple[str, ...] = (
    "spotd",
    "spothedge",
    *(f"{p}+notice" for p in NOTICED),
    *(p for p in POLICIES if p not in NOTICED),
    "omniscient",
)
