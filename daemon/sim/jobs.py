"""Replay spot traces through the managed-job recovery strategies, tick by tick.

A job needs ``job_hours`` of work by ``deadline_hours`` after it is submitted. It saves a
checkpoint every ``checkpoint_seconds`` of progress (0: continuously) and pays
``restart_overhead_seconds`` of wall time, billed and without progress, on every (re)launch.
Each zone of the trace folder is one placement in the catalog; at every tick:

1. a spot attempt in a zone whose trace shows fewer than ``num_nodes`` instances is
   *preempted*: the progress since the last checkpoint is lost;
2. a DEADLINE job on spot asks ``should_switch_to_ondemand``; if so the attempt ends
   (MIGRATED) at once, losing what ran since its last checkpoint (the controller terminates
   it; the baselines' switches keep it, as their artifact models them). On on-demand, at a
   checkpoint, it asks ``should_return_to_spot``; if that holds, it makes before it breaks,
   as the controller does (``spotd.control.deadline``): ``next_placement`` picks a spot
   zone, and a launch there that the trace allows ends the on-demand attempt (MIGRATED) and
   starts the spot one;
   a refused one is recorded (LAUNCH_FAILED) and the next pick is tried, and when none is
   left the job runs on on-demand (after ``k`` such checkpoints in a row, the next return
   waits ``spotd.recovery.returns.backoff(k)``, as the controller's does);
3. a job without an attempt asks ``spotd.recovery.strategies.next_placement`` — the function
   the daemon's controller calls — with the zone history the controller would have recorded
   (LAUNCHED, LAUNCH_FAILED, PREEMPTED, RAN). A spot launch into a zone the trace shows empty
   *fails* (LAUNCH_FAILED) and the job asks again at once, within the tick, as the controller
   does (a refusal takes seconds): another zone, on-demand, or a wait; ``Wait`` is honoured
   to the tick; ``GiveUp`` ends the run;
4. the attempt is billed for the tick and makes progress after its restart overhead.

``JobView.work_done`` is the checkpointed progress (what a relaunch resumes from), so the
slack the DEADLINE rule computes is the slack the job really has. Its ``safety_margin`` is
at least one tick: the simulator looks once per tick, as the controller looks once per
observe interval.

Policies: ``eager-next-region``, ``failover``, ``deadline`` (spotd's Uniform Progress) — the
strategies of ``RecoveryStrategy`` —, ``on-demand`` (``next_placement`` with ``use_spot:
false``), ``greedy`` and ``uniform-progress`` ("Can't Be Late"'s baselines as its artifact
defines them, ``spotd.sim.cant_be_late``, with exact knowledge of spot availability, through
the same trace, prices, checkpoints and restarts), and ``omniscient``, a hindsight lower
bound: the cheapest ``job_hours`` plus one restart overhead of ticks before the deadline,
each priced at the cheapest spot zone the trace shows available then (on-demand where none
is), as if preemptions cost nothing.

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
from spotd.recovery import returns, strategies
from spotd.sim.cant_be_late import PAPER_POLICIES, TickView
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
JOB_POLICY_NAMES: tuple[str, ...] = (*JOB_POLICIES, *PAPER_POLICIES, "omniscient")


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
    attempts: tuple[tuple[float, Market], ...] = field(repr=False, default=())
    # (seconds, market) of every attempt that started, in order


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
    if policy not in JOB_POLICIES and policy not in PAPER_POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(JOB_POLICY_NAMES)}")
    return _Run(policy, traces, setup, offset_seconds, pricing, rng or random.Random(0)).run()


class _Run:
    """One job in one window; ``run`` is the tick loop of the module docstring."""

    def __init__(
        self,
        policy: str,
        traces: Sequence[ZoneTrace],
        setup: JobSetup,
        offset: float,
        pricing: Pricing,
        rng: random.Random,
    ) -> None:
        self.policy, self.traces, self.setup, self.offset = policy, traces, setup, offset
        self.pricing, self.rng = pricing, rng
        self.paper = PAPER_POLICIES.get(policy)
        self.strategy = JOB_POLICIES.get(policy)
        self.dt = setup.tick_seconds or min(t.gap_seconds for t in traces)
        self.shape = traces[0].shape
        self.zone_of = {t.zone: i for i, t in enumerate(traces)}
        self.request = _request(setup, self.shape, use_spot=self.strategy is not None)
        # the paper's names: work L, restart overhead O, checkpoint interval K
        self.L = setup.work_seconds
        self.O = setup.restart_overhead_seconds
        self.K = setup.checkpoint_seconds
        deadline = self.strategy is RecoveryStrategy.DEADLINE
        self.deadline = setup.deadline_seconds if deadline else None
        self.margin = max(30.0, self.dt)
        self.history: deque[rhist.ZoneEvent] = deque()
        self.attempt: _Attempt | None = None
        self.last: Candidate | None = None
        self.last_end: EndReason | None = None
        self.failed = 0
        self.first_failure: float | None = None
        self.next_try = 0.0
        self.saved = self.live = 0.0  # checkpointed progress, progress since the checkpoint
        self.cost = self.lost = self.overhead = self.spot_s = self.od_s = 0.0
        self.preemptions = self.failures = 0
        self.refused: returns.Refused | None = None  # all-refused returns in a row
        self.finished: float | None = None
        self.started: list[tuple[float, Market]] = []

    def avail(self, zone: int, now: float) -> bool:
        trace = self.traces[zone]
        return bool(trace.available_at(self.offset + now) >= self.setup.num_nodes)

    def catalog(self, now: float) -> list[CatalogEntry]:
        return [
            CatalogEntry(
                provider=t.zone.provider,
                region=t.zone.region,
                zone=t.zone.zone,
                instance_type=self.shape,
                vcpus=8,
                memory_gb=61,
                accelerator=None,
                accelerator_count=0,
                ondemand_price=self.pricing.ondemand,
                spot_price=self.pricing.spot_at(i, t, self.offset + now),
            )
            for i, t in enumerate(self.traces)
        ]

    def view(self) -> strategies.JobView:
        return strategies.JobView(
            strategy=self.strategy or RecoveryStrategy.EAGER_NEXT_REGION,
            request=self.request,
            num_nodes=self.setup.num_nodes,
            submitted_at=0.0,
            last=self.last,
            last_end=self.last_end,
            failed_launches=self.failed,
            first_failure_at=self.first_failure,
            deadline=self.deadline,
            expected_duration=self.L if self.deadline is not None else None,
            work_done=self.saved,
            progress_from_checkpoints=True,
            restart_overhead=self.O,
            safety_margin=self.margin,
        )

    def end(self, reason: EndReason, now: float, *, checkpointed: bool = True) -> None:
        """The attempt ends; a move the job chose keeps what ran since its last checkpoint
        when ``checkpointed`` (the baselines' model: the agent checkpoints on the way out)."""
        a = self.attempt
        assert a is not None
        if a.candidate.market is Market.SPOT:
            seconds = now - a.started
            self.history.append(
                rhist.ZoneEvent(a.candidate.zone_key, ZoneEventKind.RAN, now, seconds=seconds)
            )
        if reason is EndReason.PREEMPTED:
            self.preemptions += 1
            self.lost += self.live
            self.history.append(rhist.ZoneEvent(a.candidate.zone_key, ZoneEventKind.PREEMPTED, now))
        elif checkpointed:
            self.saved += self.live
        else:
            self.lost += self.live
        self.live = 0.0
        self.attempt, self.last, self.last_end = None, a.candidate, reason

    def start(self, c: Candidate, now: float) -> None:
        self.history.append(rhist.ZoneEvent(c.zone_key, ZoneEventKind.LAUNCHED, now))
        self.attempt = _Attempt(c, self.zone_of[c.zone_key], now, self.O)
        self.started.append((now, c.market))
        self.failed, self.first_failure = 0, None

    def spotd_step(self, now: float) -> None:
        """What the controller does at one observe interval (module docstring, 2-3)."""
        a = self.attempt
        if a is not None and self.strategy is RecoveryStrategy.DEADLINE:
            if a.candidate.market is Market.SPOT:
                if strategies.should_switch_to_ondemand(self.view(), now=now):
                    # the controller ends the attempt at once (``Deadline._leave``): what ran
                    # since the last checkpoint is lost, as in a preemption
                    self.end(EndReason.MIGRATED, now, checkpointed=False)
            elif self.live == 0.0 and a.overhead_left <= 0.0:  # at a checkpoint
                self.return_to_spot(a, now)
        if self.attempt is not None:
            return
        while self.history and self.history[0].at < now - _MEMORY_SECONDS:
            self.history.popleft()  # the controller reads the last 24 h of zone events
        # A refused launch takes seconds and the controller asks again at once: within the
        # tick, until a launch succeeds, the job waits or no zone is left to refuse.
        for _ in range(len(self.traces) + 2):
            if self.attempt is not None or now < self.next_try or not self.place(now):
                return

    def return_to_spot(self, a: _Attempt, now: float) -> None:
        """If ``should_return_to_spot`` holds, make before break: spot launches beside the
        on-demand attempt, which ends only when one is accepted (``Deadline.move``)."""
        attempt = len(self.started)  # the on-demand attempt's number
        if not returns.due(self.refused, attempt, now):
            return
        if not strategies.should_return_to_spot(
            self.view(), catalog=self.catalog(now), history=list(self.history), now=now
        ):
            return
        tried = False
        for _ in range(strategies.RETURN_TRIES):
            c = strategies.return_placement(
                self.view(),
                here=a.candidate,
                catalog=self.catalog(now),
                history=list(self.history),
                now=now,
            )
            if c is None:
                break
            if self.avail(self.zone_of[c.zone_key], now):
                self.end(EndReason.MIGRATED, now)
                self.start(c, now)
                return
            tried = True
            self.failures += 1
            self.history.append(rhist.ZoneEvent(c.zone_key, ZoneEventKind.LAUNCH_FAILED, now))
        if tried:
            self.refused = returns.after_refusal(self.refused, attempt, now)

    def place(self, now: float) -> bool:
        """Ask ``next_placement`` once and act; True when a launch was refused."""
        decision = strategies.next_placement(
            self.view(),
            catalog=self.catalog(now),
            history=list(self.history),
            now=now,
            jitter=self.rng.random(),
        )
        if isinstance(decision, strategies.GiveUp):
            self.next_try = math.inf
        elif isinstance(decision, strategies.Wait):
            self.next_try = decision.until
        else:
            c = decision.candidate
            if c.market is Market.SPOT and not self.avail(self.zone_of[c.zone_key], now):
                self.failures += 1
                self.failed += 1
                self.first_failure = now if self.first_failure is None else self.first_failure
                self.history.append(rhist.ZoneEvent(c.zone_key, ZoneEventKind.LAUNCH_FAILED, now))
                self.last, self.last_end = c, EndReason.LAUNCH_FAILED
                return True
            self.start(c, now)
        return False

    def paper_step(self, now: float) -> None:
        """The artifact's rules (``spotd.sim.cant_be_late``) with an exact ``has_spot``."""
        assert self.paper is not None
        a = self.attempt
        up = [i for i in range(len(self.traces)) if self.avail(i, now)]
        want = self.paper(
            TickView(
                t=now,
                gap=self.dt,
                market=a.candidate.market if a else None,
                overhead_left=a.overhead_left if a else 0.0,
                has_spot=bool(up),
                progress=self.saved + self.live,
                work=self.L,
                deadline=self.setup.deadline_seconds,
                restart=self.O,
            )
        )
        if a is not None and a.candidate.market is want:
            return
        if a is not None:
            self.end(EndReason.MIGRATED, now)
        if want is None:
            return
        catalog = self.catalog(now)
        if want is Market.SPOT:
            zone = min(up, key=lambda i: (catalog[i].spot_price or 0.0, i))
            price = catalog[zone].spot_price or 0.0
        else:
            zone, price = 0, self.pricing.ondemand
        e = catalog[zone]
        self.start(
            Candidate(e.provider, e.region, e.zone, e.instance_type, want, price, price), now
        )

    def tick(self, now: float) -> None:
        """Bill the tick, then pay overhead, then make progress."""
        a = self.attempt
        if a is None:
            return
        spot = a.candidate.market is Market.SPOT
        price = (
            self.pricing.spot_at(a.zone, self.traces[a.zone], self.offset + now)
            if spot
            else self.pricing.ondemand
        )
        used_overhead = min(a.overhead_left, self.dt)
        a.overhead_left -= used_overhead
        self.overhead += used_overhead
        work = min(self.dt - used_overhead, self.L - self.saved - self.live)
        self.live += work
        if self.K == 0 or self.live >= self.K:
            self.saved, self.live = self.saved + self.live, 0.0
        done = self.saved + self.live >= self.L - 1e-9
        billed = used_overhead + work if done else self.dt
        self.cost += price * self.setup.num_nodes * billed  # USD-seconds: exact for whole ticks
        if spot:
            self.spot_s += billed
        else:
            self.od_s += billed
        if done:
            self.finished = now + used_overhead + work

    def run(self) -> JobRun:
        setup, L, O = self.setup, self.L, self.O  # noqa: E741
        horizon = setup.deadline_seconds + L + 2 * O + 24 * 3600.0  # long enough for on-demand
        timeline: list[tuple[float, float, float]] = []
        now = 0.0
        while now < horizon and self.finished is None:
            a = self.attempt
            if a is not None and a.candidate.market is Market.SPOT and not self.avail(a.zone, now):
                self.end(EndReason.PREEMPTED, now)
            if self.paper is not None:
                self.paper_step(now)
            else:
                self.spotd_step(now)
                if self.next_try == math.inf:
                    break  # GiveUp
            self.tick(now)
            now += self.dt
            timeline.append((now, min(1.0, (self.saved + self.live) / L), self.cost / 3600.0))
        od_cost = self.pricing.ondemand * setup.num_nodes * (L + O) / 3600.0
        return JobRun(
            offset_seconds=self.offset,
            finished_at=self.finished,
            missed=self.finished is None or self.finished > setup.deadline_seconds + 1e-6,
            cost=self.cost / 3600.0,
            ondemand_cost=od_cost,
            preemptions=self.preemptions,
            launch_failures=self.failures,
            lost_seconds=self.lost,
            overhead_seconds=self.overhead,
            spot_seconds=self.spot_s,
            ondemand_seconds=self.od_s,
            timeline=tuple(timeline),
            attempts=tuple(self.started),
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
