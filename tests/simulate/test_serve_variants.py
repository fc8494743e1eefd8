"""bench/serve_variants.py: the planner's ablations still apply, and its "defaults" is the
planner the simulator runs."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from spotd.serve import hedge
from spotd.sim import serve as simserve
from spotd.sim import serve_policies
from spotd.sim.serve_model import ServeSetup
from spotd.sim.traces import load_trace_dir
from tests.simulate.bench_module import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("serve_variants")


def test_every_variants_edits_still_apply(bench: ModuleType) -> None:
    # an edit whose text the planner no longer has stops the script; this finds it first
    for name in bench.VARIANTS:
        module = bench.planner(name)
        assert callable(module.plan_replicas)
    assert bench.planner("defaults") is hedge  # no edits: the planner itself
    assert bench.planner("reset-refused-out") is not hedge


@pytest.mark.slow
def test_defaults_is_the_simulators_spotd_and_a_variant_differs(
    bench: ModuleType, tmp_path: Path
) -> None:
    """On one synthetic folder: "defaults" gives exactly ``spotctl simulate``'s spotd, a
    variant that changes the reset gives something else, and the simulator is left as it
    was (the variant's planner does not leak into later runs)."""
    folder = tmp_path / "syn"
    bench.synth_traces.write(folder, 0, 0, "lognormal")
    out = bench._run(("syn", folder, None, 0, ("defaults", "reset-refused-out")))
    spotd = simserve.run_policy("spotd", load_trace_dir(folder), ServeSetup(seed=0))
    assert out["defaults"] == [spotd.availability, spotd.cost_vs_ondemand]
    assert out["reset-refused-out"] != out["defaults"]
    assert serve_policies.hedge is hedge
    assert simserve.POLICIES["spotd"] is serve_policies.SpotdPolicy


def test_summary_counts_runs_won_as_available_and_cheaper(bench: ModuleType) -> None:
    runs = [
        {"trace": "t", "seed": s, "spothedge": [0.99, 0.50], "v": v}
        for s, v in enumerate(
            ([0.99, 0.40], [0.98, 0.40], [1.00, 0.60])  # won, cheaper only, as available only
        )
    ]
    row = bench.summarize(runs, ["v"])["v"]
    assert (row["runs"], row["won"], row["as_available"], row["cheaper"]) == (3, 1, 2, 2)
    assert row["mean_d_cost"] == pytest.approx(-0.0333, abs=1e-4)
