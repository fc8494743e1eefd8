"""DEADLINE on the real single-node and preemption traces: every deadline met, at a cost no
higher than Can't Be Late's Uniform Progress in the same runs.

The setup is ``spotctl simulate jobs``'s default (the paper's: a 48 h job due in 52 h, 0.2 h
restarts, a checkpoint every 10 minutes of progress, 10 seeded submission times), except on
the two-day GCP trace (a 24 h job due in 26 h) and the 4-node trace (4 nodes). Uniform
Progress is the artifact's, with its exact knowledge of spot availability
(``spotd.sim.cant_be_late``); spotd's DEADLINE learns availability by launching.

Slow (a few seconds per folder): ``pytest -m slow tests/simulate/test_jobs_traces.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spotd.sim.jobs import JobResult, JobSetup, simulate_jobs
from spotd.sim.traces import load_trace_dir

ROOT = Path(__file__).resolve().parents[2] / "traces"

CASES: list[Any] = [
    # the case that needed DEADLINE to price a preempted zone for an hour (0.6463 -> 0.6302,
    # Uniform Progress 0.6428): docs/simulate.md, "Jobs: DEADLINE"
    pytest.param("preemption/1-node/aws-04-22-2023", None, {}),
    pytest.param("preemption/1-node/aws-04-19-2023", None, {}),
    pytest.param(
        "preemption/1-node/gcp-04-30-2023", None, {"job_hours": 24.0, "deadline_hours": 26.0}
    ),
    pytest.param("preemption/4-node/aws-08-03-2023", None, {"num_nodes": 4}),
    pytest.param("availability/1-node/aws-10-26-2022", "v100_1", {}),
    pytest.param("availability/1-node/aws-10-26-2022", "k80_1", {}),
]


def _run(folder: str, shape: str | None, setup: dict[str, Any]) -> dict[str, JobResult]:
    traces = load_trace_dir(ROOT / folder, shape=shape)
    policies = ["deadline", "uniform-progress", "greedy", "on-demand"]
    return {r.policy: r for r in simulate_jobs(traces, JobSetup(**setup), policies)}


@pytest.mark.slow
@pytest.mark.parametrize(("folder", "shape", "setup"), [c.values for c in CASES])
def test_deadline_meets_every_deadline(
    folder: str, shape: str | None, setup: dict[str, Any]
) -> None:
    by = _run(folder, shape, setup)
    assert by["on-demand"].deadline_misses == 0  # every deadline can be met
    assert by["deadline"].deadline_misses == 0
    assert by["deadline"].cost < by["on-demand"].cost


@pytest.mark.slow
@pytest.mark.parametrize(("folder", "shape", "setup"), CASES)
def test_deadline_costs_no_more_than_uniform_progress(
    folder: str, shape: str | None, setup: dict[str, Any]
) -> None:
    by = _run(folder, shape, setup)
    assert by["deadline"].cost <= by["uniform-progress"].cost, (
        by["deadline"].cost_vs_ondemand,
        by["uniform-progress"].cost_vs_ondemand,
    )
