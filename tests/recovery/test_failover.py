"""FAILOVER: the same zone, then the same region, then the other regions by cost."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.recovery.strategies import JobView, Relaunch, next_placement
from spotd.types import Candidate, EndReason, Market, RecoveryStrategy
from tests.recovery.helpers import LAUNCH_FAILED, PREEMPTED, ev, req, three_regions

CATALOG = three_regions()
NOW = 1000.0


def _job(last: str | None, end: EndReason | None) -> JobView:
    return JobView(
        strategy=RecoveryStrategy.FAILOVER,
        request=req(use_spot=True),
        num_nodes=1,
        submitted_at=0.0,
        last=Candidate("p", last[:-1], last, "cpu-1", Market.SPOT, 0.2, 0.2) if last else None,
        last_end=end,
    )


@pytest.mark.parametrize(
    ("last", "end", "history", "expected", "reason"),
    [
        # first launch: the cheapest
        (None, None, [], "r1a", "cheapest"),
        # preempted, and the zone is blocked right after: another zone of the same region
        ("r2a", EndReason.PREEMPTED, [(PREEMPTED, "r2a", NOW)], "r2b", "another zone of r2"),
        # no record of trouble in the zone: the same zone again
        ("r2a", EndReason.PREEMPTED, [], "r2a", "the same zone"),
        # the block has partly decayed: still the same zone first, although r1a is cheaper
        ("r2a", EndReason.PREEMPTED, [(PREEMPTED, "r2a", NOW - 700)], "r2a", "the same zone"),
        # the whole region refuses launches: the cheapest other region
        (
            "r2a",
            EndReason.LAUNCH_FAILED,
            [(LAUNCH_FAILED, "r2a", NOW), (LAUNCH_FAILED, "r2b", NOW)],
            "r1a",
            "cheapest other region",
        ),
        (
            "r3b",
            EndReason.LAUNCH_FAILED,
            [(LAUNCH_FAILED, "r3b", NOW)],
            "r3a",
            "another zone of r3",
        ),
        # a user failure restarts in place
        ("r3b", EndReason.USER_FAILED, [], "r3b", "the same zone"),
    ],
)
def test_failover_order(
    last: str | None,
    end: EndReason | None,
    history: list[tuple[Any, str, float]],
    expected: str,
    reason: str,
) -> None:
    d = next_placement(_job(last, end), catalog=CATALOG, history=[ev(*h) for h in history], now=NOW)
    assert isinstance(d, Relaunch), d
    assert d.candidate.zone == expected
    assert reason in d.reason


def test_other_regions_follow_in_cost_order() -> None:
    history = [ev(LAUNCH_FAILED, "r3a", NOW), ev(LAUNCH_FAILED, "r3b", NOW)]
    d = next_placement(
        _job("r3a", EndReason.LAUNCH_FAILED), catalog=CATALOG, history=history, now=NOW
    )
    assert isinstance(d, Relaunch)
    assert [d.candidate.zone, *(c.zone for c in d.runner_ups)] == ["r1a", "r1b", "r2a", "r2b"]
