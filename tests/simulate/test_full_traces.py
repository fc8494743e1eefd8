"""The traces in the repository, in full: the SpotHedge reproduction and the jobs table.

Slow (tens of seconds on a shared 2-core machine): ``pytest -m slow tests/simulate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from spotd.cli.main import main
from spotd.sim.jobs import JobSetup, simulate_jobs
from spotd.sim.serve import POLICY_NAMES, ServeSetup, run_policy, simulate_serve
from spotd.sim.traces import load_trace_dir

ROOT = Path(__file__).resolve().parents[2] / "traces"
SERVING = ROOT / "availability" / "serving"
JOBS = ROOT / "preemption" / "1-node" / "aws-04-22-2023"

# the artifact's own numbers (availability, cost vs on-demand), from the issue
PAPER = {
    ("AWS1", "spothedge"): (0.992, 0.514),
    ("AWS2", "spothedge"): (0.976, 0.573),
    ("AWS1", "round-robin"): (0.880, 0.300),
    ("AWS2", "round-robin"): (0.774, 0.270),
}
ILP = {"AWS1": 0.407, "AWS2": 0.480}


@pytest.mark.slow
@pytest.mark.parametrize(("trace", "policy"), list(PAPER))
def test_reproduces_the_spothedge_artifact(trace: str, policy: str) -> None:
    r = run_policy(policy, load_trace_dir(SERVING / trace), ServeSetup())
    availability, cost = PAPER[(trace, policy)]
    # the artifact prints three decimals: agreeing to them is within 0.0005 plus rounding
    assert r.availability == pytest.approx(availability, abs=0.002)
    assert r.cost_vs_ondemand == pytest.approx(cost, abs=0.002)


@pytest.mark.slow
@pytest.mark.parametrize("trace", ["AWS1", "AWS2"])
def test_omniscient_bound_is_below_the_artifacts_ilp(trace: str) -> None:
    traces = load_trace_dir(SERVING / trace)
    bound = run_policy("omniscient", traces, ServeSetup())
    assert bound.cost_vs_ondemand <= ILP[trace]
    assert bound.cost_vs_ondemand >= ILP[trace] - 0.05  # and not uselessly loose
    for name in ("spotd", "spothedge"):
        assert run_policy(name, traces, ServeSetup()).cost_vs_ondemand > bound.cost_vs_ondemand


@pytest.mark.slow
@pytest.mark.parametrize("trace", ["AWS1", "AWS2"])
def test_notices_as_the_lb_counts_them(trace: str) -> None:
    traces = load_trace_dir(SERVING / trace)
    by = {r.policy: r for r in simulate_serve(traces, ServeSetup(), list(POLICY_NAMES[:4]))}
    for name in ("spotd", "spothedge"):
        noticed = by[f"{name}+notice"]
        # a notice lets the replacement start earlier and the noticed replica serves until it
        # is READY; but a lead under the cold start (+ the reaction and the handoff), and the
        # notices that never come, leave gaps: better than no notice, not the perfect 1.0 of
        # the simulator before issue #16
        assert by[name].availability < noticed.availability < 1.0
    # the same executor behind both: spotd's planner is at least as available with notices
    assert by["spotd+notice"].availability >= by["spothedge+notice"].availability


@pytest.mark.slow
@pytest.mark.parametrize("trace", ["AWS1", "AWS2"])
def test_shaky_zone_cover_buys_availability(trace: str) -> None:
    traces = load_trace_dir(SERVING / trace)
    on = run_policy("spotd", traces, ServeSetup())
    off = run_policy("spotd", traces, ServeSetup(shaky_zone_seconds=0))
    assert on.availability > off.availability
    assert on.cost_vs_ondemand < off.cost_vs_ondemand + 0.02


@pytest.mark.slow
@pytest.mark.parametrize("trace", ["AWS1", "AWS2"])
def test_calm_mode_saves_the_overprovision_while_nothing_is_preempted(trace: str) -> None:
    traces = load_trace_dir(SERVING / trace)
    calm = run_policy("spotd", traces, ServeSetup())
    always = run_policy("spotd", traces, ServeSetup(calm_seconds=0))
    assert calm.cost_vs_ondemand < always.cost_vs_ondemand - 0.02
    assert calm.availability > always.availability - 0.001


@pytest.mark.slow
@pytest.mark.parametrize(
    "folder",
    [SERVING / "AWS1", SERVING / "AWS2", ROOT / "preemption" / "1-node" / "aws-04-19-2023"],
    ids=["AWS1", "AWS2", "aws-04-19-2023"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_spotd_beats_spothedge(folder: Path, seed: int) -> None:
    # more available and cheaper, on two sets of windows; docs/simulate.md has every trace
    # (not on all: preemption/1-node/aws-04-22-2023 is the exception)
    traces = load_trace_dir(folder)
    setup = ServeSetup(seed=seed)
    by = {r.policy: r for r in simulate_serve(traces, setup, ["spotd", "spothedge"])}
    assert by["spotd"].availability >= by["spothedge"].availability
    assert by["spotd"].cost_vs_ondemand < by["spothedge"].cost_vs_ondemand


@pytest.mark.slow
def test_jobs_on_the_v100_trace() -> None:
    setup = JobSetup(windows=4)
    by = {r.policy: r for r in simulate_jobs(load_trace_dir(JOBS), setup)}
    assert by["on-demand"].deadline_misses == 0
    assert by["deadline"].deadline_misses == 0  # on-demand meets every one of these
    assert by["omniscient"].cost <= by["deadline"].cost <= by["on-demand"].cost
    assert by["eager-next-region"].cost < by["on-demand"].cost


@pytest.mark.slow
def test_cli_json_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "serve.png"
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            "serve",
            "--trace",
            str(SERVING / "AWS1"),
            "--windows",
            "1",
            "--window-ticks",
            "600",
            "--policy",
            "spotd",
            "--policy",
            "spotd+notice",
            "--policy",
            "on-demand",
            "-o",
            "json",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[: result.output.rindex("]") + 1])
    assert [r["policy"] for r in rows] == ["spotd", "spotd+notice", "on-demand"]
    assert {"policy", "cost", "cost_vs_ondemand", "availability"} <= rows[0].keys()
    assert rows[2]["cost_vs_ondemand"] == 1.0
    assert png.stat().st_size > 10_000
