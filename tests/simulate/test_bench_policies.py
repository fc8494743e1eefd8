"""``bench/policies.py``: what counts as a run won, and the per-trace summary (table-driven).

The benchmark's claims ("won N of M runs") rest on these two rules, so they are pinned here;
the simulations it runs are covered by the other tests of this folder."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from tests.simulate.bench_module import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("policies")


@pytest.mark.parametrize(
    ("trace", "ours", "reference", "won"),
    [
        # serve: (availability, cost) — at least as available and strictly cheaper
        ("AWS1", (0.9953, 0.471), (0.9927, 0.514), True),
        ("AWS1", (0.9927, 0.471), (0.9927, 0.514), True),  # equal availability counts
        ("aws-04-22", (0.9823, 0.491), (0.9846, 0.591), False),  # cheaper, less available
        ("k80_8", (0.9850, 0.8258), (0.9850, 0.8258), False),  # same cost is not cheaper
        # jobs: (cost, misses) — no miss and a cost no higher
        ("jobs: v100_1", (0.5618, 0.0), (0.5811, 0.0), True),
        ("jobs: v100_1", (0.5811, 0.0), (0.5811, 0.0), True),  # no higher: equal is fine
        ("jobs: 4-node", (0.4663, 0.0), (0.4383, 0.0), False),
        ("jobs: aws-04-19", (0.30, 1.0), (0.41, 0.0), False),  # cheaper but a deadline missed
    ],
)
def test_a_run_is_won(
    bench: ModuleType,
    trace: str,
    ours: tuple[float, float],
    reference: tuple[float, float],
    won: bool,
) -> None:
    assert bench.Run(trace, 0, ours, reference).won is won


@pytest.mark.parametrize(
    ("noticed", "met"),
    [
        ((0.9992, 0.475), True),
        ((0.9989, 0.475), False),  # below 0.999
        ((0.9995, 0.520), False),  # not below SpotHedge's cost without notices (0.514)
    ],
)
def test_the_notice_target(bench: ModuleType, noticed: tuple[float, float], met: bool) -> None:
    run = bench.Run("AWS1", 0, (0.9953, 0.471), (0.9927, 0.514), noticed)
    assert run.notice_met is met


def test_summary_counts_per_trace_and_lists_the_runs_lost(bench: ModuleType) -> None:
    runs = [
        bench.Run("A", 0, (0.99, 0.40), (0.98, 0.50)),
        bench.Run("A", 1, (0.97, 0.40), (0.98, 0.50)),
        bench.Run("B", 0, (1.0, 0.30), (1.0, 0.45), (1.0, 0.31)),
    ]
    a, b = bench.summarize(runs)
    assert (a["trace"], a["runs"], a["won"]) == ("A", 2, 1)
    assert a["ours_mean"] == [0.98, 0.4] and a["reference_mean"] == [0.98, 0.5]
    assert a["lost"] == [{"seed": 1, "ours": [0.97, 0.40], "reference": [0.98, 0.50]}]
    assert "notice_met" not in a
    assert (b["won"], b["notice_met"], b["notice_availability"]) == (1, 1, [1.0])


def test_a_synthetic_jobs_run_with_its_own_deadline(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--synthetic 1 --job 12:13``: one drawn folder, a 12 h job due in 13 h, one run of
    DEADLINE against Uniform Progress, both sides' numbers in the JSON."""
    assert (
        bench.main(
            [
                "--synthetic",
                "1",
                "--seeds",
                "0:1",
                "--part",
                "jobs",
                "--job",
                "12:13",
                "--json",
                "--processes",
                "1",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    [row] = out["traces"]
    assert row["trace"] == "jobs: synthetic lognormal 0/000" and row["runs"] == 1
    assert out["total"]["runs"] == 1
    cost, misses = row["ours_mean"]
    assert 0.0 < cost <= 1.2 and misses in (0.0, 1.0)
