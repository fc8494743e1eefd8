"""The baselines of "Can't Be Late" (Wu et al., NSDI'24), as its artifact defines them.

Both are tick rules over what that simulator shows a policy: the market it is on (``None``:
idle), whether spot is available now (``has_spot``), the progress made ``cp`` (seconds of
work), the work ``C0`` the job needs, the deadline ``R0`` and the changeover delay ``d`` (the
restart overhead), all counted from submission. They return the market for the next tick
(``None``: stay idle). ``spotctl simulate jobs`` runs them through the same trace, prices,
checkpoints and restart overheads as spotd's strategies; only the market choice differs.

``greedy`` (the artifact's ``strawman``)
    Spot whenever it is available, idle otherwise. When the remaining time, whole ticks only,
    no longer exceeds the remaining work plus ``2d`` while idle or on on-demand, on-demand;
    once it no longer exceeds the work plus ``d``, on-demand, except that a spot instance
    already past its restart keeps running until it is preempted.

``uniform_progress`` (the paper's rules, with ``ep(t) = t * C0 / R0``)
    1. Thrifty: nothing left to do -> idle.
    2. Safety net: ``ceil((C0 - cp + 2d) / gap) >= floor((R0 - t) / gap)`` -> on-demand.
    3. Hysteresis: on on-demand, stay there until ``cp >= ep(t + 2d)``.
    4. Taking risks / exploitation: spot whenever it is available (even behind the line);
       a spot instance is kept until it is preempted.
    5. Uniform progress: no spot and ``cp < ep(t)`` -> on-demand; otherwise wait idle.

The artifact's ``has_spot`` is exact knowledge of one zone's availability; over a folder of
zones it is "some zone has capacity now", and the policy is placed in the cheapest zone that
has — an oracle no live system has (spotd learns availability by launching).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from spotd.types import Market

__all__ = ["PAPER_POLICIES", "TickView", "greedy", "uniform_progress"]


@dataclass(frozen=True, slots=True)
class TickView:
    """What the artifact's strategies see at the start of a tick."""

    t: float  # seconds since submission
    gap: float  # tick length
    market: Market | None  # what the job runs on now (None: idle)
    overhead_left: float  # restart overhead the current instance still has to pay
    has_spot: bool
    progress: float  # cp: seconds of work done
    work: float  # C0
    deadline: float  # R0
    restart: float  # d


def greedy(v: TickView) -> Market | None:
    remaining = v.work - v.progress
    if remaining <= 1e-3:
        return None
    time_left = math.floor((v.deadline - v.t) / v.gap) * v.gap
    choice = Market.SPOT if v.has_spot else None
    need_1d = math.ceil((remaining + v.restart) / v.gap) * v.gap
    need_2d = math.ceil((remaining + 2 * v.restart) / v.gap) * v.gap
    if need_2d >= time_left and v.market is not Market.SPOT:
        choice = Market.ON_DEMAND
    if need_1d >= time_left:
        keep = v.market is Market.SPOT and v.overhead_left < 1e-3
        choice = Market.SPOT if keep else Market.ON_DEMAND
        if v.restart == 0 and v.has_spot:
            choice = Market.SPOT
    return choice


def uniform_progress(v: TickView) -> Market | None:
    remaining = v.work - v.progress
    if remaining <= 1e-3:
        return None

    def ep(at: float) -> float:
        return at * v.work / v.deadline

    left_ticks = math.floor((v.deadline - v.t) / v.gap)
    need_ticks = math.ceil((remaining + 2 * v.restart) / v.gap)
    if need_ticks >= left_ticks:
        return Market.ON_DEMAND
    if v.market is Market.ON_DEMAND and ep(v.t + 2 * v.restart) > v.progress:
        return Market.ON_DEMAND
    if v.has_spot:
        return Market.SPOT
    if ep(v.t) > v.progress:
        return Market.ON_DEMAND
    return None


PAPER_POLICIES: Mapping[str, Callable[[TickView], Market | None]] = MappingProxyType(
    {"greedy": greedy, "uniform-progress": uniform_progress}
)
