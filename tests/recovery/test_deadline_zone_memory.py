"""DEADLINE prices a zone that lost an instance for an hour; other strategies for ten minutes.

Capacity that was just reclaimed is the likeliest to be reclaimed again (docs/simulate.md,
"Jobs: DEADLINE"), and a cost-driven job pays for every preemption with lost work and a
restart. Whether a zone is *held* (just preempted or refused, so that a job behind the line
goes to on-demand rather than take a risk there) still reads the ten-minute memory.
"""

from __future__ import annotations

import pytest

from spotd.recovery.history import ZoneEvent
from spotd.recovery.strategies import JobView, Relaunch, next_placement
from spotd.types import Market, RecoveryStrategy
from tests.recovery.helpers import LAUNCH_FAILED, PREEMPTED, entry, ev, req

# one region, two zones: a is cheaper, b 50% dearer
CATALOG = [
    entry("r1", "r1a", spot=0.10, ondemand=1.0),
    entry("r1", "r1b", spot=0.15, ondemand=1.0),
]
NOW = 20_000.0


def _job(strategy: RecoveryStrategy, *, work: float = 0.0, now: float = NOW) -> JobView:
    # a 5000 s job due at 10000 s after submission (the line: 0.5 s of work per second)
    return JobView(
        strategy=strategy,
        request=req(use_spot=True),
        num_nodes=1,
        submitted_at=now - 4_000.0,
        deadline=now + 6_000.0,
        expected_duration=5_000.0,
        work_done=work,
        restart_overhead=60.0,
        safety_margin=30.0,
    )


@pytest.mark.parametrize(
    ("strategy", "history", "zone"),
    [
        # a preempted 20 min ago: for DEADLINE it still costs 5x (b wins), for EAGER 1.35x
        (RecoveryStrategy.DEADLINE, [ev(PREEMPTED, "r1a", NOW - 1_200)], "r1b"),
        (RecoveryStrategy.EAGER_NEXT_REGION, [ev(PREEMPTED, "r1a", NOW - 1_200)], "r1a"),
        # two hours on, a is the cheaper again for DEADLINE too
        (RecoveryStrategy.DEADLINE, [ev(PREEMPTED, "r1a", NOW - 7_200)], "r1a"),
        # a refused launch is priced with the short memory alone: 20 min on, a again
        (RecoveryStrategy.DEADLINE, [ev(LAUNCH_FAILED, "r1a", NOW - 1_200)], "r1a"),
        # nothing happened: the cheapest
        (RecoveryStrategy.DEADLINE, [], "r1a"),
    ],
)
def test_a_preempted_zone_is_priced_for_longer_by_deadline(
    strategy: RecoveryStrategy, history: list[ZoneEvent], zone: str
) -> None:
    d = next_placement(_job(strategy, work=2_000.0), catalog=CATALOG, history=history, now=NOW)
    assert isinstance(d, Relaunch)
    assert (d.candidate.market, d.candidate.zone) == (Market.SPOT, zone), d.reason


def test_behind_the_line_the_job_still_takes_a_risk_on_a_zone_preempted_minutes_ago() -> None:
    # b refused a launch just now; a lost an instance 5 minutes ago: a costs a lot, but it is
    # not held (the hour-long memory prices zones, it does not block them), so a job behind
    # the line tries spot in a rather than go to on-demand
    history = [ev(PREEMPTED, "r1a", NOW - 300), ev(LAUNCH_FAILED, "r1b", NOW - 5)]
    d = next_placement(
        _job(RecoveryStrategy.DEADLINE, work=1_900.0), catalog=CATALOG, history=history, now=NOW
    )
    assert isinstance(d, Relaunch)
    assert (d.candidate.market, d.candidate.zone) == (Market.SPOT, "r1a"), d.reason
    # and once a is held too (preempted moments ago), on-demand
    history = [ev(PREEMPTED, "r1a", NOW - 5), ev(LAUNCH_FAILED, "r1b", NOW - 5)]
    d = next_placement(
        _job(RecoveryStrategy.DEADLINE, work=1_900.0), catalog=CATALOG, history=history, now=NOW
    )
    assert isinstance(d, Relaunch)
    assert d.candidate.market is Market.ON_DEMAND, d.reason
