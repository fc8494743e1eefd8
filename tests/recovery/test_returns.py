"""When a DEADLINE job on on-demand tries spot again after refused returns
(``spotd.recovery.returns``): the rows are the module docstring's rules and its scenario."""

from __future__ import annotations

import pytest

from spotd.recovery.returns import EARLY_SECONDS, Refused, after_refusal, beside, due


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
