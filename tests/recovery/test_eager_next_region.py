"""EAGER_NEXT_REGION: after a preemption the zone *and* its region are skipped."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.recovery.history import ZoneEvent
from spotd.recovery.strategies import GiveUp, JobView, Relaunch, Wait, next_placement
from spotd.types import Candidate, EndReason, Market, RecoveryStrategy
from tests.recovery.helpers import (
    LAUNCH_FAILED,
    LAUNCHED,
    PREEMPTED,
    entry,
    ev,
    req,
    three_regions,
)

CATALOG = three_regions()


def _cand(zone: str, market: Market = Market.SPOT) -> Candidate:
    return Candidate("p", zone[:-1], zone, "cpu-1", market, 0.1, 0.1)


def _job(last: str | None = None, end: EndReason | None = None, **kw: Any) -> JobView:
    return JobView(
        strategy=RecoveryStrategy.EAGER_NEXT_REGION,
        request=req(use_spot=True),
        num_nodes=1,
        submitted_at=0.0,
        last=_cand(last) if last else None,
        last_end=end,
        **kw,
    )


def _place(job: JobView, history: list[ZoneEvent], now: float, catalog: Any = CATALOG) -> Relaunch:
    d = next_placement(job, catalog=catalog, history=history, now=now)
    assert isinstance(d, Relaunch), d
    return d


# The module docstring's sequence: (time, zone preempted, where the job goes next).
SEQUENCE = [
    (0.0, "r1a", "r2a"),
    (300.0, "r2a", "r3a"),
    (2400.0, "r3a", "r1b"),
    (2700.0, "r1b", "r2b"),
]


@pytest.mark.parametrize("step", range(len(SEQUENCE)), ids=[f"{z}->{n}" for _, z, n in SEQUENCE])
def test_docstring_sequence(step: int) -> None:
    history = [ev(PREEMPTED, zone, t) for t, zone, _ in SEQUENCE[: step + 1]]
    now, zone, expected = SEQUENCE[step]
    d = _place(_job(zone, EndReason.PREEMPTED), history, now)
    assert d.candidate.zone == expected
    assert d.candidate.region != zone[:-1]


def test_first_placement_is_the_cheapest() -> None:
    d = _place(_job(), [], 0.0)
    assert (d.candidate.zone, d.candidate.market) == ("r1a", Market.SPOT)


@pytest.mark.parametrize("end", [EndReason.PREEMPTED, EndReason.LOST, EndReason.INFRA_FAILED])
def test_the_region_is_left_even_without_any_history(end: EndReason) -> None:
    """The block is the strategy's own rule, not a side effect of the zone history
    (SkyPilot's EAGER_NEXT_REGION never blocks the region: their issue #10021)."""
    d = _place(_job("r1a", end), [], 10.0)
    assert d.candidate.zone == "r2a"


@pytest.mark.parametrize(
    ("catalog_zones", "history", "expected", "reason"),
    [
        # nothing outside r1: another zone of r1 first
        (["r1a", "r1b"], [], "r1b", "another zone"),
        # r2 exists but is stocked out right now: still r1b before r1a
        (["r1a", "r1b", "r2a"], [(LAUNCH_FAILED, "r2a", 99.0)], "r1b", "another zone"),
        # only the preempted zone itself is left, and its block has decayed
        (["r1a"], [(PREEMPTED, "r1a", -3600.0)], "r1a", "back to r1/r1a"),
    ],
)
def test_falls_back_to_the_preempted_region_only_when_nothing_else_exists(
    catalog_zones: list[str], history: list[tuple[Any, str, float]], expected: str, reason: str
) -> None:
    catalog = [e for e in CATALOG if e.zone in catalog_zones]
    d = _place(_job("r1a", EndReason.PREEMPTED), [ev(*h) for h in history], 100.0, catalog)
    assert d.candidate.zone == expected
    assert reason in d.reason


def test_retries_the_only_zone_after_a_preemption_and_waits_only_after_a_refusal() -> None:
    """A preemption makes a zone expensive, not impossible: with nothing else, try it again
    (a launch is the cheapest probe of capacity); a refused launch does block it."""
    catalog = [e for e in CATALOG if e.zone == "r1a"]
    d = next_placement(
        _job("r1a", EndReason.PREEMPTED),
        catalog=catalog,
        history=[ev(PREEMPTED, "r1a", 100.0)],
        now=101.0,
    )
    assert isinstance(d, Relaunch) and d.candidate.zone == "r1a"
    assert "just preempted" in d.reason
    d = next_placement(
        _job("r1a", EndReason.LAUNCH_FAILED, failed_launches=1, first_failure_at=102.0),
        catalog=catalog,
        history=[ev(PREEMPTED, "r1a", 100.0), ev(LAUNCH_FAILED, "r1a", 102.0)],
        now=103.0,
    )
    assert isinstance(d, Wait)


def test_a_failed_launch_after_a_preemption_does_not_go_back() -> None:
    """r1a preempted, r2a refuses the launch: next is r2b, not r1b (which is cheaper)."""
    history = [ev(PREEMPTED, "r1a", 100.0), ev(LAUNCH_FAILED, "r2a", 101.0)]
    d = _place(
        _job("r2a", EndReason.LAUNCH_FAILED, failed_launches=1, first_failure_at=101.0),
        history,
        102.0,
    )
    assert d.candidate.zone == "r2b"
    history.append(ev(LAUNCH_FAILED, "r2b", 102.0))
    d = _place(
        _job("r2b", EndReason.LAUNCH_FAILED, failed_launches=2, first_failure_at=101.0),
        history,
        103.0,
    )
    assert d.candidate.zone == "r3a"


def test_a_failed_launch_skips_only_the_zone() -> None:
    d = _place(
        _job("r1a", EndReason.LAUNCH_FAILED, failed_launches=1, first_failure_at=5.0),
        [ev(LAUNCH_FAILED, "r1a", 5.0)],
        6.0,
    )
    assert d.candidate.zone == "r1b"


def test_a_failed_launch_retries_the_zone_when_nothing_else_exists() -> None:
    catalog = [e for e in CATALOG if e.zone == "r1a"]
    d = _place(
        _job("r1a", EndReason.LAUNCH_FAILED, failed_launches=1, first_failure_at=5.0),
        [ev(LAUNCH_FAILED, "r1a", 5.0)],
        60.0,
        catalog,
    )
    assert d.candidate.zone == "r1a" and "retrying" in d.reason


def test_a_user_failure_restarts_at_the_cheapest_placement() -> None:
    d = _place(_job("r1a", EndReason.USER_FAILED), [], 10.0)
    assert d.candidate.zone == "r1a"


def test_another_jobs_recent_preemption_ranks_the_region_down() -> None:
    d = _place(_job(), [ev(PREEMPTED, "r1a", 90.0)], 100.0)
    assert d.candidate.zone == "r2a"
    # an hour later the region is back to nearly its list price
    d = _place(_job(), [ev(PREEMPTED, "r1a", 90.0)], 3690.0)
    assert d.candidate.region == "r1"
    assert d.candidate.expected_cost < 1.1 * d.candidate.price_per_hour


def test_a_successful_launch_lifts_a_stockout() -> None:
    history = [ev(LAUNCH_FAILED, "r1a", 100.0), ev(LAUNCHED, "r1a", 101.0)]
    assert _place(_job(), history, 102.0).candidate.zone == "r1a"


def test_runner_ups_follow_the_same_order_without_the_choice() -> None:
    d = _place(_job("r1a", EndReason.PREEMPTED), [ev(PREEMPTED, "r1a", 0.0)], 0.0)
    assert d.candidate.zone == "r2a"
    assert [c.zone for c in d.runner_ups][:4] == ["r2b", "r3a", "r3b", "r1b"]
    assert d.candidate not in d.runner_ups


def test_never_feasible_request_gives_up_at_once() -> None:
    job = JobView(
        strategy=RecoveryStrategy.EAGER_NEXT_REGION,
        request=req(accelerator="A100", accelerator_count=16, use_spot=True),
        num_nodes=1,
        submitted_at=0.0,
    )
    d = next_placement(
        job,
        catalog=[*CATALOG, entry("r1", "r1a", "g", accelerator="A100", accelerator_count=8)],
        history=[],
        now=0.0,
    )
    assert isinstance(d, GiveUp)
    assert "no instance type offers A100:16; largest A100 count is 8 (g)" in d.reason
