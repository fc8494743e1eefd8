"""The vocabulary of the serving simulator: its setup, what a policy sees and answers, results.

``spotd.sim.serve`` runs the ticks (its docstring describes the model), the policies live in
``spotd.sim.serve_policies``; both read and write only these frozen records, so a policy can
be tested on a hand-made :class:`TickView` without running a window.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from spotd.serve import hedge
from spotd.types import Market, ZoneKey

__all__ = [
    "Decision",
    "PolicyFactory",
    "PolicyResult",
    "ServePolicy",
    "ServeSetup",
    "SimEvent",
    "SimEventKind",
    "SimReplica",
    "TickView",
    "WindowResult",
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
