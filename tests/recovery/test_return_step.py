"""The step a look takes about a return to spot (``returns.step``): decide, wait for a newer
checkpoint, try, stand through a hold, or call it off."""

from __future__ import annotations

import math

import pytest

from spotd.recovery.returns import Step, step


@pytest.mark.parametrize(
    ("holds", "holds_but_zones", "mark", "at", "want"),
    [
        # (the rule now, the rule without the zone history, the decided mark, the newest sync)
        (False, False, None, 100.0, Step.NONE),
        (False, True, None, 100.0, Step.NONE),  # not decided: a hold decides nothing
        (True, False, None, 100.0, Step.DECIDE),
        (True, False, None, None, Step.DECIDE),  # no checkpoint yet: decided at -inf
        (True, False, 100.0, 100.0, Step.WAIT),  # the checkpoint it was decided at
        (True, False, 100.0, None, Step.WAIT),
        (True, False, 100.0, 160.0, Step.TRY),  # a fresh one
        (True, False, -math.inf, 10.0, Step.TRY),
        (False, True, 100.0, 160.0, Step.HOLD),  # every zone held: it stands
        (False, False, 100.0, 160.0, Step.CALL_OFF),  # behind the line, or spot gone
    ],
)
def test_the_return_step(
    holds: bool, holds_but_zones: bool, mark: float | None, at: float | None, want: Step
) -> None:
    assert step(holds=holds, holds_but_zones=holds_but_zones, mark=mark, at=at) is want
