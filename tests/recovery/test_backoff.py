"""Nothing available: wait with exponential backoff and jitter, give up after give_up_after."""

from __future__ import annotations

import pytest

from spotd.recovery.strategies import (
    GiveUp,
    JobView,
    Relaunch,
    Wait,
    backoff_seconds,
    next_placement,
)
from spotd.types import Candidate, EndReason, Market, RecoveryStrategy
from tests.recovery.helpers import LAUNCH_FAILED, ev, req, three_regions

CATALOG = three_regions()
ZONES = ("r1a", "r1b", "r2a", "r2b", "r3a", "r3b")


@pytest.mark.parametrize(
    ("failed_launches", "jitter", "seconds"),
    [
        (0, 0.0, 0.5),  # base 1 s, never below half of it
        (0, 0.5, 0.75),
        (1, 0.0, 1.0),
        (3, 0.5, 6.0),
        (5, 0.0, 16.0),
        (6, 0.0, 30.0),  # 64 s capped to 60, half of it
        (6, 1.0, 60.0),  # jitter is clamped to [0, 1]
        (10_000, 0.5, 45.0),  # no overflow
        (-3, 0.0, 0.5),  # nonsense counts as none
        (2, -1.0, 2.0),
    ],
)
def test_backoff_seconds(failed_launches: int, jitter: float, seconds: float) -> None:
    assert backoff_seconds(failed_launches, jitter) == pytest.approx(seconds)


@pytest.mark.parametrize("jitter", [0.0, 0.3, 0.999])
def test_backoff_grows_then_stays_at_the_cap(jitter: float) -> None:
    values = [backoff_seconds(n, jitter, base=2.0, cap=30.0) for n in range(12)]
    assert values == sorted(values)
    assert all(15.0 <= v <= 30.0 for v in values[4:])


def _job(failed: int, first_failure_at: float | None, give_up_after: float = 600.0) -> JobView:
    return JobView(
        strategy=RecoveryStrategy.EAGER_NEXT_REGION,
        request=req(use_spot=True),
        num_nodes=1,
        submitted_at=0.0,
        last=Candidate("p", "r3", "r3b", "cpu-1", Market.SPOT, 0.3, 0.3),
        last_end=EndReason.LAUNCH_FAILED,
        failed_launches=failed,
        first_failure_at=first_failure_at,
        give_up_after=give_up_after,
    )


def _stocked_out(at: float) -> list:
    return [ev(LAUNCH_FAILED, z, at) for z in ZONES]


@pytest.mark.parametrize(
    ("now", "first_failure_at", "give_up_after", "expected"),
    [
        # every zone is blocked: wait out the backoff for 6 failures (jitter 0.5: 45 s)
        (110.0, 100.0, 600.0, ("wait", 110.0 + 45.0)),
        # the wait never runs past the give-up time
        (110.0, 100.0, 30.0, ("wait", 130.0)),
        # past the give-up time: give up
        (130.0, 100.0, 30.0, ("give up", None)),
        (500.0, 100.0, 30.0, ("give up", None)),
        # no failed launch on record (every zone blocked by preemptions): wait, never give up
        (10_000.0, None, 30.0, ("wait", 10_000.0 + 45.0)),
    ],
)
def test_wait_or_give_up_when_every_zone_is_blocked(
    now: float,
    first_failure_at: float | None,
    give_up_after: float,
    expected: tuple[str, float | None],
) -> None:
    history = _stocked_out(now - 1.0)
    d = next_placement(
        _job(6, first_failure_at, give_up_after),
        catalog=CATALOG,
        history=history,
        now=now,
        jitter=0.5,
    )
    kind, until = expected
    if kind == "wait":
        assert isinstance(d, Wait), d
        assert d.until == pytest.approx(until)
        assert "every feasible zone is blocked" in d.reason and "p/r1/r1a" in d.reason
    else:
        assert isinstance(d, GiveUp), d
        assert "giving up after 30s" in d.reason and "6 failed launch(es)" in d.reason


def test_give_up_applies_even_if_a_zone_looks_available_again() -> None:
    d = next_placement(_job(9, 100.0, 30.0), catalog=CATALOG, history=[], now=131.0)
    assert isinstance(d, GiveUp)


def test_blocked_zones_come_back_after_the_hold() -> None:
    d = next_placement(_job(6, 100.0), catalog=CATALOG, history=_stocked_out(100.0), now=131.0)
    assert isinstance(d, Relaunch), d
    # all equally penalised: the cheapest again, but not the zone that just failed
    assert d.candidate.zone == "r1a"


def test_jitter_spreads_jobs_that_failed_together() -> None:
    history = _stocked_out(100.0)
    untils = {
        next_placement(_job(4, 100.0), catalog=CATALOG, history=history, now=101.0, jitter=j).until  # type: ignore[union-attr]
        for j in (0.0, 0.25, 0.5, 0.75)
    }
    assert len(untils) == 4
    assert all(101.0 + 8.0 <= u <= 101.0 + 16.0 for u in untils)
