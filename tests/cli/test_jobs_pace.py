"""``spotctl jobs queue -v``: a DEADLINE job's PACE cell."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.cli.jobs import pace_cell


def _pace(ahead: float, slack: float, progress: float = 0.42, source: str = "checkpoint") -> Any:
    return {
        "work_done_seconds": 0.0,
        "expected_duration_seconds": 1.0,
        "progress": progress,
        "progress_from": source,
        "ahead_of_line_seconds": ahead,
        "slack_seconds": slack,
    }


@pytest.mark.parametrize(
    ("pace", "cell"),
    [
        (None, "-"),  # not a DEADLINE job
        (_pace(1080, 7500), "42% +18m 0s, slack 2h 5m"),
        (_pace(-300, 60), "42% -5m 0s, slack 1m 0s"),
        (_pace(0, 0, progress=1.0), "100% +0s, slack 0s"),
        (_pace(-4000, -600), "42% -1h 6m, late by 10m 0s"),
        (_pace(30, 900, source="wall time"), "42% +30s, slack 15m 0s (wall time)"),
    ],
)
def test_pace_cell(pace: dict[str, Any] | None, cell: str) -> None:
    assert pace_cell(pace) == cell
