"""When a DEADLINE job on on-demand tries spot again after refused returns
(``spotd.recovery.returns``): the rows are the module docstring's rules and its scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.config import ConfigError, load_settings
from spotd.recovery.returns import EARLY_SECONDS, Refused, after_refusal, backoff, beside, due


@pytest.mark.parametrize(
    ("refused", "attempt", "checkpoint", "expected"),
    [
        (None, 1, 0.0, True),  # nothing refused yet
        (Refused(1, 1, 1000.0), 1, 1001.0, True),  # one refused round: the next checkpoint
        (Refused(1, 2, 1000.0), 1, 1599.0, True),  # two: 600 s, a checkpoint 1 s early counts
        (Refused(1, 2, 1000.0), 1, 1600.0 - EARLY_SECONDS, True),
        (Refused(1, 2, 1000.0), 1, 1600.0 - EARLY_SECONDS - 1, False),  # too early
        (Refused(1, 3, 1000.0), 1, 2190.0, True),  # three: 1200 s
        (Refused(1, 3, 1000.0), 1, 1600.0, False),
        (Refused(1, 9, 1000.0), 1, 4600.0, True),  # the cap: an hour
        (Refused(1, 9, 1000.0), 1, 4000.0, False),
        (Refused(1, 9, 1000.0), 2, 1001.0, True),  # beside another on-demand attempt: at once
    ],
)
def test_due(refused: Refused | None, attempt: int, checkpoint: float, expected: bool) -> None:
    assert due(refused, attempt, checkpoint) is expected


@pytest.mark.parametrize(
    ("rounds", "base", "cap", "wait"),
    [
        (2, 80.0, 80.0, 80.0),
        (5, 80.0, 80.0, 80.0),
        (3, 60.0, 200.0, 120.0),
        (4, 60.0, 200.0, 200.0),
        (2, 20.0, 20.0, 20.0),  # due 10 s early at most, not 30
    ],
)
def test_the_daemon_sets_the_back_off(rounds: int, base: float, cap: float, wait: float) -> None:
    """``return_backoff_seconds`` and its cap replace 10 min and 1 h; ``due`` waits as long."""
    assert backoff(rounds, base=base, cap=cap) == wait
    last = Refused(1, rounds, 1000.0)
    early = min(EARLY_SECONDS, wait / 2)  # a short back-off is not lost in the tolerance
    assert due(last, 1, 1000.0 + wait - early, base=base, cap=cap)
    assert not due(last, 1, 999.0 + wait - early, base=base, cap=cap)


def test_the_back_off_is_configured(tmp_path: Path) -> None:
    env = {"SPOTD_RETURN_BACKOFF_SECONDS": "60", "SPOTD_RETURN_BACKOFF_CAP_SECONDS": "300"}
    s = load_settings(tmp_path, env=env)
    assert (s.return_backoff_seconds, s.return_backoff_cap_seconds) == (60.0, 300.0)
    default = load_settings(tmp_path, env={})
    assert (default.return_backoff_seconds, default.return_backoff_cap_seconds) == (600, 3600)
    with pytest.raises(ConfigError, match="at least return_backoff_seconds"):
        load_settings(tmp_path, env={"SPOTD_RETURN_BACKOFF_SECONDS": "7200"})
    with pytest.raises(ConfigError, match="0 or more"):
        load_settings(tmp_path, env={"SPOTD_RETURN_BACKOFF_SECONDS": "-1"})


def test_the_zone_hold_is_configured(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={}).zone_hold_seconds == 30.0
    assert load_settings(tmp_path, env={"SPOTD_ZONE_HOLD_SECONDS": "2"}).zone_hold_seconds == 2.0
    with pytest.raises(ConfigError, match="0 or more"):
        load_settings(tmp_path, env={"SPOTD_ZONE_HOLD_SECONDS": "-5"})
    with pytest.raises(ConfigError, match="a day"):
        load_settings(tmp_path, env={"SPOTD_ZONE_HOLD_SECONDS": "90000"})


@pytest.mark.parametrize(
    ("refused", "attempt", "expected"),
    [
        (None, 1, Refused(1, 1, 50.0)),
        (Refused(1, 1, 10.0), 1, Refused(1, 2, 50.0)),
        (Refused(1, 4, 10.0), 2, Refused(2, 1, 50.0)),  # a new on-demand attempt starts over
    ],
)
def test_after_refusal(refused: Refused | None, attempt: int, expected: Refused) -> None:
    assert after_refusal(refused, attempt, 50.0) == expected


def test_a_days_stockout_with_ten_minute_checkpoints_is_27_rounds() -> None:
    """The docstring's scenario: rounds at 0, 10, 20, 40, 80 and 140 min, then hourly."""
    refused: Refused | None = None
    rounds = []
    for minute in range(0, 24 * 60, 10):
        if due(refused, 1, minute * 60.0):
            rounds.append(minute)
            refused = after_refusal(refused, 1, minute * 60.0)
    assert rounds[:7] == [0, 10, 20, 40, 80, 140, 200]
    assert len(rounds) == 27


@pytest.mark.parametrize(
    ("refused", "attempt", "expected"),
    [
        (None, 1, None),
        (Refused(1, 3, 10.0), 1, Refused(1, 3, 10.0)),
        (Refused(1, 3, 10.0), 2, None),  # counted beside another on-demand attempt
    ],
)
def test_beside(refused: Refused | None, attempt: int, expected: Refused | None) -> None:
    assert beside(refused, attempt) == expected
