"""The jobs plot's market row (``report.market_spans``); the CLI test draws the plot."""

from __future__ import annotations

import pytest

from spotd.sim.jobs import JobRun
from spotd.sim.report import market_spans
from spotd.types import Market

SPOT, OD = Market.SPOT, Market.ON_DEMAND


def _run(attempts: list[tuple[float, Market]], costs: list[float]) -> JobRun:
    """Half-hour ticks with these cumulative costs at their ends."""
    return JobRun(
        offset_seconds=0.0,
        finished_at=None,
        missed=False,
        cost=costs[-1],
        ondemand_cost=1.0,
        preemptions=0,
        launch_failures=0,
        lost_seconds=0.0,
        overhead_seconds=0.0,
        spot_seconds=0.0,
        ondemand_seconds=0.0,
        timeline=tuple((1800.0 * (i + 1), 0.0, c) for i, c in enumerate(costs)),
        attempts=tuple(attempts),
    )


@pytest.mark.parametrize(
    ("attempts", "costs", "spans"),
    [
        # spot for an hour, then on-demand
        ([(0, SPOT), (3600, OD)], [1, 2, 5, 8], [(0, 1, "spot"), (1, 2, "on-demand")]),
        # waiting (nothing billed) until spot starts at 1 h
        ([(3600, SPOT)], [0, 0, 1], [(0, 1, "idle"), (1, 1.5, "spot")]),
        # preempted after half an hour: idle while nothing is billed, whatever ran last
        ([(0, SPOT)], [1, 1, 1], [(0, 0.5, "spot"), (0.5, 1.5, "idle")]),
        # a relaunch in the same market continues the span
        ([(0, SPOT), (1800, SPOT)], [1, 2], [(0, 1, "spot")]),
        # on-demand, a restart on on-demand, then the job is done (nothing billed)
        ([(0, OD), (1800, OD)], [3, 6, 6], [(0, 1, "on-demand"), (1, 1.5, "idle")]),
    ],
)
def test_market_spans(
    attempts: list[tuple[float, Market]],
    costs: list[float],
    spans: list[tuple[float, float, str]],
) -> None:
    assert market_spans(_run(attempts, costs)) == spans
