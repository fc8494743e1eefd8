"""What happened in each zone, and what it says about placing the next attempt there.

The controller records one ``ZoneEvent`` per preemption, failed launch (one the provider
refused: a stockout, a quota), successful launch and finished run, in the shared vocabulary
``spotd.types.ZoneEventKind``. Three pure summaries feed the optimizer:

``zone_penalties`` — short memory, "don't go back right now". A zone that was preempted or
    refused a launch (LAUNCH_FAILED) is blocked outright (penalty 1.0) for ``hold_seconds``;
    after that the penalty halves every ``half_life_seconds``. The optimizer divides the
    zone's cost by (1 - penalty), so the zone returns to the ranking gradually: ten minutes
    after the hold it costs twice its price, twenty minutes after 4/3. Several events combine
    as independent chances of trouble: 1 - prod(1 - p_i). A later successful launch
    (LAUNCHED) in the zone lifts its *failed launch* penalties: capacity is back. Preemption
    penalties stay.

``region_penalties`` — the same decay for whole regions after a preemption, capped below 1 so
    it ranks a region down but never excludes it. EAGER_NEXT_REGION uses it: spot capacity is
    usually reclaimed region-wide, so the zone next door is the next to go.

``preemption_risk`` — long memory, "how often is spot taken back here". Per zone, the
    preemption rate with a prior, as a Gamma-Poisson estimate:

        rate = (preemptions + prior_preemptions) / (hours_survived + prior_hours)

    where both counts decay with ``memory_seconds`` so old history fades. The risk factor is the
    rate *above the prior* times the hours a preemption wastes (relaunch plus work since the
    last checkpoint), so it reads as "the fraction of paid time lost to preemptions beyond the
    usual": one fresh preemption with no survival data gives (1+1)/(0+8) - 1/8 = 0.125/h,
    times 0.25 h = 3% dearer. Zones with a good record are not made cheaper than list price.

Each walks every event it is given; ``ZoneDigest`` keeps a sliding window of history as the
few events whose summaries are the same (the latest launch per zone, the blocking events, the
runs folded into one per zone), so placement costs the same at ten jobs or ten thousand.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from spotd.types import ZoneEventKind, ZoneKey

__all__ = [
    "BLOCKING_KINDS",
    "RISK_MEMORY_SECONDS",
    "ZoneDigest",
    "ZoneEvent",
    "ZoneEventRowLike",
    "decay",
    "penalties_by_zone",
    "preemption_risk",
    "region_penalties",
    "zone_penalties",
]


# the kinds that block a zone for a while
BLOCKING_KINDS: frozenset[ZoneEventKind] = frozenset(
    {ZoneEventKind.PREEMPTED, ZoneEventKind.LAUNCH_FAILED}
)
RISK_MEMORY_SECONDS = 6 * 3600.0  # preemption_risk's memory (the digest folds runs with it)


class ZoneEventRowLike(Protocol):
    """The shape of a stored zone event row (the store's ``ZoneEventRow``)."""

    @property
    def provider(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def zone(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def at(self) -> float: ...
    @property
    def detail(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ZoneEvent:
    zone: ZoneKey
    kind: ZoneEventKind
    at: float  # epoch seconds
    seconds: float = 0.0  # RAN: how long the instance survived
    detail: str = ""  # the evidence, for humans

    @classmethod
    def from_row(cls, row: ZoneEventRowLike) -> ZoneEvent:
        """Build from a stored row. A RAN row keeps its seconds in a ``seconds`` attribute if
        the row has one, else as the leading number of ``detail`` (e.g. ``"3600 spot"``)."""
        kind = ZoneEventKind(row.kind)
        seconds = float(getattr(row, "seconds", 0.0) or 0.0)
        if kind is ZoneEventKind.RAN and not seconds:
            head = row.detail.split(maxsplit=1)[0] if row.detail.strip() else ""
            try:
                seconds = max(0.0, float(head.rstrip("s")))
            except ValueError:
                seconds = 0.0
        return cls(
            zone=ZoneKey(row.provider, row.region, row.zone),
            kind=kind,
            at=row.at,
            seconds=seconds,
            detail=row.detail,
        )


def decay(age: float, half_life: float) -> float:
    """Weight of something ``age`` seconds old: 1 now, 1/2 after one half-life. Future
    events (clock skew) count as now."""
    if half_life <= 0:
        return 0.0 if age > 0 else 1.0
    return float(0.5 ** (max(0.0, age) / half_life))


def zone_penalties(
    events: Iterable[ZoneEvent],
    now: float,
    *,
    half_life_seconds: float = 600.0,
    hold_seconds: float = 30.0,
    kinds: Collection[ZoneEventKind] = BLOCKING_KINDS,
    preempted_cap: float = 0.95,
) -> dict[ZoneKey, float]:
    """Per-zone penalty in [0, 1]: 1.0 (blocked) for ``hold_seconds`` after a failed launch,
    then halving every ``half_life_seconds``. A preemption weighs as much but never more than
    ``preempted_cap``: it makes a zone expensive (cost x 1/(1-p)), not impossible — when every
    zone was preempted recently, trying one again (a cheap, classified launch failure at worst)
    beats waiting with capacity perhaps available. Only a launch refusal blocks outright.
    Only events of ``kinds`` count (pass ``{LAUNCH_FAILED}`` to price on-demand capacity,
    which a spot preemption says nothing about). Zones without such events are absent
    (penalty 0)."""
    evs = sorted(events, key=lambda e: e.at)
    last_launch: dict[ZoneKey, float] = {}
    for e in evs:
        if e.kind is ZoneEventKind.LAUNCHED:
            last_launch[e.zone] = e.at
    keep: dict[ZoneKey, float] = {}  # product of (1 - p_i)
    for e in evs:
        if e.kind not in kinds or e.kind not in BLOCKING_KINDS:
            continue
        if e.kind is ZoneEventKind.LAUNCH_FAILED and last_launch.get(e.zone, -math.inf) > e.at:
            continue  # a launch there succeeded since: capacity is back
        age = now - e.at
        p = 1.0 if age < hold_seconds else decay(age - hold_seconds, half_life_seconds)
        keep[e.zone] = keep.get(e.zone, 1.0) * (1.0 - p)
        if e.kind is ZoneEventKind.PREEMPTED:
            keep[e.zone] = max(keep[e.zone], 1.0 - preempted_cap)
    return {z: 1.0 - k for z, k in keep.items() if 1.0 - k > 1e-6}


def region_penalties(
    events: Iterable[ZoneEvent],
    now: float,
    *,
    half_life_seconds: float = 600.0,
    cap: float = 0.9,
) -> dict[tuple[str, str], float]:
    """Per (provider, region) penalty in [0, cap] from preemptions anywhere in the region:
    ``cap`` right after one, halving every ``half_life_seconds``. Capped so a region is ranked
    down (at most 1/(1-cap) times dearer) but never excluded."""
    keep: dict[tuple[str, str], float] = {}
    for e in events:
        if e.kind is not ZoneEventKind.PREEMPTED:
            continue
        key = (e.zone.provider, e.zone.region)
        keep[key] = keep.get(key, 1.0) * (1.0 - decay(now - e.at, half_life_seconds))
    out = {}
    for key, k in keep.items():
        p = min(cap, 1.0 - k)
        if p > 1e-6:
            out[key] = p
    return out


def preemption_risk(
    events: Iterable[ZoneEvent],
    now: float,
    *,
    prior_preemptions: float = 1.0,
    prior_hours: float = 8.0,
    hours_lost_per_preemption: float = 0.25,
    memory_seconds: float = RISK_MEMORY_SECONDS,
) -> dict[ZoneKey, float]:
    """Per-zone spot cost factor >= 0 (see the module docstring); zones with no preemption
    history above the prior are absent (factor 0)."""
    preempted: dict[ZoneKey, float] = defaultdict(float)
    hours: dict[ZoneKey, float] = defaultdict(float)
    for e in events:
        w = decay(now - e.at, memory_seconds)
        if e.kind is ZoneEventKind.PREEMPTED:
            preempted[e.zone] += w
        elif e.kind is ZoneEventKind.RAN:
            hours[e.zone] += w * e.seconds / 3600.0
    prior_rate = prior_preemptions / prior_hours
    out = {}
    for zone, n in preempted.items():
        rate = (n + prior_preemptions) / (hours[zone] + prior_hours)
        factor = max(0.0, rate - prior_rate) * hours_lost_per_preemption
        if factor > 0:
            out[zone] = factor
    return out


def penalties_by_zone(
    zones: Iterable[ZoneKey],
    zone: Mapping[ZoneKey, float],
    region: Mapping[tuple[str, str], float],
) -> dict[ZoneKey, float]:
    """Combine zone and region penalties for every zone in ``zones``: 1 - (1-pz)(1-pr)."""
    out = {}
    for z in zones:
        p = 1.0 - (1.0 - zone.get(z, 0.0)) * (1.0 - region.get((z.provider, z.region), 0.0))
        if p > 0:
            out[z] = p
    return out


# -- the window, summarised as it arrives ----------------------------------------------------

_REFOLD_AFTER = 32.0  # memories between a zone's fold base and a run before it is refolded


def _at_order(entry: tuple[float, int, ZoneEvent]) -> tuple[float, int]:
    return entry[0], entry[1]


def _at(entry: tuple[float, float]) -> float:
    return entry[0]


class ZoneDigest:
    """A sliding window of zone history, held as the few events the summaries above read, so
    a placement costs the same whether the window saw ten launches or a hundred thousand.

    Every launch writes a LAUNCHED event, so a day of history at ten thousand jobs is ten
    thousand rows or more, and each summary walks all it is given, at every placement (at
    3,000 jobs that was a quarter of the daemon's CPU, growing with every job). What the
    summaries need of the window is small; :meth:`add` keeps that much, per kind:

    =============  =========================================================================
    kind           kept
    =============  =========================================================================
    LAUNCHED       the latest per zone: ``zone_penalties`` asks only whether a launch there
                   came after a failure
    LAUNCH_FAILED  those no launch in their zone came after (the others never count again:
                   the launch that lifted one leaves the window after it)
    PREEMPTED      every one (each weighs in all three summaries with its own age)
    RAN            one per zone, folded: at the zone's base time b, ``seconds`` =
                   sum of s_i * 2**((at_i - b) / M), which ``preemption_risk`` (memory M)
                   decays by 2**(-(now - b) / M) back to the sum of s_i * 2**(-(now - at_i)
                   / M) it computes from the runs themselves
    =============  =========================================================================

    :meth:`drop_before` takes out what left the window (a folded run is subtracted again).
    ``zone_penalties``, ``region_penalties`` and ``preemption_risk`` of :meth:`events` equal
    those of every event added and not dropped, to rounding, for ``now`` at or after the
    events (a run stamped after ``now``, which the summaries count as now, counts a little
    less folded). ``order`` (the store's row id) breaks ties of ``at`` as the store orders
    them: a failed launch and a preemption at the same instant combine in that order.
    """

    def __init__(self, *, memory_seconds: float = RISK_MEMORY_SECONDS) -> None:
        if not memory_seconds > 0:
            raise ValueError(f"memory_seconds must be positive, got {memory_seconds}")
        self._memory = memory_seconds
        self._launched: dict[ZoneKey, ZoneEvent] = {}
        self._blocking: dict[ZoneKey, list[tuple[float, int, ZoneEvent]]] = {}
        self._runs: dict[ZoneKey, list[tuple[float, float]]] = {}  # (at, seconds), by at
        self._base: dict[ZoneKey, float] = {}
        self._folded: dict[ZoneKey, float] = {}
        self._next_order = 0
        self._view: list[ZoneEvent] | None = None  # what events() returns, until a change

    def add(self, event: ZoneEvent, order: int | None = None) -> None:
        """Take one event into the window (``order``: its row id; default: as added)."""
        if order is None:
            order = self._next_order
        self._next_order = max(self._next_order, order) + 1
        zone, kind = event.zone, event.kind
        self._view = None
        if kind is ZoneEventKind.LAUNCHED:
            latest = self._launched.get(zone)
            if latest is None or event.at >= latest.at:
                self._launched[zone] = event
            held = self._blocking.get(zone, [])
            stays = [
                b for b in held if b[2].kind is not ZoneEventKind.LAUNCH_FAILED or b[0] >= event.at
            ]
            if len(stays) < len(held):  # failures it lifted
                self._set_blocking(zone, stays)
        elif kind is ZoneEventKind.RAN:
            self._fold(zone, event.at, event.seconds)
        elif kind in BLOCKING_KINDS:
            latest = self._launched.get(zone)
            if kind is ZoneEventKind.LAUNCH_FAILED and latest is not None and latest.at > event.at:
                return  # a launch there succeeded since: it never counts
            bisect.insort(
                self._blocking.setdefault(zone, []), (event.at, order, event), key=_at_order
            )

    def drop_before(self, since: float) -> None:
        """Forget what happened before ``since`` (it left the window)."""
        for zone in [z for z, e in self._launched.items() if e.at < since]:
            del self._launched[zone]
            self._view = None
        for zone, held in list(self._blocking.items()):
            gone = bisect.bisect_left(held, since, key=lambda b: b[0])
            if gone:
                self._set_blocking(zone, held[gone:])
        for zone, runs in list(self._runs.items()):
            gone = bisect.bisect_left(runs, since, key=_at)
            if not gone:
                continue
            self._view = None
            if gone == len(runs):
                del self._runs[zone], self._base[zone], self._folded[zone]
                continue
            base = self._base[zone]
            less = sum(s * self._weight(at, base) for at, s in runs[:gone])
            del runs[:gone]
            self._folded[zone] = max(0.0, self._folded[zone] - less)

    def events(self) -> list[ZoneEvent]:
        """Events whose summaries are the window's, oldest first (kept until the next change:
        do not modify)."""
        if self._view is None:
            blocking = sorted((b for held in self._blocking.values() for b in held), key=_at_order)
            runs = [
                ZoneEvent(
                    zone=zone,
                    kind=ZoneEventKind.RAN,
                    at=self._base[zone],
                    seconds=self._folded[zone],
                    detail=f"{len(self._runs[zone])} runs, folded",
                )
                for zone in self._runs
            ]
            everything = [b[2] for b in blocking] + list(self._launched.values()) + runs
            self._view = sorted(everything, key=lambda e: e.at)  # stable: ties keep order
        return self._view

    def _set_blocking(self, zone: ZoneKey, held: list[tuple[float, int, ZoneEvent]]) -> None:
        self._view = None
        if held:
            self._blocking[zone] = held
        else:
            self._blocking.pop(zone, None)

    def _weight(self, at: float, base: float) -> float:
        return float(2.0 ** ((at - base) / self._memory))

    def _fold(self, zone: ZoneKey, at: float, seconds: float) -> None:
        runs = self._runs.setdefault(zone, [])
        bisect.insort(runs, (at, seconds), key=_at)
        base = self._base.get(zone)
        if base is None or abs(at - base) > _REFOLD_AFTER * self._memory:
            base = self._base[zone] = runs[0][0]
            self._folded[zone] = sum(s * self._weight(a, base) for a, s in runs)
        else:
            self._folded[zone] += seconds * self._weight(at, base)
