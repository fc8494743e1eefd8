"""Zone history: blocking penalties that decay, region penalties, learned preemption risk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from spotd.recovery.history import (
    ZoneEvent,
    preemption_risk,
    region_penalties,
    zone_penalties,
)
from spotd.types import ZoneEventKind, ZoneKey
from tests.recovery.helpers import LAUNCH_FAILED, LAUNCHED, PREEMPTED, RAN, ev, zk

NOW = 10_000.0


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], {}),
        # blocked for the 30 s hold, then halving every 600 s; a preemption never fully
        # blocks (at most 0.95: expensive, not impossible), a stockout does
        ([(PREEMPTED, "r1a", NOW)], {"r1a": 0.95}),
        ([(LAUNCH_FAILED, "r1a", NOW - 29)], {"r1a": 1.0}),
        ([(PREEMPTED, "r1a", NOW - 630)], {"r1a": 0.5}),
        ([(PREEMPTED, "r1a", NOW - 1230)], {"r1a": 0.25}),
        # two independent events: 1 - (1 - 0.5)(1 - 0.5)
        ([(PREEMPTED, "r1a", NOW - 630), (LAUNCH_FAILED, "r1a", NOW - 630)], {"r1a": 0.75}),
        # zones are independent
        ([(PREEMPTED, "r1a", NOW), (LAUNCH_FAILED, "r2b", NOW - 630)], {"r1a": 0.95, "r2b": 0.5}),
        # a later successful launch lifts a stockout ...
        ([(LAUNCH_FAILED, "r1a", NOW - 5), (LAUNCHED, "r1a", NOW - 1)], {}),
        # ... but not one that came after it
        ([(LAUNCHED, "r1a", NOW - 5), (LAUNCH_FAILED, "r1a", NOW - 1)], {"r1a": 1.0}),
        # ... and not a preemption
        ([(PREEMPTED, "r1a", NOW - 5), (LAUNCHED, "r1a", NOW - 1)], {"r1a": 0.95}),
        # launches and runs never block
        ([(LAUNCHED, "r1a", NOW), (RAN, "r1a", NOW, 60.0)], {}),
        # events from the future (clock skew) count as now
        ([(LAUNCH_FAILED, "r1a", NOW + 50)], {"r1a": 1.0}),
    ],
)
def test_zone_penalties(events: list[tuple[Any, ...]], expected: dict[str, float]) -> None:
    got = zone_penalties([ev(*e) for e in events], NOW)
    assert got == pytest.approx({zk(z): p for z, p in expected.items()})


def test_zone_penalties_can_count_only_stockouts() -> None:
    events = [ev(PREEMPTED, "r1a", NOW), ev(LAUNCH_FAILED, "r2a", NOW)]
    got = zone_penalties(events, NOW, kinds={ZoneEventKind.LAUNCH_FAILED})
    assert got == {zk("r2a"): 1.0}


def test_zone_penalties_parameters() -> None:
    got = zone_penalties(
        [ev(PREEMPTED, "r1a", NOW - 100)], NOW, half_life_seconds=100, hold_seconds=0
    )
    assert got == pytest.approx({zk("r1a"): 0.5})


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([(PREEMPTED, "r1a", NOW)], {"r1": 0.9}),  # capped: ranked down, never excluded
        ([(PREEMPTED, "r1a", NOW - 600)], {"r1": 0.5}),
        ([(PREEMPTED, "r1a", NOW - 600), (PREEMPTED, "r1b", NOW - 600)], {"r1": 0.75}),
        ([(LAUNCH_FAILED, "r1a", NOW)], {}),  # stockouts are per zone
        ([(PREEMPTED, "r1a", NOW - 100_000)], {}),  # fully decayed
    ],
)
def test_region_penalties(events: list[tuple[Any, ...]], expected: dict[str, float]) -> None:
    got = region_penalties([ev(*e) for e in events], NOW)
    assert got == pytest.approx({("p", r): v for r, v in expected.items()})


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], None),
        # one fresh preemption, no survival data: ((1 + 1) / 8 - 1 / 8) * 0.25 h
        ([(PREEMPTED, "r1a", NOW)], 0.03125),
        ([(PREEMPTED, "r1a", NOW)] * 3, 0.09375),
        # six hours old: counts half
        ([(PREEMPTED, "r1a", NOW - 6 * 3600)], 0.015625),
        # one preemption in ten hours survived: below the prior rate, no extra cost
        ([(PREEMPTED, "r1a", NOW), (RAN, "r1a", NOW, 10 * 3600.0)], None),
        # survival without preemptions: nothing to add
        ([(RAN, "r1a", NOW, 3600.0)], None),
        ([(LAUNCH_FAILED, "r1a", NOW)], None),
    ],
)
def test_preemption_risk(events: list[tuple[Any, ...]], expected: float | None) -> None:
    got = preemption_risk([ev(*e) for e in events], NOW)
    if expected is None:
        assert zk("r1a") not in got
    else:
        assert got[zk("r1a")] == pytest.approx(expected)


def test_more_preemptions_mean_more_risk() -> None:
    risks = [
        preemption_risk([ev(PREEMPTED, "r1a", NOW)] * n, NOW).get(zk("r1a"), 0.0) for n in range(6)
    ]
    assert risks == sorted(risks) and risks[0] == 0.0 and risks[-1] > risks[1]


@dataclass
class _Row:
    provider: str
    region: str
    zone: str
    kind: str
    at: float
    detail: str


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            _Row("local", "e", "e-a", "PREEMPTED", 5.0, "notice"),
            ZoneEvent(ZoneKey("local", "e", "e-a"), ZoneEventKind.PREEMPTED, 5.0, detail="notice"),
        ),
        (  # the table keeps a failed launch's first spelling
            _Row("local", "e", "e-a", "STOCKOUT", 5.0, "CapacityError"),
            ZoneEvent(
                ZoneKey("local", "e", "e-a"),
                ZoneEventKind.LAUNCH_FAILED,
                5.0,
                detail="CapacityError",
            ),
        ),
        (
            _Row("local", "e", "e-a", "LAUNCHED", 5.0, "spot"),
            ZoneEvent(ZoneKey("local", "e", "e-a"), ZoneEventKind.LAUNCHED, 5.0, detail="spot"),
        ),
        (
            _Row("local", "e", "e-a", "RAN", 5.0, "3600 spot"),
            ZoneEvent(ZoneKey("local", "e", "e-a"), ZoneEventKind.RAN, 5.0, 3600.0, "3600 spot"),
        ),
        (
            _Row("local", "e", "e-a", "RAN", 5.0, "12.5s"),
            ZoneEvent(ZoneKey("local", "e", "e-a"), ZoneEventKind.RAN, 5.0, 12.5, "12.5s"),
        ),
        (
            _Row("local", "e", "e-a", "RAN", 5.0, "garbage"),
            ZoneEvent(ZoneKey("local", "e", "e-a"), ZoneEventKind.RAN, 5.0, 0.0, "garbage"),
        ),
    ],
)
def test_from_row(row: _Row, expected: ZoneEvent) -> None:
    assert ZoneEvent.from_row(row) == expected


def test_from_row_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError):
        ZoneEvent.from_row(_Row("local", "e", "e-a", "EXPLODED", 5.0, ""))
