"""Where to run a job next: after a preemption, a failed launch, a user failure, or at first.

``next_placement(job, catalog=..., history=..., now=...)`` returns one of

- ``Relaunch(candidate, runner_ups, reason)`` — launch there now;
- ``Wait(until, reason)`` — nothing is available now; ask again at ``until``;
- ``GiveUp(reason)`` — the request can never fit the catalog, or no placement worked for
  ``give_up_after`` seconds since the first failure (the job ends FAILED_NO_RESOURCE).

Every strategy ranks the optimizer's candidates, priced with the zone history
(``history.zone_penalties``: a just-preempted or stocked-out zone is blocked, then decays;
``history.preemption_risk``: price x risk), and then orders them in *tiers* relative to the
placement that just ended. The first candidate of the best tier wins; cost decides within it.

EAGER_NEXT_REGION (default)
    After a preemption (or a lost instance) the zone *and its region* are skipped: spot
    capacity is reclaimed region-wide, so the zone next door is the next to go. SkyPilot's
    executor of the same name means to do this but never blocks the region (its issue
    #10021); here the rule is explicit:

        tier 0: the cheapest candidate outside the preempted region;
        tier 1: another zone of the preempted region, only if tier 0 is empty;
        tier 2: the preempted zone itself, only if nothing else exists.

    Preemptions also rank a region down for everyone (``history.region_penalties``: at most
    10x its price right after, halving every ten minutes). For a job in three regions
    R1 < R2 < R3 (by spot price), zones a and b (b a little dearer), the sequence reads:

        t=0     R1a preempted -> R2a  (the cheapest outside R1)
        t=300   R2a preempted -> R3a  (outside R2; R1, hit five minutes ago, still costs >3x)
        t=2400  R3a preempted -> R1b  (outside R3; R1's penalty has decayed, R1b was never hit)
        t=2700  R1b preempted -> R2b  (outside R1; R2a, hit at t=300, still costs a bit more)

    A failed launch right after a preemption does not send the job back: the preempted
    region stays ranked down by its penalty while the job fails over among the others. After
    a failed launch only the zone is skipped (tier 1 = the same zone), since the optimizer's
    next choice is usually another zone of the same region.

FAILOVER
    Stay close: the same zone first (unless it is blocked, as it is right after a preemption
    or a stockout), then the other zones of the same region, then the other regions by cost.

DEADLINE (Uniform Progress, "Can't Be Late", NSDI'24)
    Needs ``deadline`` and ``expected_duration``; without them it behaves as
    EAGER_NEXT_REGION. Both markets are considered whatever ``use_spot`` says. With
    ``remaining_work = expected_duration - work_done`` and
    ``slack = (deadline - now) - remaining_work``, a (re)launch goes to spot (or waits for
    it) if

        slack - 2 * restart_overhead >= safety_margin   (this launch, and one more later to
                                                          fall back to on-demand, both fit)
        work_done + restart_overhead >= expected_duration * elapsed_fraction
            where elapsed_fraction = (now - submitted_at) / (deadline - submitted_at)
                                    (on or ahead of the uniform-progress line, allowed to
                                     trail it by the one launch being decided)

    and otherwise to on-demand, unless it may take a risk (below). It gives up (``give_up_after``)
    only once on-demand refuses too: waiting for spot ahead of the line is no failure. When
    spot is allowed but none is available the job waits
    (spot capacity usually comes back) until the earlier of the backoff and the moment either
    rule would switch it to on-demand. Once the deadline cannot be met at all it goes to
    on-demand, which finishes soonest. ``should_switch_to_ondemand`` is the same rule for a
    spot attempt that is running (one restart to pay): switch once
    ``slack - restart_overhead < safety_margin``, unless even that would miss the deadline, in
    which case the restart would only make it later.

    Taking risks (the paper's rule 5): behind the line, a (re)launch still goes to spot while
    the slack rule allows it and some spot zone did not just refuse a launch or lose an
    instance (a refusal costs seconds: the executor asks again at once); only when every zone
    did, on-demand, tried even when spot refusals rank every zone's on-demand out (an
    on-demand refusal then makes the job wait).

    Zone memory: a DEADLINE job prices a zone that lost an instance with a one-hour half-life
    (``preempted_half_life_seconds``), not ten minutes: capacity just reclaimed is the likeliest
    to go again (4-30x likelier in its first hours on the traces of docs/simulate.md), and each
    preemption costs lost work and a restart. Whether a zone is held (rule 5) reads 10 min.

    Back to spot: ``should_return_to_spot`` is asked while an on-demand attempt runs. It holds
    when the launch rule would put the job on spot (``work_done + restart_overhead >=
    expected_duration * elapsed_fraction`` and ``slack - 2 * restart_overhead >=
    safety_margin``), more than two restarts of work are left, ``work_done`` comes from
    checkpoints (the relaunch resumes from it), and some spot zone is not blocked by a refusal
    in the last ``hold_seconds``.

    Make before break: the executor then launches ``return_placement`` (the spot zone
    ``next_placement`` picks) beside the on-demand attempt, which ends only once the provider
    accepted it; a refusal costs an API call and the next checkpoint asks again, or after
    ``k >= 2`` such checkpoints in a row, the first one ``returns.backoff(k)`` later (10 min
    doubling to 1 h: a day's stockout is 27 checkpoints of tries, not 144). No hysteresis:
    on-demand gains on the line only 1/13 s/s for a 48 h job due in 52 h, and the paper's
    ``cp(t) >= ep(t + 2d)`` was dearer (docs/simulate.md). 5000 s due at 10000 s, 60 s restarts:

        t=2000  spot preempted with 900 s saved; the line asks 1000, and every spot zone just
                refused a launch -> on-demand (60 s restart, work resumes at t=2060)
        t=2200  1040 s saved, 1100 asked: trailing by one restart; slack 3840 >= 2 * 60 + 30
                -> at the next checkpoint, spot is tried beside on-demand, which ends if accepted

Backoff: ``backoff_seconds(n, jitter)`` = min(cap, base * 2**n) x ``0.5 + jitter / 2`` (never
below half: no hot loop; jobs that failed together retry apart), not past the give-up time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spotd.recovery import history as hist
from spotd.recovery import placement
from spotd.types import (
    Candidate,
    CatalogEntry,
    EndReason,
    Market,
    RecoveryStrategy,
    ResourceRequest,
    ZoneEventKind,
    ZoneKey,
)

__all__ = [
    "RETURN_TRIES",
    "Decision",
    "GiveUp",
    "JobView",
    "Relaunch",
    "Tuning",
    "Wait",
    "backoff_seconds",
    "elapsed_fraction",
    "next_placement",
    "return_placement",
    "should_return_to_spot",
    "should_switch_to_ondemand",
    "slack_seconds",
]

# Ends after which the placement itself is suspect (the capacity went away under us).
_LOST = frozenset({EndReason.PREEMPTED, EndReason.LOST, EndReason.INFRA_FAILED})


@dataclass(frozen=True, slots=True)
class JobView:
    """What a placement decision needs to know about one job."""

    strategy: RecoveryStrategy
    request: ResourceRequest
    num_nodes: int
    submitted_at: float
    last: Candidate | None = None  # the placement that just ended (None: first launch)
    last_end: EndReason | None = None
    failed_launches: int = 0  # consecutive launch failures since the last successful start
    first_failure_at: float | None = None  # when that run of failures began
    give_up_after: float = math.inf  # seconds after first_failure_at to stop trying
    deadline: float | None = None  # epoch seconds (DEADLINE strategy)
    expected_duration: float | None = None  # seconds of work the job needs in total
    work_done: float = 0.0  # seconds of progress already made (checkpointed, or run)
    progress_from_checkpoints: bool = False  # work_done is what the last checkpoint holds
    restart_overhead: float = 60.0  # seconds one (re)launch costs before work resumes
    safety_margin: float = 30.0  # slack kept in reserve before the deadline forces on-demand


@dataclass(frozen=True, slots=True)
class Tuning:
    """Knobs shared by every job; the defaults are what the daemon uses."""

    half_life_seconds: float = 600.0  # zone/region penalties halve this often
    # DEADLINE prices a zone that lost an instance for longer (module docstring)
    preempted_half_life_seconds: float = 3600.0
    hold_seconds: float = 30.0  # a preempted / stocked-out zone is fully blocked this long
    region_penalty_cap: float = 0.9  # EAGER: a just-preempted region costs at most 10x
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    max_runner_ups: int = 8


@dataclass(frozen=True, slots=True)
class Relaunch:
    candidate: Candidate
    runner_ups: tuple[Candidate, ...]  # the next best, in order, for the record
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    until: float  # epoch seconds
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


Decision = Relaunch | Wait | GiveUp

_DEFAULT_TUNING = Tuning()


def backoff_seconds(
    failed_launches: int, jitter: float, *, base: float = 1.0, cap: float = 60.0
) -> float:
    """min(cap, base * 2**failed_launches) * (0.5 + jitter/2), jitter in [0, 1] (1: the
    ceiling itself, no spread)."""
    ceiling = min(cap, base * 2.0 ** min(max(0, failed_launches), 64))
    return ceiling * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


def next_placement(
    job: JobView,
    *,
    catalog: Sequence[CatalogEntry],
    history: Sequence[hist.ZoneEvent],
    now: float,
    jitter: float = 0.5,
    tuning: Tuning = _DEFAULT_TUNING,
) -> Decision:
    """Decide where ``job`` runs next (see the module docstring)."""
    never = _never_feasible(job, catalog)
    if never is not None:
        return GiveUp(f"no feasible placement: {never}")
    give_up_at = (
        job.first_failure_at + job.give_up_after if job.first_failure_at is not None else None
    )
    if job.strategy is RecoveryStrategy.DEADLINE and _has_deadline(job):
        return _deadline(_Context(job, catalog, history, now, jitter, tuning, None), give_up_at)
    if give_up_at is not None and now >= give_up_at:
        return _give_up(job, now)
    ctx = _Context(job, catalog, history, now, jitter, tuning, give_up_at)
    mode = "failover" if job.strategy is RecoveryStrategy.FAILOVER else "eager"
    ranked = ctx.ranked(job.request, mode=mode)
    if not ranked:
        return ctx.wait(job.request, "")
    return ctx.relaunch(ranked)


def _give_up(job: JobView, now: float, also: str = "") -> GiveUp:
    tried = f"{now - (job.first_failure_at or now):.0f}s ({job.failed_launches} failed launch(es))"
    return GiveUp(f"no placement worked for {tried}{also}; giving up after {job.give_up_after:g}s")


def should_switch_to_ondemand(job: JobView, *, now: float) -> bool:
    """For a running spot attempt of a DEADLINE job: must it move to on-demand now?

    True once ``slack - restart_overhead < safety_margin`` while the switch can still meet the
    deadline (``slack - restart_overhead >= 0``); see the module docstring.
    """
    if job.strategy is not RecoveryStrategy.DEADLINE or not _has_deadline(job):
        return False
    remaining = _remaining_work(job)
    if remaining <= 0:
        return False
    after_switch = slack_seconds(job, now) - job.restart_overhead
    return 0.0 <= after_switch < job.safety_margin


def should_return_to_spot(
    job: JobView,
    *,
    catalog: Sequence[CatalogEntry],
    history: Sequence[hist.ZoneEvent],
    now: float,
    tuning: Tuning = _DEFAULT_TUNING,
) -> bool:
    """For a running on-demand attempt of a DEADLINE job: would the launch rule put it on spot
    now? The executor then tries a spot launch beside the on-demand attempt (make before
    break, module docstring)."""
    if job.strategy is not RecoveryStrategy.DEADLINE or not _has_deadline(job):
        return False
    assert job.expected_duration is not None
    if not job.progress_from_checkpoints:
        return False
    overhead = job.restart_overhead
    if _remaining_work(job) <= 2 * overhead:
        return False
    if not _ahead(job, now):
        return False
    if slack_seconds(job, now) - 2 * overhead < job.safety_margin:
        return False
    ctx = _Context(job, catalog, history, now, 0.5, tuning, None)
    return bool(ctx.ranked(_with_market(job.request, spot=True), mode="eager"))


RETURN_TRIES = 3  # spot zones a return tries, one after another, at one checkpoint


def return_placement(
    job: JobView,
    *,
    here: Candidate,
    catalog: Sequence[CatalogEntry],
    history: Sequence[hist.ZoneEvent],
    now: float,
    tuning: Tuning = _DEFAULT_TUNING,
) -> Candidate | None:
    """For a job ``should_return_to_spot`` sends back: the spot placement to launch beside its
    on-demand attempt ``here``, ranked as if that attempt had just ended (MIGRATED); None when
    placement would not put the job on spot now (every zone held, or the slack gone). The
    executor tries it, and after a refusal asks again with the refusal in ``history``, up to
    ``RETURN_TRIES`` times (make before break, module docstring)."""
    view = dataclasses.replace(job, last=here, last_end=EndReason.MIGRATED)
    decision = next_placement(view, catalog=catalog, history=history, now=now, tuning=tuning)
    if isinstance(decision, Relaunch) and decision.candidate.market is Market.SPOT:
        return decision.candidate
    return None


# -- internals -----------------------------------------------------------------------------


def _has_deadline(job: JobView) -> bool:
    return job.deadline is not None and job.expected_duration is not None


def _remaining_work(job: JobView) -> float:
    assert job.expected_duration is not None
    return max(0.0, job.expected_duration - job.work_done)


def slack_seconds(job: JobView, now: float) -> float:
    """Time to the deadline beyond the work still to do (DEADLINE jobs)."""
    assert job.deadline is not None
    return (job.deadline - now) - _remaining_work(job)


def progress(job: JobView) -> float:  # the share of the expected work done, 0-1
    assert job.expected_duration is not None
    if job.expected_duration <= 0:
        return 1.0
    return min(1.0, max(0.0, job.work_done / job.expected_duration))


def _ahead(job: JobView, now: float) -> bool:
    """On or ahead of the uniform-progress line, allowed to trail it by one restart."""
    assert job.expected_duration is not None
    line = job.expected_duration * elapsed_fraction(job, now)
    return job.work_done + job.restart_overhead + 1e-9 >= line


def elapsed_fraction(job: JobView, now: float) -> float:
    """How far from submission to the deadline ``now`` is: the uniform-progress line's share."""
    assert job.deadline is not None
    span = job.deadline - job.submitted_at
    return 1.0 if span <= 0 else min(1.0, max(0.0, (now - job.submitted_at) / span))


def _with_market(request: ResourceRequest, spot: bool) -> ResourceRequest:
    return dataclasses.replace(
        request, options=tuple(dataclasses.replace(o, use_spot=spot) for o in request.options)
    )


def _never_feasible(job: JobView, catalog: Sequence[CatalogEntry]) -> str | None:
    """The explanation if no placement can ever exist, ignoring history; else None."""
    request = job.request
    if job.strategy is RecoveryStrategy.DEADLINE and _has_deadline(job):
        request = _with_market(job.request, spot=False)
        if placement.candidates(_with_market(job.request, spot=True), catalog):
            return None
    if placement.candidates(request, catalog):
        return None
    return str(placement.explain_infeasible(request, catalog))


@dataclass(frozen=True)
class _Ranked:
    candidate: Candidate
    tier: int
    reason: str


@dataclass(frozen=True)
class _Context:
    job: JobView
    catalog: Sequence[CatalogEntry]
    history: Sequence[hist.ZoneEvent]
    now: float
    jitter: float
    tuning: Tuning
    give_up_at: float | None

    def ranked(self, request: ResourceRequest, *, mode: str) -> list[_Ranked]:
        """Candidates for ``request`` priced with the history, in tiers (module docstring).

        ``mode``: "eager" (region penalties, skip the lost region), "failover" (stay close to
        the last placement) or "cost" (on-demand: only a zone that just refused a launch is
        put last)."""
        regional = mode == "eager"
        t = self.tuning
        spot_zone = hist.zone_penalties(
            self.history,
            self.now,
            half_life_seconds=t.half_life_seconds,
            hold_seconds=t.hold_seconds,
        )
        ondemand_zone = hist.zone_penalties(
            self.history,
            self.now,
            half_life_seconds=t.half_life_seconds,
            hold_seconds=t.hold_seconds,
            kinds={ZoneEventKind.LAUNCH_FAILED},
        )
        if regional:
            regions = hist.region_penalties(
                self.history,
                self.now,
                half_life_seconds=t.half_life_seconds,
                cap=t.region_penalty_cap,
            )
            spot_zone = hist.penalties_by_zone(
                {e.zone_key for e in self.catalog}, spot_zone, regions
            )
        cands = placement.candidates(
            request,
            self.catalog,
            num_nodes=self.job.num_nodes,
            risk=hist.preemption_risk(self.history, self.now),
            blocked=self._priced(spot_zone),
            ondemand_blocked=ondemand_zone,
        )
        tier = {"eager": _eager_tier, "failover": _failover_tier, "cost": _cost_tier}[mode](
            self.job
        )
        out = []
        for c in cands:
            rank, reason = tier(c)
            if c.market is Market.SPOT and spot_zone.get(c.zone_key, 0.0) >= _HELD:
                # just preempted: after everything else, but not impossible (history.py)
                rank += 100
                reason = f"every other zone was just preempted or refused; retrying {c.zone}"
            out.append(_Ranked(c, rank, reason))
        out.sort(key=lambda r: r.tier)  # stable: cost order within a tier
        return out

    def _priced(self, penalties: dict[ZoneKey, float]) -> dict[ZoneKey, float]:
        """The spot penalties a DEADLINE job prices zones with: a lost instance also weighs
        with ``preempted_half_life_seconds`` (capacity that was just reclaimed is the likeliest
        to be reclaimed again: module docstring). Whether a zone is *held* (just preempted or
        refused) still reads the short memory alone."""
        if self.job.strategy is not RecoveryStrategy.DEADLINE:
            return penalties
        slow = hist.zone_penalties(
            self.history,
            self.now,
            half_life_seconds=self.tuning.preempted_half_life_seconds,
            hold_seconds=self.tuning.hold_seconds,
            kinds={ZoneEventKind.PREEMPTED},
        )
        zones = set(penalties) | set(slow)
        return {z: max(penalties.get(z, 0.0), slow.get(z, 0.0)) for z in zones}

    def relaunch(self, ranked: Sequence[_Ranked], prefix: str = "") -> Relaunch:
        best = ranked[0]
        runner_ups = tuple(r.candidate for r in ranked[1 : 1 + self.tuning.max_runner_ups])
        return Relaunch(best.candidate, runner_ups, f"{prefix}{best.reason}")

    def backoff(self) -> float:
        t = self.tuning
        return backoff_seconds(
            self.job.failed_launches, self.jitter, base=t.backoff_base, cap=t.backoff_cap
        )

    def wait(
        self, request: ResourceRequest, prefix: str, *, switch_at: float | None = None
    ) -> Wait:
        """Nothing available now: wait out the backoff (or until ``switch_at``), never past
        the give-up time, and say which zones are holding us up."""
        until = self.now + self.backoff()
        if switch_at is not None:
            until = min(until, max(switch_at, self.now + 0.5 * self.tuning.backoff_base))
        if self.give_up_at is not None:
            until = min(until, self.give_up_at)
        zones = sorted({str(c.zone_key) for c in placement.candidates(request, self.catalog)})
        shown = ", ".join(zones[:6]) + (f" and {len(zones) - 6} more" if len(zones) > 6 else "")
        reason = (
            f"{prefix}every feasible zone is blocked by a recent preemption or stockout "
            f"({shown}); retrying in {until - self.now:.1f}s"
        )
        return Wait(until=until, reason=reason)


_HELD = 0.9  # a zone penalised this much was preempted or refused a launch moments ago


def _eager_tier(job: JobView) -> Callable[[Candidate], tuple[int, str]]:
    last, end = job.last, job.last_end
    if last is None or end is None:
        return lambda c: (0, "cheapest feasible placement")
    if end in _LOST:
        what = end.value.lower().replace("_", " ")

        def tier(c: Candidate) -> tuple[int, str]:
            if (c.provider, c.region) != (last.provider, last.region):
                return 0, f"cheapest outside {last.region}, where the last attempt was {what}"
            if c.zone != last.zone:
                return 1, f"nothing available outside {last.region}: another zone of it"
            return 2, f"nothing else available: back to {last.region}/{last.zone}"

        return tier
    if end is EndReason.LAUNCH_FAILED:

        def launch_tier(c: Candidate) -> tuple[int, str]:
            if c.zone_key != last.zone_key:
                return 0, f"cheapest placement after the failed launch in {last.region}/{last.zone}"
            return 1, f"nothing else available: retrying {last.region}/{last.zone}"

        return launch_tier
    return lambda c: (0, "cheapest feasible placement")


def _cost_tier(job: JobView) -> Callable[[Candidate], tuple[int, str]]:
    last = job.last
    if last is None or job.last_end is not EndReason.LAUNCH_FAILED:
        return lambda c: (0, "cheapest feasible placement")
    return lambda c: (
        (1, f"nothing else available: retrying {last.region}/{last.zone}")
        if c.zone_key == last.zone_key
        else (0, f"cheapest placement after the failed launch in {last.region}/{last.zone}")
    )


def _failover_tier(job: JobView) -> Callable[[Candidate], tuple[int, str]]:
    last = job.last
    if last is None:
        return lambda c: (0, "cheapest feasible placement")

    def tier(c: Candidate) -> tuple[int, str]:
        if c.zone_key == last.zone_key:
            return 0, f"failover: the same zone {last.region}/{last.zone}"
        if (c.provider, c.region) == (last.provider, last.region):
            return 1, f"failover: another zone of {last.region}"
        return 2, f"failover: nothing available in {last.region}, cheapest other region"

    return tier


def _untouched(ctx: _Context, spot_req: ResourceRequest) -> list[_Ranked]:
    """Spot placements, best first, in zones that did not just refuse a launch or lose an
    instance (a region's recent losses rank its zones down but do not rule them out)."""
    held = {r.candidate.zone_key for r in ctx.ranked(spot_req, mode="cost") if r.tier >= 100}
    return [r for r in ctx.ranked(spot_req, mode="eager") if r.candidate.zone_key not in held]


def _deadline(ctx: _Context, give_up_at: float | None) -> Decision:
    job, now = ctx.job, ctx.now
    assert job.deadline is not None and job.expected_duration is not None
    slack = slack_seconds(job, now)
    done, elapsed = progress(job), elapsed_fraction(job, now)
    spot_slack = slack - 2 * job.restart_overhead
    ahead = _ahead(job, now)
    line = f"{done:.0%} done at {elapsed:.0%} of the time"
    spot_req = _with_market(job.request, spot=True)
    od_req = _with_market(job.request, spot=False)
    spot_exists = bool(placement.candidates(spot_req, ctx.catalog))
    if spot_slack >= job.safety_margin and not ahead and spot_exists:
        # Taking risks: behind the line, spot still wins if a zone may have capacity (one
        # that did not just refuse us or lose us an instance); a refusal costs seconds.
        fresh = _untouched(ctx, spot_req)
        if fresh:
            prefix = f"deadline: spot though behind the line ({line}), while slack allows; "
            return ctx.relaunch(fresh, prefix)
    if spot_slack >= job.safety_margin and ahead and spot_exists:
        ranked = ctx.ranked(spot_req, mode="eager")
        prefix = f"deadline: spot ({spot_slack:.0f}s spare slack, {line}); "
        if ranked:
            return ctx.relaunch(ranked, prefix)
        # Uniform Progress idles for spot while ahead; bounded by when a rule would flip.
        slack_flips = job.deadline - _remaining_work(job) - 2 * job.restart_overhead
        slack_flips -= job.safety_margin
        line_flips = job.submitted_at + (job.work_done + job.restart_overhead) / max(
            job.expected_duration, 1e-9
        ) * (job.deadline - job.submitted_at)
        return ctx.wait(
            spot_req, "deadline: waiting for spot; ", switch_at=min(slack_flips, line_flips)
        )
    if slack - job.restart_overhead < 0:
        why = f"the deadline can no longer be met ({slack:.0f}s slack); on-demand finishes soonest"
    elif not spot_exists:
        why = "no spot capacity for this request at all"
    elif not ahead:
        why = f"behind the uniform-progress line ({line})"
    else:
        why = f"only {spot_slack:.0f}s spare slack, below the {job.safety_margin:g}s margin"
    ranked = ctx.ranked(od_req, mode="cost")
    last = job.last
    if not ranked and last is not None and last.market is Market.SPOT:
        # The refusals that block every zone are the spot market's (the last one was): they
        # say little about on-demand, where the deadline is kept. An on-demand refusal makes
        # ``last`` on-demand, so this never loops on refused on-demand launches.
        ranked = [
            _Ranked(c, 0, "on-demand despite the spot refusals")
            for c in placement.candidates(od_req, ctx.catalog, num_nodes=job.num_nodes)
        ]
    if not ranked:
        if give_up_at is not None and now >= give_up_at:
            return _give_up(job, now, ", every on-demand zone refusing too")
        bounded = dataclasses.replace(ctx, give_up_at=give_up_at)
        return bounded.wait(od_req, f"deadline: on-demand ({why}); ")
    return ctx.relaunch(ranked, f"deadline: on-demand ({why}); ")
