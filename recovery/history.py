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
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from spotd.types import ZoneEventKind, ZoneKey

__all__ = [
    "BLOCKING_KINDS",
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
    memory_seconds: float = 6 * 3600.0,
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
