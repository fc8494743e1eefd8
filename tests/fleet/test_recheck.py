"""When a healthy attempt's worker looks again with no news (``spotd.control.recheck``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from spotd.control.observer import Observation
from spotd.control.recheck import WATCH_CEILING, recheck_in
from spotd.recovery.detection import DetectionTimeouts
from spotd.store import InstanceRow

TIMEOUTS = DetectionTimeouts(suspect_after=30, lost_after=120, listing_grace=30, boot_timeout=600)
NOW = 10_000.0
COVERING = Observation(started_at=NOW)  # began after every node below was created


@dataclass
class Node:
    """The fields of an InstanceRow the rule reads."""

    instance_id: str | None
    created_at: float
    last_heartbeat_at: float | None


def at(*nodes: Node, listing: Observation = COVERING, market_due: float | None = None) -> float:
    rows: list[InstanceRow] = nodes  # type: ignore[assignment]
    return recheck_in(rows, listing, now=NOW, timeouts=TIMEOUTS, floor=0.5, market_due=market_due)


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        # heartbeat 2 s ago: suspect at 30 s, so 28 s from now
        ((Node("i-1", NOW - 100, NOW - 2),), 28.01),
        # two nodes: the one that reported longest ago decides
        ((Node("i-1", NOW - 100, NOW - 2), Node("i-2", NOW - 100, NOW - 20)), 10.01),
        # suspect already (40 s silent): lost at 120 s, capped at the ceiling
        ((Node("i-1", NOW - 100, NOW - 40),), WATCH_CEILING),
        # 100 s silent: lost in 20 s
        ((Node("i-1", NOW - 200, NOW - 100),), 20.01),
        # never reported, 5 s old: the listing grace ends in 25 s
        ((Node("i-1", NOW - 5, None),), 25.01),
        # not launched yet: every observe interval
        ((Node(None, NOW - 5, None),), 0.5),
        # past every threshold (lost): nothing more can change by time alone
        ((Node("i-1", NOW - 1000, NOW - 500),), WATCH_CEILING),
    ],
)
def test_a_healthy_attempt_sleeps_until_silence_could_change_its_verdict(
    nodes: tuple[Node, ...], expected: float
) -> None:
    assert at(*nodes) == pytest.approx(expected)


def test_a_node_no_listing_covers_yet_is_looked_at_every_interval() -> None:
    fresh = Node("i-1", NOW - 0.2, NOW - 0.1)
    assert at(fresh, listing=Observation(started_at=NOW - 1)) == 0.5


@pytest.mark.parametrize(
    ("market_due", "expected"),
    [
        (None, 28.01),  # no market rule: the heartbeat's silence decides
        (3600.0, 28.01),  # a DEADLINE switch hours away: the same
        (5.0, 5.01),  # a switch that could be due in 5 s: then
        (0.0, 0.5),  # due now (the slack at its margin): every interval
    ],
)
def test_a_deadline_job_is_looked_at_when_its_market_move_could_be_due(
    market_due: float | None, expected: float
) -> None:
    assert at(Node("i-1", NOW - 100, NOW - 2), market_due=market_due) == pytest.approx(expected)
