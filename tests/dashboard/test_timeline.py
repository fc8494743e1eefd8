"""A job's timeline from its attempts: bands per lane, and the markers of each preemption."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spotd.dashboard.timeline import timeline
from spotd.store import AttemptRow, InstanceRow
from spotd.types import AttemptStatus, EndReason, Market

A1 = AttemptRow(
    id="j1-a1", job_id=1, attempt=1, status=AttemptStatus.ENDED, provider="aws",
    region="us-east-1", zone="us-east-1a", instance_type="g5", market=Market.SPOT,
    price_per_hour=1.0, num_nodes=1, created_at=0.0, started_at=60.0, ended_at=1800.0,
    end_reason=EndReason.PREEMPTED, end_detail="spot interruption notice",
)  # fmt: skip
A2 = replace(
    A1, id="j1-a2", attempt=2, status=AttemptStatus.RUNNING, zone="us-east-1b",
    created_at=1801.0, started_at=1840.0, ended_at=None, end_reason=None, end_detail="",
)  # fmt: skip
NODE = InstanceRow(
    key="k", attempt_id="j1-a1", job_id=1, node_rank=0, provider="aws", instance_id="i-1",
    region="us-east-1", zone="us-east-1a", state="running", token="t", created_at=0.0,
    last_heartbeat_at=None, phase=None, exit_code=None, notice_deadline=1920.0, log_offset=0,
    terminated=False, terminated_at=None,
)  # fmt: skip


@pytest.mark.parametrize(
    ("attempts", "instances", "markers", "lanes"),
    [
        # the docstring's story: a notice, a replacement in the next zone, resumed
        (
            [A1, A2],
            [NODE],
            [("notice", 1800.0), ("detected", 1800.0), ("replacement", 1801.0),
             ("resumed", 1840.0)],
            ["aws/us-east-1a · spot", "aws/us-east-1b · spot"],
        ),
        # lost without a notice, replacement not running yet
        (
            [replace(A1, end_detail="instance gone"), replace(A2, started_at=None)],
            [],
            [("detected", 1800.0), ("replacement", 1801.0)],
            ["aws/us-east-1a · spot", "aws/us-east-1b · spot"],
        ),
        # an attempt that ended for another reason is no preemption
        ([replace(A1, end_reason=EndReason.SUCCEEDED)], [], [], ["aws/us-east-1a · spot"]),
        ([], [], [], []),
    ],
)  # fmt: skip
def test_markers_and_lanes(attempts, instances, markers, lanes) -> None:
    tl = timeline(attempts, instances, now=2000.0)
    assert [(m.kind, m.at) for m in tl.markers] == markers
    assert list(tl.lanes) == lanes


def test_bands_preemptions_and_positions() -> None:
    tl = timeline([A1, A2], [NODE], now=2000.0)
    first, second = tl.bands
    assert (first.start, first.end, first.live, first.outcome) == (0.0, 1800.0, False, "PREEMPTED")
    assert (second.end, second.live) == (2000.0, True)  # still running: drawn up to now
    (p,) = tl.preemptions
    assert (p.notice, p.ran_seconds, p.down_seconds) == (True, 1740.0, 40.0)
    assert "reclaim 120s later" in tl.markers[0].label
    assert (tl.pct(0.0), tl.pct(1000.0), tl.pct(2000.0)) == (0.0, 50.0, 100.0)
    assert [p for p, _ in tl.ticks(3)] == [0.0, 50.0, 100.0]
