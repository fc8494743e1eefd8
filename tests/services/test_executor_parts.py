"""Small parts of the service executor: listing changes, launch back-off, the log appender."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.control.logs import append_log
from spotd.control.observer import Observation, changed_keys
from spotd.control.replica_launch import LaunchBackoff
from spotd.providers.base import ObservedInstance
from spotd.types import InstanceId, InstanceState, Market


def listing(**states: InstanceState) -> Observation:
    return Observation(
        started_at=1.0,
        instances={
            k: ObservedInstance(id=InstanceId(k), key=k, region="r", zone="z", state=st)
            for k, st in states.items()
        },
    )


R, P = InstanceState.RUNNING, InstanceState.PREEMPTED


@pytest.mark.parametrize(
    ("before", "after", "want"),
    [
        (listing(), listing(a=R), {"a"}),  # appeared
        (listing(a=R), listing(a=R), set()),  # unchanged
        (listing(a=R), listing(a=P), {"a"}),  # changed state
        (listing(a=R, b=R), listing(b=R), {"a"}),  # gone
    ],
)
def test_changed_keys(before: Observation, after: Observation, want: set[str]) -> None:
    assert changed_keys(before, after) == want


def test_launch_backoff_doubles_per_market_and_clears_on_success() -> None:
    b = LaunchBackoff(2.0)
    b.refused(1, Market.SPOT, 100.0)
    b.refused(1, Market.SPOT, 100.0)
    assert b.blocked_until(1, Market.SPOT) == 104.0
    assert b.blocked_until(1, Market.ON_DEMAND) == 0.0  # the other market is not held
    for _ in range(10):
        b.refused(1, Market.SPOT, 100.0)
    assert b.blocked_until(1, Market.SPOT) == 160.0  # capped at 60 s
    b.launched(1, Market.SPOT)
    assert b.blocked_until(1, Market.SPOT) == 0.0


@pytest.mark.parametrize(
    ("chunks", "want", "acked"),
    [
        ([(0, b"abc"), (3, b"def")], b"abcdef", 6),
        ([(0, b"abc"), (1, b"bcde")], b"abcde", 5),  # a resent overlap is written once
        ([(0, b"abc"), (5, b"xyz")], b"abc", 3),  # a gap: ask for a resend from 3
    ],
)
def test_append_log(
    tmp_path: Path, chunks: list[tuple[int, bytes]], want: bytes, acked: int
) -> None:
    path = tmp_path / "s1" / "r1.log"
    size = 0
    for offset, data in chunks:
        size = append_log(path, offset, data)
    assert (path.read_bytes(), size) == (want, acked)
