"""The zone digest: the window's history held as the few events placement reads, whose
summaries are those of every event (``spotd.recovery.history.ZoneDigest``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from spotd.recovery.history import (
    ZoneDigest,
    ZoneEvent,
    preemption_risk,
    region_penalties,
    zone_penalties,
)
from spotd.types import ZoneEventKind
from tests.recovery.helpers import LAUNCH_FAILED, LAUNCHED, PREEMPTED, RAN, ev

NOW = 100_000.0
HOUR = 3600.0


def summaries(events: Sequence[ZoneEvent], now: float) -> dict[str, Any]:
    return {
        "spot": zone_penalties(events, now),
        "ondemand": zone_penalties(events, now, kinds={ZoneEventKind.LAUNCH_FAILED}),
        "regions": region_penalties(events, now),
        "risk": preemption_risk(events, now),
    }


def digest_of(events: Sequence[ZoneEvent], since: float | None = None) -> ZoneDigest:
    d = ZoneDigest()
    for order, e in enumerate(events):
        d.add(e, order=order)
    if since is not None:
        d.drop_before(since)
    return d


def same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].keys() == want[k].keys(), k
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


@pytest.mark.parametrize(
    ("events", "since"),
    [
        pytest.param([], None, id="nothing"),
        pytest.param(
            [(LAUNCH_FAILED, "r1a", NOW - 50), (LAUNCHED, "r1a", NOW - 10)], None, id="lifted"
        ),
        pytest.param(
            [(LAUNCHED, "r1a", NOW - 50), (LAUNCH_FAILED, "r1a", NOW - 10)], None, id="not-lifted"
        ),
        pytest.param(  # an older failure arriving after the launch never counts
            [(LAUNCHED, "r1a", NOW - 10), (LAUNCH_FAILED, "r1a", NOW - 50)], None, id="late-old"
        ),
        pytest.param(  # an older launch arriving after the failure lifts nothing
            [(LAUNCH_FAILED, "r1a", NOW - 10), (LAUNCHED, "r1a", NOW - 50)], None, id="late-launch"
        ),
        pytest.param(  # a failure and a preemption at one instant combine in row order
            [(LAUNCH_FAILED, "r1a", NOW - 5), (PREEMPTED, "r1a", NOW - 5)], None, id="tie-fp"
        ),
        pytest.param(
            [(PREEMPTED, "r1a", NOW - 5), (LAUNCH_FAILED, "r1a", NOW - 5)], None, id="tie-pf"
        ),
        pytest.param(
            [(RAN, "r1a", NOW - 20 * HOUR + 60 * i, 600.0 + i) for i in range(200)]
            + [(PREEMPTED, "r1a", NOW - HOUR), (PREEMPTED, "r2b", NOW - 2 * HOUR)]
            + [(RAN, "r2b", NOW - 3 * HOUR, 9000.0)],
            None,
            id="runs-folded",
        ),
        pytest.param(
            [(RAN, "r1a", NOW - 23 * HOUR + 60 * i, 600.0 + i) for i in range(400)]
            + [(PREEMPTED, "r1a", NOW - 10 * HOUR), (LAUNCH_FAILED, "r1b", NOW - 20 * HOUR)]
            + [(LAUNCHED, "r1b", NOW - 21 * HOUR), (LAUNCHED, "r2a", NOW - 16 * HOUR)],
            NOW - 18 * HOUR,
            id="window-drops",
        ),
        pytest.param(
            [(RAN, "r3a", NOW - 5 * HOUR, 60.0), (PREEMPTED, "r3a", NOW - 6 * HOUR)],
            NOW,
            id="all-dropped",
        ),
    ],
)
def test_the_digest_summarises_as_every_event_does(
    events: list[tuple[Any, ...]], since: float | None
) -> None:
    raw = [ev(*e) for e in events]
    digest = digest_of(raw, since)
    kept = sorted(
        (e for e in raw if since is None or e.at >= since),
        key=lambda e: e.at,  # stable: row order breaks ties, as the store reads them
    )
    for now in (NOW, NOW + 20, NOW + 900, NOW + 4 * HOUR):
        same(summaries(digest.events(), now), summaries(kept, now))


def test_a_random_day_of_history_read_as_it_slides() -> None:
    rng = random.Random(7)
    zones = [f"r{r}{z}" for r in (1, 2, 3) for z in "ab"]
    kinds = [LAUNCHED] * 6 + [RAN] * 3 + [PREEMPTED, LAUNCH_FAILED]
    window = 24 * HOUR
    raw: list[ZoneEvent] = []
    digest = ZoneDigest()
    t = 0.0
    for step in range(3000):
        t += rng.expovariate(1 / 120.0)
        kind = rng.choice(kinds)
        e = ev(kind, rng.choice(zones), t - rng.uniform(0, 5), rng.uniform(0, 7200))
        raw.append(e)
        digest.add(e, order=step)
        if step % 97 == 0:
            since = t - window
            digest.drop_before(since)
            kept = sorted((x for x in raw if x.at >= since), key=lambda x: x.at)
            same(summaries(digest.events(), t + 10), summaries(kept, t + 10))
    assert t > 3 * window  # the window slid past its start several times


def test_ten_thousand_launches_are_held_as_one_event_per_zone() -> None:
    zones = [f"r{r}{z}" for r in (1, 2, 3) for z in "ab"]
    digest = digest_of([ev(LAUNCHED, zones[i % 6], float(i)) for i in range(10_000)])
    assert sorted(str(e.zone.zone) for e in digest.events()) == sorted(zones)
    assert [e.at for e in digest.events()] == [9994.0, 9995.0, 9996.0, 9997.0, 9998.0, 9999.0]


def test_a_memory_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_seconds"):
        ZoneDigest(memory_seconds=0)
