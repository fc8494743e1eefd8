"""Replay spot traces through the managed-job recovery strategies, tick by tick.

A job needs ``job_hours`` of work by ``deadline_hours`` after it is submitted. It saves a
checkpoint every ``checkpoint_seconds`` of progress (0: continuously) and pays
``restart_overhead_seconds`` of wall time, billed and without progress, on every (re)launch.
Each zone of the trace folder is one placement in the catalog; at every tick:

1. a spot attempt in a zone whose trace shows fewer than ``num_nodes`` instances is
   *preempted*: the progress since the last checkpoint is lost;
2. a DEADLINE job on spot asks ``should_switch_to_ondemand``; if so the attempt ends
   (MIGRATED) after a final checkpoint;
3. a job without an attempt asks ``spotd.recovery.strategies.next_placement`` — the function
   the daemon's controller calls — with the zone history the controller would have recorded
   (LAUNCHED, LAUNCH_FAILED, PREEMPTED, RAN). A spot launch into a zone the trace shows empty
   *fails* (LAUNCH_FAILED) and the job asks again at the next tick; ``Wait`` is honoured to the
   tick; ``GiveUp`` ends the run;
4. the attempt is billed for the tick and makes progress after its restart overhead.

``JobView.work_done`` is the checkpointed progress (what a relaunch resumes from), so the
slack the DEADLINE rule computes is the slack the job really has. Its ``safety_margin`` is
at least one tick: the simulator looks once per tick, as the controller looks once per
observe interval.

Policies: ``eager-next-region``, ``failover``, ``deadline`` (Uniform Progress) — the
strategies of ``RecoveryStrategy`` —, ``on-demand`` (``next_placement`` with ``use_spot:
false``), and ``omniscient``, a hindsight lower bound: the cheapest ``job_hours`` plus one
restart overhead of ticks before the deadline, each priced at the cheapest spot zone the trace
shows available then (on-demand where none is), as if preemptions cost nothing.

Prices: a trace with ``prices`` is billed at its spot price per tick (zones of the folder
without prices at the mean of those with them) and on-demand at ``ondemand_price`` (by default
the package's AWS catalog price of the matching instance type, ``p3.2xlarge`` for
``v100_1``); otherwise spot costs 1 and on-demand 3 per hour.
"""

from __future__ import annotations

import importlib.resources
import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from spotd.pricing.catalog import load_catalog
from spotd.recovery import history as rhist
from spotd.recovery import strategies
from spotd.sim.traces import LegacyRandom, TraceError, ZoneTrace
from spotd.types import (
    Candidate,
    CatalogEntry,
    EndReason,
    Market,
    RecoveryStrategy,
    ResourceOption,
    ResourceRequest,
    ZoneEventKind,
)

__all__ = [
    "JOB_POLICIES",
    "JobResult",
    "JobRun",
    "JobSetup",
    "Pricing",
    "pricing_for",
    "run_job",
    "simulate_jobs",
]

_MEMORY_SECONDS = 24 * 3600.0
# trace shape -> AWS instance type, to price on-demand from the package catalog
_SHAPES: Mapping[str, str] = MappingProxyType({"v100_1": "p3.2xlarge", "intel_64": "r5.16xlarge"})

JOB_POLICIES: Mapping[str, RecoveryStrategy | None] = MappingProxyType(
    {
        "eager-next-region": RecoveryStrategy.EAGER_NEXT_REGION,
        "failover": RecoveryStrategy.FAILOVER,
        "deadline": RecoveryStrategy.DEADLINE,
        "on-demand": None,
    }
)
JOB_POLICY_NAMES: tuple[str, ...] = (*JOB_POLICIES, "omniscient")


@dataclass(frozen=True, slots=True)
class JobSetup:
    """Every parameter of a jobs run. Defaults follow "Can't Be Late" (NSDI'24): a 48 h job
    with 4 h of slack and a 0.2 h restart overhead."""

    job_hours: float = 48.0
    deadline_hours: float = 52.0
    checkpoint_seconds: float = 600.0  # 0: every second of progress is saved
    restart_overhead_seconds: float = 720.0
    num_nodes: int = 1
    windows: int = 10
    seed: int = 0
    tick_seconds: float | None = None  # None: the finest gap of the trace
    ondemand_price: float | None = None  # USD/h; None: see the module docstring

    def __post_init__(self) -> None:
        if not self.job_hours > 0 or not self.deadline_hours > 0:
            raise ValueError("job_hours and deadline_hours must be > 0")
        if self.checkpoint_seconds < 0 or self.restart_overhead_seconds < 0:
            raise ValueError("checkpoint_seconds and restart_overhead_seconds must be >= 0")
        if self.num_nodes < 1 or self.windows < 1:
            raise ValueError("num_nodes and windows must be >= 1")

    @property
    def work_seconds(self) -> float:
        return self.job_hours * 3600.0

    @property
    def deadline_seconds(self) -> float:
        return self.deadline_hours * 3600.0


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD (or units) per hour. ``spot[zone][i]``: the price at trace point ``i``."""

    real: bool
    ondemand: float
    spot: tuple[tuple[float, ...], ...]

    def spot_at(self, zone: int, trace: ZoneTrace, seconds: float) -> float:
        prices = self.spot[zone]
        return float(prices[trace.index_at(seconds) % len(prices)])


@dataclass(frozen=True, slots=True)
class JobRun:
    """One job in one window."""

    offset_seconds: float
    finished_at: float | None  # seconds after submission; None: never finished
    missed: bool
    cost: float
    ondemand_cost: float  # what running on on-demand from the start would cost
    preemptions: int
    launch_failures: int
    lost_seconds: float  # progress lost to preemptions
    overhead_seconds: float  # restart overhead paid
    spot_seconds: float
    ondemand_seconds: float
    timeline: tuple[tuple[float, float, float], ...] = field(repr=False, default=())
    # (seconds, progress fraction, cumulative cost) at every tick


@dataclass(frozen=True, slots=True)
class JobResult:
    policy: str
    runs: tuple[JobRun, ...]

    def _mean(self, xs: Sequence[float]) -> float:
        return sum(xs) / len(xs)

    @property
    def cost(self) -> float:
        return self._mean([r.cost for r in self.runs])

    @property
    def cost_vs_ondemand(self) -> float:
        return self._mean([r.cost / r.ondemand_cost for r in self.runs])

    @property
    def deadline_misses(self) -> int:
        return sum(r.missed for r in self.runs)

    @property
    def preemptions(self) -> float:
        return self._mean([r.preemptions for r in self.runs])

    @property
    def lost_hours(self) -> float:
        return self._mean([(r.lost_seconds + r.overhead_seconds) / 3600.0 for r in self.runs])

    @property
    def finish_hours(self) -> float:
        done = [r.finished_at for r in self.runs if r.finished_at is not None]
        return self._mean(done) / 3600.0 if done else math.inf


def _catalog_ondemand(trace: ZoneTrace) -> float | None:
    itype = _SHAPES.get(trace.shape)
    if itype is None:
        return None
    # the package's AWS snapshot
    path = importlib.resources.files("spotd") / "data" / "aws_catalog.yaml"
    entries = [e for e in load_catalog(str(path)) if e.instance_type == itype]
    in_region = [e.ondemand_price for e in entries if e.region == trace.zone.region]
    prices = in_region or [e.ondemand_price for e in entries]
    return min(prices) if prices else None


def pricing_for(traces: Sequence[ZoneTrace], setup: JobSetup) -> Pricing:
    """Real prices where the trace has them, else spot 1 / on-demand 3 (module docstring)."""
    priced = [t.prices for t in traces if t.prices is not None]
    if not priced:
        flat = setup.ondemand_price if setup.ondemand_price is not None else 3.0
        return Pricing(False, flat, tuple((1.0,) for _ in traces))
    mean = sum(sum(p) / len(p) for p in priced) / len(priced)
    spot = tuple(t.prices if t.prices is not None else (mean,) for t in traces)
    if setup.ondemand_price is not None:
        return Pricing(True, setup.ondemand_price, spot)
    found = [p for p in (_catalog_ondemand(t) for t in traces) if p is not None]
    return Pricing(True, min(found) if found else 3.0 * mean, spot)


@dataclass
class _Attempt:
    candidate: Candidate
    zone: int  # index into the traces
    started: float
    overhead_left: float


def _request(setup: JobSetup, shape: str, *, use_spot: bool) -> ResourceRequest:
    return ResourceRequest(options=(ResourceOption(instance_type=shape, use_spot=use_spot),))


def run_job(
    policy: str,
    traces: Sequence[ZoneTrace],
    setup: JobSetup,
    *,
    offset_seconds: float,
    pricing: Pricing,
    rng: random.Random | None = None,
) -> JobRun:
    """Run the job once, submitted ``offset_seconds`` into the trace."""
    if policy == "omniscient":
        return _omniscient(traces, setup, offset_seconds, pricing)
    try:
        strategy = JOB_POLICIES[policy]
    except KeyError:
        raise ValueError(
            f"unknown policy {policy!r}; known: {', '.join(JOB_POLICY_NAMES)}"
        ) from None
    rng = rng or random.Random(0)
    dt = setup.tick_seconds or min(t.gap_seconds for t in traces)
    shape = traces[0].shape
    zone_of = {t.zone: i for i, t in enumerate(traces)}
    use_spot = strategy is not None
    request = _request(setup, shape, use_spot=use_spot)
    # the paper's names: work L, restart overhead O, checkpoint interval K
    L = setup.work_seconds
    O = setup.restart_overhead_seconds  # noqa: E741
    K = setup.checkpoint_seconds
    deadline = setup.deadline_seconds if strategy is RecoveryStrategy.DEADLINE else None
    margin = max(30.0, dt)
    horizon = setup.deadline_seconds + L + 2 * O + 24 * 3600.0  # long enough for on-demand

    def avail(zone: int, now: float) -> bool:
        return bool(traces[zone].available_at(offset_seconds + now) >= setup.num_nodes)

    def catalog(now: float) -> list[CatalogEntry]:
        return [
            CatalogEntry(
                provider=t.zone.provider,
                region=t.zone.region,
                zone=t.zone.zone,
                instance_type=shape,
                vcpus=8,
                memory_gb=61,
                accelerator=None,
                accelerator_count=0,
                ondemand_price=pricing.ondemand,
                spot_price=pricing.spot_at(i, t, offset_seconds + now),
            )
            for i, t in enumerate(traces)
        ]

    history: deque[rhist.ZoneEvent] = deque()
    attempt: _Attempt | None = None
    last: Candidate | None = None
    last_end: EndReason | None = None
    failed = 0
    first_failure: float | None = None
    next_try = 0.0
    saved = live = 0.0  # checkpointed progress, progress since the last checkpoint
    cost = lost = overhead = spot_s = od_s = 0.0
    preemptions = failures = 0
    finished: float | None = None
    timeline: list[tuple[float, float, float]] = []

    def view(now: float) -> strategies.JobView:
        return strategies.JobView(
            strategy=strategy or RecoveryStrategy.EAGER_NEXT_REGION,
            request=request,
            num_nodes=setup.num_nodes,
            submitted_at=0.0,
            last=last,
            last_end=last_end,
            failed_launches=failed,
            first_failure_at=first_failure,
            deadline=deadline,
            expected_duration=L if deadline is not None else None,
            work_done=saved,
            restart_overhead=O,
            safety_margin=margin,
        )

    def end(a: _Attempt, reason: EndReason, now: float) -> None:
        nonlocal attempt, last, last_end
        if a.candidate.market is Market.SPOT:
            history.append(
                rhist.ZoneEvent(
                    a.candidate.zone_key, ZoneEventKind.RAN, now, seconds=now - a.started
                )
            )
        attempt, last, last_end = None, a.candidate, reason

    now = 0.0
    while now < horizon and finished is None:
        if attempt is not None and attempt.candidate.market is Market.SPOT:
            if not avail(attempt.zone, now):
                preemptions += 1
                lost += live
                live = 0.0
                history.append(
                    rhist.ZoneEvent(attempt.candidate.zone_key, ZoneEventKind.PREEMPTED, now)
                )
                end(attempt, EndReason.PREEMPTED, now)
            elif strategies.should_switch_to_ondemand(view(now), now=now):
                saved, live = saved + live, 0.0  # the agent checkpoints on the way out
                end(attempt, EndReason.MIGRATED, now)
        if attempt is None and now >= next_try:
            while history and history[0].at < now - _MEMORY_SECONDS:
                history.popleft()  # the controller reads the last 24 h of zone events
            decision = strategies.next_placement(
                view(now), catalog=catalog(now), history=list(history), now=now, jitter=rng.random()
            )
            if isinstance(decision, strategies.GiveUp):
                break
            if isinstance(decision, strategies.Wait):
                next_try = decision.until
            else:
                c = decision.candidate
                z = zone_of[c.zone_key]
                if c.market is Market.SPOT and not avail(z, now):
                    failures += 1
                    failed += 1
                    first_failure = now if first_failure is None else first_failure
                    history.append(rhist.ZoneEvent(c.zone_key, ZoneEventKind.LAUNCH_FAILED, now))
                    last, last_end = c, EndReason.LAUNCH_FAILED
                else:
                    history.append(rhist.ZoneEvent(c.zone_key, ZoneEventKind.LAUNCHED, now))
                    attempt = _Attempt(c, z, now, O)
                    failed, first_failure = 0, None
        # the tick: bill, then overhead, then progress
        if attempt is not None:
            spot = attempt.candidate.market is Market.SPOT
            price = (
                pricing.spot_at(attempt.zone, traces[attempt.zone], offset_seconds + now)
                if spot
                else pricing.ondemand
            )
            left = dt
            used_overhead = min(attempt.overhead_left, left)
            attempt.overhead_left -= used_overhead
            overhead += used_overhead
            left -= used_overhead
            work = min(left, L - saved - live)
            live += work
            if (K > 0 and live >= K) or K == 0:
                saved, live = saved + live, 0.0
            billed = used_overhead + work if saved + live >= L else dt
            cost += price * setup.num_nodes * billed  # USD-seconds: exact for whole ticks
            if spot:
                spot_s += billed
            else:
                od_s += billed
            if saved + live >= L - 1e-9:
                finished = now + used_overhead + work
        now += dt
        timeline.append((now, min(1.0, (saved + live) / L), cost / 3600.0))
    od_cost = pricing.ondemand * setup.num_nodes * (L + O) / 3600.0
    return JobRun(
        offset_seconds=offset_seconds,
        finished_at=finished,
        missed=finished is None or finished > setup.deadline_seconds + 1e-6,
        cost=cost / 3600.0,
        ondemand_cost=od_cost,
        preemptions=preemptions,
        launch_failures=failures,
        lost_seconds=lost,
        overhead_seconds=overhead,
        spot_seconds=spot_s,
        ondemand_seconds=od_s,
        timeline=tuple(timeline),
    )


def _omniscient(
    traces: Sequence[ZoneTrace], setup: JobSetup, offset: float, pricing: Pricing
) -> JobRun:
    dt = setup.tick_seconds or min(t.gap_seconds for t in traces)
    need = setup.work_seconds + setup.restart_overhead_seconds
    od_cost = pricing.ondemand * setup.num_nodes * need / 3600.0
    rates = []
    t = 0.0
    while t + dt <= setup.deadline_seconds + 1e-9:
        spot = [
            pricing.spot_at(i, tr, offset + t)
            for i, tr in enumerate(traces)
            if tr.available_at(offset + t) >= setup.num_nodes
        ]
        rates.append(min([*spot, pricing.ondemand]))
        t += dt
    if need > len(rates) * dt + 1e-9:  # not even on-demand can make it
        return JobRun(offset, need, True, od_cost, od_cost, 0, 0, 0.0, 0.0, 0.0, need)
    cost = spot_s = 0.0
    left = need
    for r in sorted(rates):
        take = min(dt, left)
        cost += r * setup.num_nodes * take  # USD-seconds
        spot_s += take if r < pricing.ondemand else 0.0
        left -= take
        if left <= 0:
            break
    return JobRun(
        offset, need, False, cost / 3600.0, od_cost, 0, 0, 0.0, 0.0, spot_s, need - spot_s
    )


def simulate_jobs(
    traces: Sequence[ZoneTrace],
    setup: JobSetup = JobSetup(),
    policies: Sequence[str] | None = None,
) -> list[JobResult]:
    """Every policy over the same ``windows`` seeded submission times."""
    if not traces:
        raise TraceError("no zones in the trace")
    pricing = pricing_for(traces, setup)
    span = min(t.duration_seconds for t in traces)
    room = span - setup.deadline_seconds
    step = min(t.gap_seconds for t in traces)
    if room < step:
        raise TraceError(
            f"the trace spans {span / 3600:.1f} h, too short for a {setup.deadline_hours:g} h "
            "deadline"
        )
    draws = LegacyRandom(setup.seed)
    offsets = [draws.randint(0, int(room // step)) * step for _ in range(setup.windows)]
    out = []
    for name in policies or JOB_POLICY_NAMES:
        rng = random.Random(setup.seed)
        runs = tuple(
            run_job(name, traces, setup, offset_seconds=o, pricing=pricing, rng=rng)
            for o in offsets
        )
        out.append(JobResult(name, runs))
    return out
