"""DEADLINE: spot while the slack allows and progress keeps up, on-demand otherwise."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from spotd.recovery.strategies import (
    GiveUp,
    JobView,
    Relaunch,
    Wait,
    next_placement,
    return_placement,
    should_return_to_spot,
    should_switch_to_ondemand,
)
from spotd.types import Candidate, EndReason, Market, RecoveryStrategy
from tests.recovery.helpers import LAUNCH_FAILED, entry, ev, req, three_regions

CATALOG = three_regions()


def _job(
    *,
    deadline: float | None = 10_000.0,
    expected: float | None = 5_000.0,
    work: float = 0.0,
    use_spot: bool = True,
    strategy: RecoveryStrategy = RecoveryStrategy.DEADLINE,
    **kw: Any,
) -> JobView:
    return JobView(
        strategy=strategy,
        request=req(use_spot=use_spot),
        num_nodes=1,
        submitted_at=0.0,
        deadline=deadline,
        expected_duration=expected,
        work_done=work,
        restart_overhead=60.0,
        safety_margin=30.0,
        **kw,
    )


@pytest.mark.parametrize(
    ("deadline", "expected", "now", "work", "market", "reason"),
    [
        # plenty of slack, on the uniform line: spot
        (10_000, 5_000, 0, 0, Market.SPOT, "deadline: spot (4880s spare slack"),
        (10_000, 5_000, 4_000, 2_000, Market.SPOT, "40% done at 40% of the time"),
        # behind the line by less than one restart overhead: still spot
        (10_000, 5_000, 4_000, 1_950, Market.SPOT, "deadline: spot"),
        # behind the line by more than one restart overhead: spot still, while a zone may
        # have capacity (taking risks; the next test: every zone just refused -> on-demand)
        (10_000, 5_000, 4_000, 1_900, Market.SPOT, "spot though behind the line"),
        # on the line, but the slack cannot pay for this launch and a later switch
        (5_000, 4_900, 0, 0, Market.ON_DEMAND, "only -20s spare slack, below the 30s margin"),
        # exactly at the margin: spot (slack - 2 * 60 == 30)
        (5_000, 4_850, 0, 0, Market.SPOT, "deadline: spot (30s spare slack"),
        # the deadline is lost: on-demand finishes soonest
        (5_000, 4_900, 100, 0, Market.ON_DEMAND, "can no longer be met"),
        # the work is done but the job is not: spot if the time allows
        (10_000, 5_000, 9_000, 5_000, Market.SPOT, "deadline: spot"),
    ],
)
def test_market_choice(
    deadline: float, expected: float, now: float, work: float, market: Market, reason: str
) -> None:
    d = next_placement(
        _job(deadline=deadline, expected=expected, work=work),
        catalog=CATALOG,
        history=[],
        now=now,
    )
    assert isinstance(d, Relaunch), d
    assert d.candidate.market is market
    assert reason in d.reason, d.reason


def test_behind_the_line_with_every_spot_zone_refusing_goes_on_demand() -> None:
    d = next_placement(
        _job(work=1_900), catalog=CATALOG, history=_all_spot_stocked_out(3_940.0), now=4_000
    )
    assert isinstance(d, Relaunch), d
    assert d.candidate.market is Market.ON_DEMAND
    assert "behind the uniform-progress line (38% done at 40% of the time)" in d.reason


def test_on_demand_goes_to_the_cheapest_on_demand_zone() -> None:
    d = next_placement(_job(deadline=5_000, expected=4_900), catalog=CATALOG, history=[], now=0)
    assert isinstance(d, Relaunch)
    assert (d.candidate.zone, d.candidate.market) == ("r2a", Market.ON_DEMAND)


def test_both_markets_are_considered_whatever_use_spot_says() -> None:
    d = next_placement(_job(use_spot=False), catalog=CATALOG, history=[], now=0)
    assert isinstance(d, Relaunch) and d.candidate.market is Market.SPOT


def test_no_spot_sold_for_the_request_means_on_demand() -> None:
    catalog = [entry("r1", "r1a", spot=None), entry("r2", "r2a", spot=None, ondemand=0.5)]
    d = next_placement(_job(), catalog=catalog, history=[], now=0)
    assert isinstance(d, Relaunch)
    assert (d.candidate.zone, d.candidate.market) == ("r2a", Market.ON_DEMAND)
    assert "no spot capacity" in d.reason


def test_after_a_preemption_spot_leaves_the_region() -> None:
    last = Candidate("p", "r1", "r1a", "cpu-1", Market.SPOT, 0.1, 0.1)
    d = next_placement(
        _job(work=1_000, last=last, last_end=EndReason.PREEMPTED),
        catalog=CATALOG,
        history=[],
        now=1_000,
    )
    assert isinstance(d, Relaunch)
    assert (d.candidate.region, d.candidate.market) == ("r2", Market.SPOT)


def _all_spot_stocked_out(at: float) -> list:
    return [ev(LAUNCH_FAILED, z, at) for z in ("r1a", "r1b", "r2a", "r2b", "r3a", "r3b")]


def test_waits_for_spot_while_ahead_but_not_past_the_switch_to_on_demand() -> None:
    """With spot stocked out everywhere and room to wait, Uniform Progress idles; the wait
    ends no later than when the line would send the job to on-demand."""
    job = JobView(
        strategy=RecoveryStrategy.DEADLINE,
        request=req(use_spot=True),
        num_nodes=1,
        submitted_at=0.0,
        deadline=10_000.0,
        expected_duration=9_000.0,
        work_done=0.0,
        restart_overhead=20.0,
        safety_margin=30.0,
        failed_launches=10,
    )
    d = next_placement(
        job, catalog=CATALOG, history=_all_spot_stocked_out(0.0), now=0.0, jitter=0.99
    )
    assert isinstance(d, Wait), d
    line_flips = 20.0 / 9_000.0 * 10_000.0  # work_done + overhead == expected * elapsed
    assert d.until == pytest.approx(line_flips)
    assert "waiting for spot" in d.reason


def test_waits_are_bounded_by_the_slack_rule_too() -> None:
    job = _job(deadline=5_200.0, expected=5_000.0, failed_launches=10)
    d = next_placement(
        job, catalog=CATALOG, history=_all_spot_stocked_out(0.0), now=0.0, jitter=0.99
    )
    assert isinstance(d, Wait)
    slack_flips = 5_200.0 - 5_000.0 - 2 * 60.0 - 30.0  # 50 s, before the line (62.4 s)
    assert d.until == pytest.approx(slack_flips)
    # at that moment the job goes to on-demand (stockouts there have lifted meanwhile)
    d = next_placement(job, catalog=CATALOG, history=[], now=d.until + 1.0)
    assert isinstance(d, Relaunch) and d.candidate.market is Market.ON_DEMAND


@pytest.mark.parametrize(
    ("work", "last", "want"),
    [
        # ahead of the line, every zone refusing spot for 2 h: it keeps waiting for spot
        (3_000.0, Market.SPOT, "wait for spot"),
        # behind the line: on-demand (the refusals were spot's), the give-up time
        # notwithstanding
        (1_000.0, Market.SPOT, "on-demand"),
        # behind it, its last on-demand launch refused too, every zone held
        (1_000.0, Market.ON_DEMAND, "give up"),
    ],
)
def test_give_up_after_ends_a_deadline_job_only_when_on_demand_refuses_too(
    work: float, last: Market, want: str
) -> None:
    """``give_up_after`` (1 h by default) counts from the first failed launch or wait. A
    DEADLINE job ahead of the line waits for spot by its own rule (and goes to on-demand when
    the line says so): that is no reason to fail it, only on-demand refusing too is. Before,
    an all-zone spot stockout of an hour failed a job that was hours ahead of its line."""
    now = 7_200.0
    job = _job(
        deadline=20_000.0,
        expected=5_000.0,
        work=work,
        failed_launches=40,
        first_failure_at=now - 7_000.0,
        give_up_after=3_600.0,
        last=Candidate("p", "r1", "r1a", "cpu-1", last, 0.1, 0.1),
        last_end=EndReason.LAUNCH_FAILED,
    )
    events = _all_spot_stocked_out(now - 5.0)
    d = next_placement(job, catalog=CATALOG, history=events, now=now)
    if want == "wait for spot":
        assert isinstance(d, Wait) and "waiting for spot" in d.reason, d
        assert d.until > now
    elif want == "on-demand":
        assert isinstance(d, Relaunch) and d.candidate.market is Market.ON_DEMAND, d
    else:
        assert isinstance(d, GiveUp) and "every on-demand zone refusing too" in d.reason, d
    # a job of another strategy gives up at that time whatever it waits for
    eager = next_placement(
        dataclasses.replace(job, strategy=RecoveryStrategy.EAGER_NEXT_REGION),
        catalog=CATALOG,
        history=events,
        now=now,
    )
    assert isinstance(eager, GiveUp), eager


def test_without_a_deadline_it_behaves_as_eager_next_region() -> None:
    last = Candidate("p", "r1", "r1a", "cpu-1", Market.SPOT, 0.1, 0.1)
    for kw in ({"deadline": None}, {"expected": None}):
        d = next_placement(
            _job(last=last, last_end=EndReason.PREEMPTED, **kw),
            catalog=CATALOG,
            history=[],
            now=100.0,
        )
        assert isinstance(d, Relaunch)
        assert (d.candidate.zone, d.candidate.market) == ("r2a", Market.SPOT)


# -- a running spot attempt ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "work", "switch"),
    [
        (1_000, 1_000, False),  # 5000 s of slack
        (8_900, 4_000, False),  # slack 100: after a switch 40 >= 30 margin
        (8_920, 4_000, True),  # slack 80: after a switch 20 < 30 margin
        (8_940, 4_000, True),  # slack 60: a switch still just makes it
        (8_950, 4_000, False),  # slack 50: a switch would miss the deadline anyway
        (9_000, 5_000, False),  # no work left
    ],
)
def test_should_switch_to_ondemand(now: float, work: float, switch: bool) -> None:
    assert should_switch_to_ondemand(_job(work=work), now=now) is switch


@pytest.mark.parametrize(
    "kw",
    [
        {"strategy": RecoveryStrategy.EAGER_NEXT_REGION},
        {"strategy": RecoveryStrategy.FAILOVER},
        {"deadline": None},
        {"expected": None},
    ],
)
def test_only_deadline_jobs_with_a_deadline_ever_switch(kw: dict[str, Any]) -> None:
    assert should_switch_to_ondemand(_job(work=4_000, **kw), now=8_920) is False


@pytest.mark.parametrize("slack", [130.0, 150.0, 151.0, 200.0, 1_000.0])
def test_a_spot_launch_is_not_switched_right_after_it_starts(slack: float) -> None:
    """No flapping: if a launch picks spot, the attempt survives its own restart overhead."""
    now, work = 1_000.0, 1_000.0
    deadline = now + (5_000.0 - work) + slack
    job = _job(deadline=deadline, work=work)
    d = next_placement(job, catalog=CATALOG, history=[], now=now)
    assert isinstance(d, Relaunch)
    if d.candidate.market is Market.SPOT:
        assert not should_switch_to_ondemand(job, now=now + job.restart_overhead)


# -- a running on-demand attempt: back to spot --------------------------------------------


@pytest.mark.parametrize(
    ("now", "work", "history_at", "from_checkpoints", "back"),
    [
        # the docstring's walk: at t=2200, 1040 s of 5000 done, the line asks 1100
        (2_200, 1_040, None, True, True),  # trailing by one restart: the launch rule's line
        (2_200, 1_039, None, True, False),  # by more: on-demand until it catches up
        (2_320, 1_160, None, True, True),  # on the line
        (2_320, 1_160, None, False, False),  # wall-time progress: leaving could lose work
        (2_320, 1_160, 2_300.0, True, False),  # every spot zone refused 20 s ago
        (2_320, 1_160, 1_000.0, True, True),  # ... long ago: worth a try
        (9_000, 4_900, None, True, False),  # 100 s left: not worth two restarts
        (5_000, 4_000, None, True, True),  # far ahead, plenty of slack
        (9_850, 4_900, None, True, False),  # ahead, but slack 50 - 120 < 30 margin
    ],
)
def test_should_return_to_spot(
    now: float, work: float, history_at: float | None, from_checkpoints: bool, back: bool
) -> None:
    job = _job(work=work, progress_from_checkpoints=from_checkpoints)
    history = [] if history_at is None else _all_spot_stocked_out(history_at)
    assert should_return_to_spot(job, catalog=CATALOG, history=history, now=now) is back


@pytest.mark.parametrize(
    "kw",
    [
        {"strategy": RecoveryStrategy.EAGER_NEXT_REGION},
        {"strategy": RecoveryStrategy.FAILOVER},
        {"deadline": None},
        {"expected": None},
    ],
)
def test_only_deadline_jobs_return_to_spot(kw: dict[str, Any]) -> None:
    job = _job(work=4_000, progress_from_checkpoints=True, **kw)
    assert should_return_to_spot(job, catalog=CATALOG, history=[], now=5_000) is False


@pytest.mark.parametrize("work", [1_100.0, 1_160.0, 1_500.0, 3_000.0])
def test_a_return_to_spot_is_placed_on_spot(work: float) -> None:
    """No flapping: a job the return rule sends back is placed on spot, and that spot
    attempt is not switched to on-demand once its restart is paid."""
    job = _job(work=work, progress_from_checkpoints=True)
    assert should_return_to_spot(job, catalog=CATALOG, history=[], now=2_320)
    d = next_placement(job, catalog=CATALOG, history=[], now=2_320)
    assert isinstance(d, Relaunch) and d.candidate.market is Market.SPOT
    assert not should_switch_to_ondemand(job, now=2_320 + job.restart_overhead)


_ON_DEMAND_R1A = Candidate("p", "r1", "r1a", "cpu-1", Market.ON_DEMAND, 1.1, 1.1)


@pytest.mark.parametrize(
    ("now", "work", "refused", "zone"),
    [
        (2_200, 1_040, (), "r1a"),  # the docstring's walk: the cheapest spot zone
        (2_200, 1_040, ("r1a",), "r1b"),  # r1a refused a moment ago: the next pick
        (2_200, 1_040, ("r1a", "r1b", "r2a", "r2b", "r3a", "r3b"), None),  # all held: none
        (9_850, 4_900, (), None),  # the slack is gone: on-demand, so no spot to try
    ],
)
def test_return_placement_is_the_spot_zone_to_try_beside_on_demand(
    now: float, work: float, refused: tuple[str, ...], zone: str | None
) -> None:
    """Make before break: the spot placement a return launches beside the on-demand attempt
    (the zone of that attempt does not count as preempted), or None when there is none."""
    job = _job(work=work, progress_from_checkpoints=True)
    history = [ev(LAUNCH_FAILED, z, now - 5) for z in refused]
    c = return_placement(job, here=_ON_DEMAND_R1A, catalog=CATALOG, history=history, now=now)
    assert (None if c is None else c.zone) == zone
    assert c is None or c.market is Market.SPOT


@pytest.mark.parametrize(
    ("last_market", "placed"), [(Market.SPOT, True), (Market.ON_DEMAND, False)]
)
def test_spot_refusals_do_not_keep_a_late_job_off_on_demand(
    last_market: Market, placed: bool
) -> None:
    """Every zone refused a launch 5 s ago (within the hold, which blocks on-demand there
    too). If the refusal was spot's, on-demand is tried anyway; if on-demand itself was just
    refused, the job waits (no loop of refused on-demand launches)."""
    last = Candidate("p", "r1", "r1a", "cpu-1", last_market, 0.1, 0.1)
    job = _job(work=1_900, last=last, last_end=EndReason.LAUNCH_FAILED, failed_launches=6)
    d = next_placement(job, catalog=CATALOG, history=_all_spot_stocked_out(3_995.0), now=4_000)
    if placed:
        assert isinstance(d, Relaunch), d
        assert d.candidate.market is Market.ON_DEMAND
        assert "despite the spot refusals" in d.reason
    else:
        assert isinstance(d, Wait), d
