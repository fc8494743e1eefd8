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
    "EC2_NOTICE",
    "GCP_NOTICE",
    "Decision",
    "NoticeModel",
    "PolicyFactory",
    "PolicyResult",
    "ServePolicy",
    "ServeSetup",
    "SimEvent",
    "SimEventKind",
    "SimReplica",
    "TickView",
    "WindowResult",
    "default_notice",
]


@dataclass(frozen=True, slots=True)
class NoticeModel:
    """Advance warnings of preemptions, as the ``+notice`` policies get them.

    Each spot replica draws, when it is launched, whether its preemption will be announced
    (probability ``1 - missed``) and how long before (``lead_seconds``, uniform between the
    two bounds). The draws come from a generator seeded by the run's seed and the window, so a
    run is reproducible. docs/simulate.md gives the sources of the defaults.
    """

    lead_min_seconds: float
    lead_max_seconds: float
    missed: float  # the fraction of preemptions that come with no notice at all

    def __post_init__(self) -> None:
        if not 0 <= self.lead_min_seconds <= self.lead_max_seconds:
            raise ValueError("notice lead times must satisfy 0 <= min <= max")
        if not 0 <= self.missed <= 1:
            raise ValueError("the missed fraction of notices must be in [0, 1]")

    def __str__(self) -> str:
        return (
            f"lead {self.lead_min_seconds:g}-{self.lead_max_seconds:g} s, "
            f"{self.missed:.0%} never delivered"
        )


# EC2 posts its interruption notice two minutes ahead, "on a best effort basis"; published
# logs show it read 108 s ahead by a 5 s poller, and spotd's agent polls every 0.2 s: a notice
# is taken to be up to 30 s late (docs/simulate.md, "The notice model")
EC2_NOTICE = NoticeModel(lead_min_seconds=90.0, lead_max_seconds=120.0, missed=0.1)
# GCE: 30 s between the preemption notice (ACPI G2 soft off) and the stop, also best effort
GCP_NOTICE = NoticeModel(lead_min_seconds=15.0, lead_max_seconds=30.0, missed=0.1)


def default_notice(provider: str) -> NoticeModel:
    """The notice model of a trace's cloud: GCP's for ``gcp`` zones, EC2's otherwise."""
    return GCP_NOTICE if provider == "gcp" else EC2_NOTICE


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
    base_ondemand: int = 0  # spotd: on-demand replicas always held, inside the target
    bad_zone_seconds: float = hedge.DEFAULT_BAD_ZONE_SECONDS  # spotd: how long a zone stays bad
    shaky_zone_seconds: float = hedge.DEFAULT_SHAKY_ZONE_SECONDS  # spotd: cover after a preemption
    calm_seconds: float = hedge.DEFAULT_CALM_SECONDS  # spotd: no preemption this long: calm
    use_risk: bool = True  # spotd: rank zones by the learned preemption risk
    notice: NoticeModel | None = None  # the +notice policies' model (None: the cloud's default)
    binary_unlimited: bool = True  # a 0/1 trace means "available, unlimited" (the artifact's)

    def __post_init__(self) -> None:
        if self.target < 1 or self.windows < 1 or self.window_ticks < 1:
            raise ValueError("target, windows and window_ticks must be >= 1")
        if not self.tick_seconds > 0 or self.cold_start_seconds < 0:
            raise ValueError("tick_seconds must be > 0 and cold_start_seconds >= 0")
        if not 0 <= self.base_ondemand <= self.target:
            raise ValueError("base_ondemand must be between 0 and the target")
        if self.window_ticks <= self.cold_ticks:
            raise ValueError("a window must be longer than the cold start")

    @property
    def cold_ticks(self) -> int:
        """Ticks from launch to READY (the artifact's ``cold_start_delay``)."""
        return int(self.cold_start_seconds // self.tick_seconds)


class SimEventKind(enum.StrEnum):
    LAUNCHED = "LAUNCHED"  # a launch that the trace allowed
    LAUNCH_FAILED = "LAUNCH_FAILED"  # a spot launch into a zone with no capacity left
    READY = "READY"  # a replica finished its cold start
    PREEMPTED = "PREEMPTED"  # the zone's capacity fell below what we held there
    NOTICE = "NOTICE"  # a spot replica got a preemption notice (it goes at ``deadline``)
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
    ran_seconds: float = 0.0  # PREEMPTED / TERMINATED / NOTICE: how long it was held
    deadline: int = 0  # NOTICE: the tick the zone takes the replica back


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
