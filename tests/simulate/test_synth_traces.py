"""``bench/synth_traces.py``: the synthetic trace folders that ``bench/policies.py
--synthetic`` runs the policies on. A family is reproducible from its seed, loads as a trace
folder with the regions it drew, and its up periods have the median and the hazard shape the
model states (the scale of the Weibull is derived from the median, so it is checked)."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from spotd.sim.traces import load_trace_dir
from tests.simulate.bench_module import load_bench


@pytest.fixture(scope="module")
def synth() -> ModuleType:
    return load_bench("synth_traces")


def test_a_folder_is_reproducible_and_loads_with_the_regions_it_drew(
    synth: ModuleType, tmp_path: Path
) -> None:
    p = synth.write(tmp_path / "a", 3, 7)
    q = synth.write(tmp_path / "b", 3, 7)
    assert p == q
    files = sorted(f.name for f in (tmp_path / "a").glob("*.json"))
    assert files == sorted(f.name for f in (tmp_path / "b").glob("*.json"))
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    traces = load_trace_dir(tmp_path / "a")
    assert len(traces) == sum(p.regions) and 2 <= len(traces) <= 5
    assert len({t.zone.region for t in traces}) == len(p.regions)
    points = int(synth.DAYS * 86400 / synth.GAP_SECONDS)
    assert all(len(t.data) == points and max(t.data) <= p.cap_max for t in traces)
    # the other hazard draws the same folder but for the up periods
    w = synth.write(tmp_path / "w", 3, 7, "weibull")
    assert replace(w, hazard="lognormal") == p


@pytest.mark.parametrize("hazard", ["lognormal", "weibull"])
def test_up_periods_have_the_stated_median(synth: ModuleType, hazard: str) -> None:
    rng = random.Random(1)
    p = synth.draw_params(random.Random(2), hazard, 0.5)
    draws = [synth._up_periods(rng, p, 600.0) for _ in range(4000)]
    assert statistics.median(draws) == pytest.approx(600.0, rel=0.08)


def test_a_weibull_shape_below_one_makes_early_losses_likelier(synth: ModuleType) -> None:
    """What the repository's traces show (the chance of a loss falls the longer capacity has
    been up): with shape 0.5, more up periods than the log-normal's end within a tenth of the
    median, and more outlast ten medians."""
    rng = random.Random(3)
    lognormal = synth.draw_params(random.Random(4), "lognormal", 0.5)
    weibull = replace(lognormal, hazard="weibull")

    def share(p: object, test: Callable[[int], bool]) -> float:
        draws = [synth._up_periods(rng, p, 600.0) for _ in range(4000)]
        return sum(1 for d in draws if test(d)) / len(draws)

    assert share(weibull, lambda d: d <= 60) > 2 * share(lognormal, lambda d: d <= 60)
    assert share(weibull, lambda d: d >= 6000) > 2 * share(lognormal, lambda d: d >= 6000)
    assert math.isclose(weibull.weibull_shape, 0.5)
