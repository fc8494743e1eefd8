"""Which replicas to launch and which to retire: the spot/on-demand mix and the zone spread.

``plan_replicas`` turns the autoscaler's target into concrete launches (zone, market) and
terminations, following SpotHedge (EuroSys'25, shipped in SkyServe as the
``dynamic_fallback`` spot placer and ``FallbackRequestRateAutoscaler``):

- **Spread.** Spot replicas go round robin over the cheapest *good* zones: each launch goes
  to the good zone holding the fewest live spot replicas, the cheaper zone on a tie. That
  keeps at most ceil(n / good zones) in any one zone, so one zone's preemption wave takes a
  bounded share of the service.
- **Spread for a cushion.** With ``k`` spot replicas above what the target needs (the
  overprovision, while turbulent), a zone that holds at most ``k`` can be lost whole without
  going below the target; an even spread can leave no such zone (4 = 2 + 2 over two zones:
  either zone's loss takes the service down). So every good zone but one, the *anchor* (the
  cheapest good zone), is filled up to ``k`` first, and the anchor takes the rest: 4 over two
  zones is 3 + 1, over three 2 + 1 + 1, over four 1 + 1 + 1 + 1 (as even). Replaying the
  traces of docs/simulate.md (losses there often take a whole zone), this made spotd as
  available as SpotHedge on 9 of 11 traces instead of 6 (10 instead of 5 on windows not
  looked at while choosing it), at the same or lower cost.
- **Bad zones.** A zone whose latest spot event is a preemption or a failed launch, less than
  ``bad_zone_seconds`` ago, is bad: no spot launches go there. A replica that becomes READY
  there (a LAUNCHED event) makes it good again. When no zone would remain good, every zone
  is reset to good (as SpotHedge's own artifact does; its paper says "fewer than two", but
  resetting while one good zone is left sends launches into zones that just failed —
  replaying the SpotHedge traces through ``spotctl simulate`` showed thousands of failed
  launches a day and more on-demand fallback, at lower availability). The expiry is ours;
  SpotHedge keeps a zone bad until the reset.
- **Mix.** As in SkyServe, ``base_ondemand_fallback_replicas`` on-demand replicas count inside
  the target: spot wanted = max(0, target − base) + ``num_overprovision`` (0 while calm). With
  ``dynamic_ondemand_fallback``, one more on-demand replica runs for every spot replica
  wanted that is not READY (target − base + the turbulent cushion − ready spot), never more
  on-demand than the target; READY replicas of an older version that an update has not
  retired yet count as READY there. A target of 0 means nothing at all: overprovision does
  not keep a scaled-to-zero service awake.
- **Calm and turbulent.** Overprovisioned spot replicas and an on-demand fallback for them
  pay off only while preemptions happen. The service is *calm* when no spot preemption was
  recorded in ``calm_seconds`` (2 h) and a READY spot replica has run that long (so a fresh
  service, which knows nothing yet, is not calm): then no replica is overprovisioned. Otherwise
  it is *turbulent*: ``num_overprovision`` extra spot replicas, and the dynamic fallback
  covers them too (SpotHedge's ``target + overprovision − READY spot``, at most the target).
  Replaying the traces of docs/simulate.md, this cut the cost by 0.03–0.10 of on-demand on
  every trace at the same or better availability.
- **Shaky zones.** A preemption is often the first of several in a zone (capacity is
  reclaimed in waves). For ``shaky_zone_seconds`` after a spot preemption in a zone (or a
  notice, which the executor records as one), the dynamic fallback also covers the READY spot
  replicas there: on-demand runs for the largest such group, as if that zone were already
  lost, so the next wave does not take the service below its target while replacements
  start. Replaying the SpotHedge traces, 10 minutes lifted AWS1 from 0.9906 to 0.9946
  availability for 0.014 more cost (docs/simulate.md).
- **Notices.** A replica under a preemption notice (``notice_deadline``) is leaving: it is
  not counted, so its replacement (and the fallback for it) is launched in the step that reads
  the notice, but it is not retired yet: it keeps serving until the others READY make the
  target again, or until ``NOTICE_HANDOFF_SECONDS`` before its deadline, and then it is in
  ``terminate`` (the executor drains it). One under notice that is not READY goes at once.
  With EC2's 2-minute notice and a 2-minute cold start, the replacement is often READY before
  the old replica stops; draining at the notice instead opened a gap of the notice's length.
  Replaying the traces with EC2-like notices (docs/simulate.md) this lifted availability from
  0.978-0.996 to 0.993-0.998.
- **Make before break.** On-demand replicas above that number are retired, but a READY one
  only while READY capacity stays at or above the target: the fallback leaves once spot
  replicas are READY again, not when they are merely launched.
- **Victims.** Among the replicas of one market to retire: NOT_READY first (it was ready
  and broke: least likely to serve soon), then PROVISIONING (least sunk cost), STARTING,
  READY last; then those in bad zones, then those in the most crowded zone, then the newest.

DRAINING and SHUTTING_DOWN replicas are already leaving: they are neither counted nor
retired again. Terminal ones (PREEMPTED, FAILED_*) are history, told through
``zone_history``. Pure: no I/O, no clock, no randomness; ``now`` is passed in.

Scenarios (each is a row in ``tests/serve/test_hedge.py``), zones A < B < C by spot price:

- 3 zones, target 3, overprovision 1, nothing running → 4 spot launched, A×2, B, C.
- C bad, target 3, overprovision 1 → 4 spot launched, A×3, B (B can be lost whole).
- A2 B1 C1 running, A preempted both → A bad; the 2 replacements go to B and C.
- A and B preempted, 3 zones → only C good: both replacements go to C.
- A, B and C preempted → no zone good: reset, every zone good again.
- A failed a spot launch 10 min ago → A bad; 2 h ago (past bad_zone_seconds) → good;
  preempted, then a replica READY there → good.
- base 1, target 3 → 2 spot + 1 on-demand, always.
- dynamic fallback, target 3: 2 of 3 spot preempted → 2 spot and 2 on-demand launched; the
  new spot STARTING → on-demand kept; spot READY again → the 2 on-demand terminated.
- dynamic fallback, target 3, overprovision 1, A2 B1 C1 READY, A preempted 5 min ago → 2
  on-demand (A's 2 READY as if lost, plus the turbulent cushion); 15 min ago → none.
- target 2, overprovision 1, nothing preempted for 2 h and READY that long → calm: the
  overprovisioned spot replica retired; A preempted 30 min ago → kept, and covered.
- target 3 → 1 with 3 spot (one STARTING) → the STARTING one and the newest READY go.
- no zone sells spot → no spot launched; with dynamic fallback on-demand covers the target.
- A1 B1 READY, C1 READY under notice → one spot launched in A, C's replica kept; the new one
  READY → C's drained; 15 s before C's deadline → drained whatever is READY.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from spotd.serve.autoscaler import AutoscalePolicy
from spotd.serve.replica_state import ReplicaId, ReplicaStatus
from spotd.types import Market, ZoneEventKind, ZoneKey

DEFAULT_BAD_ZONE_SECONDS = 3600.0  # a spot crunch usually outlasts minutes; retry after an hour
DEFAULT_SHAKY_ZONE_SECONDS = 600.0  # after a preemption, expect more in that zone for 10 min
DEFAULT_CALM_SECONDS = 7200.0  # no preemption for 2 h while running: calm, no overprovision
# a replica under notice stops taking requests this long before its deadline: the LB moves its
# streams 10 s before it (``lb/llmstream.py``), plus a pass of the control loop
NOTICE_HANDOFF_SECONDS = 15.0


# the zone events the planner reads: a loss makes a zone bad, a launch that came up (a replica
# READY there) makes it good again; RAN (a survival time) says neither
ZONE_LOSSES: frozenset[ZoneEventKind] = frozenset(
    {ZoneEventKind.PREEMPTED, ZoneEventKind.LAUNCH_FAILED}
)
PLANNER_KINDS: frozenset[ZoneEventKind] = ZONE_LOSSES | {ZoneEventKind.LAUNCHED}


@dataclass(frozen=True, slots=True)
class ZoneEvent:
    """One thing that happened in a zone; the executor records these as replicas change."""

    zone: ZoneKey
    kind: ZoneEventKind
    at: float
    market: Market = Market.SPOT


@dataclass(frozen=True, slots=True)
class ZoneOption:
    """A zone the service's resources fit in, with prices for one replica (USD per hour)."""

    zone: ZoneKey
    spot_price: float | None  # None: the zone sells no spot capacity of this shape
    ondemand_price: float
    spot_available: bool = True  # False: the provider says there is no spot capacity now
    preemption_risk: float = 0.0  # orders zones of equal spot price (lower first)


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What the planner needs to know about one replica."""

    id: ReplicaId
    zone: ZoneKey
    market: Market
    status: ReplicaStatus
    launched_at: float = 0.0
    notice_deadline: float | None = None  # under a preemption notice: reclaimed at this time


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    zone: ZoneKey
    market: Market


@dataclass(frozen=True, slots=True)
class ReplicaPlan:
    """Launches and terminations to apply now; empty when the service is where it should be.

    A terminated READY replica should be drained first (the executor's job).
    """

    launch: tuple[LaunchSpec, ...]
    terminate: tuple[ReplicaId, ...]
    reason: str
    bad_zones: frozenset[ZoneKey] = frozenset()  # spot zones avoided by this plan


def bad_zones(
    zone_history: Iterable[ZoneEvent],
    *,
    now: float,
    market: Market = Market.SPOT,
    bad_zone_seconds: float = DEFAULT_BAD_ZONE_SECONDS,
) -> frozenset[ZoneKey]:
    """Zones whose latest ``market`` event up to ``now`` is a loss less than the TTL ago.

    A LAUNCHED event is good news and clears the zone; events after ``now`` and kinds the
    planner does not read (RAN) are ignored.
    """
    latest: dict[ZoneKey, ZoneEvent] = {}
    for event in sorted(zone_history, key=lambda e: e.at):
        if event.market is market and event.at <= now and event.kind in PLANNER_KINDS:
            latest[event.zone] = event
    return frozenset(
        zone
        for zone, event in latest.items()
        if event.kind in ZONE_LOSSES and now - event.at < bad_zone_seconds
    )


def plan_replicas(
    target: int,
    *,
    zones: Sequence[ZoneOption],
    current: Sequence[ReplicaView],
    zone_history: Sequence[ZoneEvent],
    policy: AutoscalePolicy,
    now: float,
    use_spot: bool = True,
    bad_zone_seconds: float = DEFAULT_BAD_ZONE_SECONDS,
    shaky_zone_seconds: float = DEFAULT_SHAKY_ZONE_SECONDS,
    calm_seconds: float = DEFAULT_CALM_SECONDS,
    ready_elsewhere: int = 0,
) -> ReplicaPlan:
    """Plan the launches and terminations that move ``current`` toward ``target`` replicas.

    ``ready_elsewhere``: READY replicas outside ``current`` that serve the same endpoint (an
    older version's, while an update replaces them as the new ones become READY): the dynamic
    fallback does not cover new spot replicas on their way while as many of these serve, so
    an update does not start an on-demand replica for every new spot replica still starting;
    with no spot on its way (spot out) the fallback carries the update.

    ``use_spot=False`` (a service without ``use_spot``) runs everything on-demand;
    ``shaky_zone_seconds=0`` turns the shaky-zone cover off, ``calm_seconds=0`` the calm
    mode (overprovision always, fallback for READY spot below the target only).
    """
    if target < 0:
        raise ValueError("target must be >= 0")
    # a replica under notice is leaving: it is not capacity, but it serves until released below
    noticed = [r for r in current if r.status.is_alive and r.notice_deadline is not None]
    alive = [r for r in current if r.status.is_alive and r.notice_deadline is None]
    spot = [r for r in alive if r.market is Market.SPOT]
    ondemand = [r for r in alive if r.market is Market.ON_DEMAND]
    notes: list[str] = []

    # spot zones: eligible ones ranked by price, minus the bad ones (or all of them on a reset)
    eligible = sorted(
        (z for z in zones if z.spot_price is not None and z.spot_available),
        key=lambda z: (z.spot_price, z.preemption_risk, str(z.zone)),
    )
    ranked = [z.zone for z in eligible]
    bad: frozenset[ZoneKey] = frozenset()
    if use_spot:
        bad = bad_zones(zone_history, now=now, bad_zone_seconds=bad_zone_seconds) & set(ranked)
    good = [z for z in ranked if z not in bad]
    if bad and not good:
        notes.append(f"reset bad zones {_names(bad)}: no good zone left")
        bad, good = frozenset(), ranked
    elif bad:
        notes.append(f"avoiding bad zones {_names(bad)}")

    # how many of each market
    calm = _calm(spot, zone_history, now=now, seconds=calm_seconds)
    cushion = 0  # READY spot the fallback keeps above the target (the overprovision, if turbulent)
    if target == 0:
        spot_wanted = 0
        spot_needed = 0  # spot replicas the target itself needs (no overprovision)
    elif use_spot:
        spot_needed = max(0, target - policy.base_ondemand_fallback_replicas)
        if calm:
            spot_wanted = spot_needed
            if policy.num_overprovision:
                notes.append("calm: no preemption seen lately, no overprovision")
        else:
            spot_wanted = spot_needed + policy.num_overprovision
            cushion = policy.num_overprovision if calm_seconds > 0 else 0
    else:
        spot_needed = 0
        spot_wanted = 0

    launch: list[LaunchSpec] = []
    terminate: list[ReplicaView] = []

    # spot: launch into good zones, or retire the surplus
    if len(spot) < spot_wanted:
        missing = spot_wanted - len(spot)
        if good:
            held = Counter(r.zone for r in spot)
            cushion_k = spot_wanted - spot_needed
            placed = (
                _spread_with_cushion(missing, good, held, cushion_k)
                if cushion_k > 0
                else _spread(missing, good, held)
            )
            launch += [LaunchSpec(z, Market.SPOT) for z in placed]
            notes.append(f"spot {len(spot)}/{spot_wanted}: launch {missing}")
        else:
            notes.append(f"spot {len(spot)}/{spot_wanted}: no zone has spot capacity")
    elif len(spot) > spot_wanted:
        surplus = _victims(spot, len(spot) - spot_wanted, bad)
        terminate += surplus
        notes.append(f"spot {len(spot)}/{spot_wanted}: retire {len(surplus)}")

    retired = {r.id for r in terminate}
    ready_spot = sum(1 for r in spot if r.status is ReplicaStatus.READY and r.id not in retired)

    # on-demand: the base, plus the dynamic fallback for spot that is not READY
    if target == 0:
        ondemand_wanted = 0
    elif use_spot:
        ondemand_wanted = policy.base_ondemand_fallback_replicas
        if policy.dynamic_ondemand_fallback:
            shaky = _shaky_exposure(
                [r for r in spot if r.status is ReplicaStatus.READY and r.id not in retired],
                zone_history,
                now=now,
                seconds=shaky_zone_seconds,
            )
            # credit the older version's READY replicas only against new spot replicas on
            # their way (starting, or launched now): with spot out, the fallback carries the
            # update, as it would carry the service
            coming = sum(
                1 for r in spot if r.id not in retired and r.status is not ReplicaStatus.READY
            ) + sum(1 for s in launch if s.market is Market.SPOT)
            serving = ready_spot + min(ready_elsewhere, coming)
            gap = max(0, spot_needed + cushion - serving)
            cover = max(0, spot_needed + cushion - (serving - shaky)) - gap
            ondemand_wanted += gap + cover
            if gap:
                notes.append(f"dynamic fallback for {gap} spot not ready")
            if cover:
                notes.append(f"covering {cover} READY spot in a recently preempted zone")
        ondemand_wanted = min(ondemand_wanted, target)
    else:
        ondemand_wanted = target + policy.num_overprovision

    if len(ondemand) < ondemand_wanted:
        missing = ondemand_wanted - len(ondemand)
        if any(math.isfinite(z.ondemand_price) for z in zones):
            launch += [
                LaunchSpec(z, Market.ON_DEMAND)
                for z in _ondemand_zones(
                    missing, zones, ondemand, zone_history, now, bad_zone_seconds
                )
            ]
            notes.append(f"on-demand {len(ondemand)}/{ondemand_wanted}: launch {missing}")
        else:
            notes.append(f"on-demand {len(ondemand)}/{ondemand_wanted}: no zone to launch in")
    elif len(ondemand) > ondemand_wanted:
        ready_ondemand = sum(1 for r in ondemand if r.status is ReplicaStatus.READY)
        # make before break: a READY on-demand replica goes only if READY capacity stays >= target
        spare_ready = max(0, ready_spot + ready_ondemand - target)
        chosen: list[ReplicaView] = []
        for r in _victims(ondemand, len(ondemand), frozenset()):
            if len(chosen) == len(ondemand) - ondemand_wanted:
                break
            if r.status is ReplicaStatus.READY:
                if spare_ready == 0:
                    continue
                spare_ready -= 1
            chosen.append(r)
        terminate += chosen
        kept = len(ondemand) - ondemand_wanted - len(chosen)
        notes.append(
            f"on-demand {len(ondemand)}/{ondemand_wanted}: retire {len(chosen)}"
            + (f", keep {kept} READY until spot is READY" if kept else "")
        )

    terminate += _release_noticed(noticed, alive, terminate, target=target, now=now, notes=notes)
    if not launch and not terminate:
        notes.insert(0, f"steady at target {target}")
    return ReplicaPlan(
        launch=tuple(launch),
        terminate=tuple(r.id for r in terminate),
        reason="; ".join(notes),
        bad_zones=frozenset(bad),
    )


def _release_noticed(
    noticed: Sequence[ReplicaView],
    alive: Sequence[ReplicaView],
    retired: Sequence[ReplicaView],
    *,
    target: int,
    now: float,
    notes: list[str],
) -> list[ReplicaView]:
    """The replicas under notice to drain now: all of them once the others READY make the
    target (the replacement is READY), each one whose deadline is near, and those that never
    served (nothing to keep)."""
    gone = {r.id for r in retired}
    whole = sum(1 for r in alive if r.status is ReplicaStatus.READY and r.id not in gone) >= target
    release = [
        r
        for r in noticed
        if whole
        or r.status is not ReplicaStatus.READY
        or (r.notice_deadline is not None and now >= r.notice_deadline - NOTICE_HANDOFF_SECONDS)
    ]
    kept = len(noticed) - len(release)
    if release:
        notes.append(f"drain {len(release)} under notice")
    if kept:
        notes.append(f"{kept} under notice serving until the replacement is READY")
    return release


def _calm(
    spot: Sequence[ReplicaView],
    zone_history: Iterable[ZoneEvent],
    *,
    now: float,
    seconds: float,
) -> bool:
    """Calm: for ``seconds``, no spot preemption recorded and a READY spot replica running."""
    if seconds <= 0:
        return False
    oldest = min(
        (r.launched_at for r in spot if r.status is ReplicaStatus.READY), default=float("inf")
    )
    if now - oldest < seconds:
        return False
    return not any(
        e.market is Market.SPOT and e.kind is ZoneEventKind.PREEMPTED and now - seconds <= e.at
        for e in zone_history
        if e.at <= now
    )


def _shaky_exposure(
    ready_spot: Sequence[ReplicaView],
    zone_history: Iterable[ZoneEvent],
    *,
    now: float,
    seconds: float,
) -> int:
    """READY spot replicas in the most loaded zone preempted less than ``seconds`` ago."""
    if seconds <= 0:
        return 0
    shaky = {
        e.zone
        for e in zone_history
        if e.market is Market.SPOT
        and e.kind is ZoneEventKind.PREEMPTED
        and now - seconds <= e.at <= now
    }
    counts = Counter(r.zone for r in ready_spot if r.zone in shaky)
    return max(counts.values(), default=0)


def _spread_with_cushion(
    n: int, good: Sequence[ZoneKey], counts: Counter[ZoneKey], cushion: int
) -> list[ZoneKey]:
    """Like ``_spread``, but every good zone other than the cheapest (the anchor) is filled
    only up to ``cushion`` replicas, the anchor takes the rest (module docstring). Returned in
    price order, as ``_spread`` returns them."""
    rank = {z: i for i, z in enumerate(good)}
    anchor = good[0]
    counts = Counter(counts)
    placed = []
    for _ in range(n):
        others = [z for z in good[1:] if counts[z] < cushion]
        zone = min(others, key=lambda z: (counts[z], rank[z])) if others else anchor
        counts[zone] += 1
        placed.append(zone)
    return sorted(placed, key=lambda z: rank[z])


def _spread(n: int, good: Sequence[ZoneKey], counts: Counter[ZoneKey]) -> list[ZoneKey]:
    """Round robin: each launch to the good zone with the fewest replicas, cheapest first.

    ``good`` is in price order. Because every launch fills the emptiest zone, no zone exceeds
    ceil(total / len(good)) unless it already did.
    """
    rank = {z: i for i, z in enumerate(good)}
    counts = Counter(counts)
    placed = []
    for _ in range(n):
        zone = min(good, key=lambda z: (counts[z], rank[z]))
        counts[zone] += 1
        placed.append(zone)
    return placed


def _ondemand_zones(
    n: int,
    zones: Sequence[ZoneOption],
    ondemand: Sequence[ReplicaView],
    zone_history: Sequence[ZoneEvent],
    now: float,
    bad_zone_seconds: float,
) -> list[ZoneKey]:
    """Cheapest on-demand zones, spread, avoiding recent on-demand launch failures if it can;
    never a zone that sells no on-demand capacity of this shape (an infinite price)."""
    sells = [z for z in zones if math.isfinite(z.ondemand_price)]
    ranked = [z.zone for z in sorted(sells, key=lambda z: (z.ondemand_price, str(z.zone)))]
    failed = bad_zones(
        zone_history, now=now, market=Market.ON_DEMAND, bad_zone_seconds=bad_zone_seconds
    )
    usable = [z for z in ranked if z not in failed] or ranked
    return _spread(n, usable, Counter(r.zone for r in ondemand))


_VICTIM_ORDER = MappingProxyType(
    {
        ReplicaStatus.NOT_READY: 0,
        ReplicaStatus.PROVISIONING: 1,
        ReplicaStatus.STARTING: 2,
        ReplicaStatus.READY: 3,
    }
)


def _victims(pool: Sequence[ReplicaView], n: int, bad: frozenset[ZoneKey]) -> list[ReplicaView]:
    """The ``n`` replicas of ``pool`` to retire first, in order (see the module docstring)."""
    left = list(pool)
    counts = Counter(r.zone for r in left)
    chosen: list[ReplicaView] = []
    for _ in range(min(n, len(left))):
        victim = min(
            left,
            key=lambda r: (
                _VICTIM_ORDER[r.status],
                r.zone not in bad,
                -counts[r.zone],
                -r.launched_at,
                -r.id,
            ),
        )
        left = [r for r in left if r is not victim]
        counts[victim.zone] -= 1
        chosen.append(victim)
    return chosen


def _names(zones: Iterable[ZoneKey]) -> str:
    return ", ".join(sorted(str(z) for z in zones))
