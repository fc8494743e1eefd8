"""spotd's serving planner with one rule changed, against SpotHedge (an ablation).

Each variant is the planner (``spotd.serve.hedge``) with a small edit to its source, a
changed setup, or calm mode's threshold backing off; it is run as ``spotd`` is run by
``bench/policies.py`` (one *run* = one trace, one seed's windows; SpotHedge measured in the same
run) and summed over runs: won (at least as available and cheaper), at least as available,
cheaper, and the mean differences to SpotHedge. docs/simulate.md ("Tenth round", "Twelfth
round") has what each variant is for and what it gave.

  python bench/serve_variants.py --family repo --seeds 0:10 [--variant NAME ...]
  python bench/serve_variants.py --family lognormal|weibull --folders 20 --seeds 0:1

``--list`` names the variants. An edit that no longer applies (the planner changed since)
stops the run with the text it looked for. About 3 minutes per variant for the repository's
traces and ten seeds on 2 cores, 45 s for twenty synthetic folders and one seed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import types
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spotd.serve import hedge
from spotd.sim import serve as simserve
from spotd.sim import serve_policies
from spotd.sim.serve_model import ServeSetup, SimEventKind, TickView
from spotd.sim.traces import load_trace_dir
from spotd.types import Market, ZoneKey

sys.path.append(str(Path(__file__).resolve().parent))  # bench/ goes last: it shadows nothing
import policies as bench_policies
import synth_traces

_RESET = """    if bad and not good:
        notes.append(f"reset bad zones {_names(bad)}: no good zone left")
        bad, good = frozenset(), ranked
"""
_RESET_TO = """    if bad and not good:
        notes.append(f"reset bad zones {_names(bad)}: no good zone left")
        bad, good = frozenset(), _variant_reset(ranked, zone_history, now)
"""
_SPARE = """            gap = max(0, spot_needed + cushion - serving)
            cover = max(0, spot_needed + cushion - (serving - shaky)) - gap
"""
# the spare's on-demand only while no spot replica is on its way to replace it (this step's
# launches count unless a spot launch was refused in the last minute)
_SPARE_TO = """            full_gap = max(0, spot_needed + cushion - serving)
            refused = any(
                e.market is Market.SPOT
                and e.kind is ZoneEventKind.LAUNCH_FAILED
                and now - 60 <= e.at <= now
                for e in zone_history
            )
            coming = sum(1 for r in spot if r.id not in retired) + (0 if refused else len(launch))
            spare_gap = min(cushion, max(0, spot_needed + cushion - coming))
            gap = min(full_gap, max(0, spot_needed - serving) + spare_gap)
            cover = max(0, spot_needed + cushion - (serving - shaky)) - full_gap
"""
_TAIL = "def _names(zones: Iterable[ZoneKey]) -> str:\n"
_LATEST = """def _variant_latest(zone_history, now):
    latest = {}
    for e in sorted(zone_history, key=lambda e: e.at):
        if e.market is Market.SPOT and e.at <= now and e.kind in PLANNER_KINDS:
            latest[e.zone] = e
    return latest


"""
# after a reset: zones whose latest loss is a refused launch left out unless all refused,
# the rest by their latest loss, oldest first
_RESET_OUT = """def _variant_reset(ranked, zone_history, now):
    latest = _variant_latest(zone_history, now)
    lost = [z for z in ranked if latest[z].kind is not ZoneEventKind.LAUNCH_FAILED] or ranked
    return sorted(lost, key=lambda z: latest[z].at)


"""
# after a reset: every zone, by its latest loss, oldest first
_RESET_OLDEST = """def _variant_reset(ranked, zone_history, now):
    latest = _variant_latest(zone_history, now)
    return sorted(ranked, key=lambda z: latest[z].at)


"""
# after a reset: every zone in the usual order, those that refused last at the end (the
# oldest refusal first)
_RESET_REFUSED_LAST = """def _variant_reset(ranked, zone_history, now):
    latest = _variant_latest(zone_history, now)
    def refused(z):
        e = latest[z]
        return (1, e.at) if e.kind is ZoneEventKind.LAUNCH_FAILED else (0, 0.0)
    return sorted(ranked, key=refused)


"""


def _reset(body: str) -> list[tuple[str, str]]:
    return [(_RESET, _RESET_TO), (_TAIL, _LATEST + body + _TAIL)]


@dataclass(frozen=True)
class Variant:
    about: str
    edits: tuple[tuple[str, str], ...] = ()
    setup: dict[str, Any] = field(default_factory=dict)
    calm_backoff: float | None = None  # calm's threshold x this per calm stretch that ended


NEVER = {"calm_seconds": 1e12}
VARIANTS: dict[str, Variant] = {
    "defaults": Variant("the planner as it is"),
    "never-calm": Variant("no calm mode (the spare always)", setup=NEVER),
    "never-calm-no-shaky": Variant(
        "no calm mode and no shaky-zone cover", setup={**NEVER, "shaky_zone_seconds": 0.0}
    ),
    "reset-refused-out": Variant(
        "a reset leaves out zones that refused last, oldest loss first", tuple(_reset(_RESET_OUT))
    ),
    "reset-oldest-first": Variant(
        "a reset orders zones by their latest loss, oldest first", tuple(_reset(_RESET_OLDEST))
    ),
    "reset-refused-last": Variant(
        "a reset puts zones that refused last at the end", tuple(_reset(_RESET_REFUSED_LAST))
    ),
    "spare-on-its-way": Variant(
        "no on-demand for the spare while its spot replacement starts", ((_SPARE, _SPARE_TO),)
    ),
    "reset-refused-out+spare": Variant("both", (*_reset(_RESET_OUT), (_SPARE, _SPARE_TO))),
    "reset-refused-last+spare": Variant(
        "both", (*_reset(_RESET_REFUSED_LAST), (_SPARE, _SPARE_TO))
    ),
    "never-calm+reset-refused-out+spare": Variant(
        "all three", (*_reset(_RESET_OUT), (_SPARE, _SPARE_TO)), setup=NEVER
    ),
    "calm-backoff-x2": Variant(
        "calm's 2 h doubles for each calm stretch a preemption ended in the last 24 h",
        calm_backoff=2.0,
    ),
    "calm-backoff-x4": Variant("the same, x4", calm_backoff=4.0),
    "no-shaky-calm-6h": Variant(
        "no shaky-zone cover, calm after 6 h (not 2 h)",
        setup={"shaky_zone_seconds": 0.0, "calm_seconds": 21600.0},
    ),
    "no-shaky-calm-backoff-x2": Variant(
        "no shaky-zone cover, calm-backoff-x2", setup={"shaky_zone_seconds": 0.0}, calm_backoff=2.0
    ),
}

_MODULES: dict[str, types.ModuleType] = {}


def planner(name: str) -> types.ModuleType:
    """``spotd.serve.hedge`` with the variant's edits, compiled once per process (the module
    itself for a variant without edits)."""
    if not VARIANTS[name].edits:
        return hedge
    if name in _MODULES:
        return _MODULES[name]
    source = Path(hedge.__file__).read_text()
    for old, new in VARIANTS[name].edits:
        if source.count(old) != 1:
            raise SystemExit(f"variant {name}: the planner no longer has\n{old}")
        source = source.replace(old, new)
    module = types.ModuleType(f"spotd.serve.hedge_variant_{len(_MODULES)}")
    sys.modules[module.__name__] = module
    exec(compile(source, f"hedge[{name}]", "exec"), module.__dict__)
    _MODULES[name] = module
    return module


class BackoffPolicy(serve_policies.SpotdPolicy):
    """spotd whose calm threshold grows by ``factor`` for every preemption in the last 24 h
    that ended a quiet stretch of at least the threshold's base (a calm stretch)."""

    factor = 2.0

    def __init__(self, zones: Sequence[ZoneKey], setup: ServeSetup, rng: random.Random) -> None:
        super().__init__(zones, setup, rng)
        self.base = setup.calm_seconds
        self.preempted: list[float] = []

    def decide(self, view: TickView) -> Any:
        for e in view.events:
            if e.market is Market.SPOT and (
                e.kind is SimEventKind.NOTICE
                or (e.kind is SimEventKind.PREEMPTED and e.replica not in self.deadlines)
            ):
                self.preempted.append(e.at)
        day = view.now - self._MEMORY_SECONDS  # the 24 h of events the daemon reads
        ends = sum(
            1
            for i, at in enumerate(self.preempted)
            if at >= day and (i == 0 or at - self.preempted[i - 1] >= self.base)
        )
        self.setup = replace(self.setup, calm_seconds=self.base * self.factor**ends)
        return super().decide(view)


def _run(args: tuple[str, Path, str | None, int, tuple[str, ...]]) -> dict[str, Any]:
    """One run: SpotHedge and each variant on one trace folder and seed."""
    name, path, shape, seed, names = args
    traces = load_trace_dir(path, shape=shape)
    base = ServeSetup(seed=seed)
    sh = simserve.run_policy("spothedge", traces, base)
    out: dict[str, Any] = {
        "trace": name,
        "seed": seed,
        "spothedge": [sh.availability, sh.cost_vs_ondemand],
    }
    planner_before, policies_before = serve_policies.hedge, simserve.POLICIES
    try:
        for v in names:
            variant = VARIANTS[v]
            serve_policies.hedge = planner(v)  # what SpotdPolicy plans with
            factory: Any = serve_policies.SpotdPolicy
            if variant.calm_backoff is not None:
                factory = type("Backoff", (BackoffPolicy,), {"factor": variant.calm_backoff})
            simserve.POLICIES = {**serve_policies.POLICIES, "spotd": factory}
            r = simserve.run_policy("spotd", traces, replace(base, **variant.setup))
            out[v] = [r.availability, r.cost_vs_ondemand]
    finally:
        serve_policies.hedge, simserve.POLICIES = planner_before, policies_before
    return out


def summarize(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    table = {}
    for v in names:
        da = [r[v][0] - r["spothedge"][0] for r in runs]
        dc = [r[v][1] - r["spothedge"][1] for r in runs]
        table[v] = {
            "runs": len(runs),
            # bench/policies.py's rule for a run won, not a second copy of it
            "won": sum(
                bench_policies.Run(r["trace"], r["seed"], tuple(r[v]), tuple(r["spothedge"])).won
                for r in runs
            ),
            "as_available": sum(a >= -1e-9 for a in da),
            "cheaper": sum(c < 0 for c in dc),
            "mean_d_availability": round(statistics.fmean(da), 4),
            "mean_d_cost": round(statistics.fmean(dc), 4),
        }
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=("repo", *synth_traces.HAZARDS), default="repo")
    p.add_argument("--folders", type=int, default=20, help="synthetic folders (default 20)")
    p.add_argument("--seeds", default="0:1", help="A:B, seeds A..B-1 (default 0:1)")
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    p.add_argument("--list", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--processes", type=int, default=2)
    a = p.parse_args(argv)
    if a.list:
        for name, v in VARIANTS.items():
            print(f"{name:38s} {v.about}")
        return 0
    names = tuple(a.variant or VARIANTS)
    lo, _, hi = a.seeds.partition(":")
    seeds = range(int(lo), int(hi) if hi else int(lo) + 1)
    with tempfile.TemporaryDirectory(prefix="spotd-synth-") as tmp:
        if a.family == "repo":
            folders = [
                (t.name, t.path, t.shape) for t in bench_policies.SERVE_TRACES if t.path.is_dir()
            ]
        else:
            folders = []
            for i in range(a.folders):
                path = Path(tmp) / f"{a.family}-{i:03d}"
                synth_traces.write(path, i, 0, a.family)
                folders.append((f"synthetic {a.family} 0/{i:03d}", path, None))
        work = [(n, path, shape, s, names) for n, path, shape in folders for s in seeds]
        with multiprocessing.Pool(a.processes) as pool:
            runs = pool.map(_run, work)
    table = summarize(runs, names)
    if a.json:
        json.dump(
            {
                "family": a.family,
                "seeds": [seeds.start, seeds.stop],
                "variants": table,
                "runs": runs,
            },
            sys.stdout,
        )
        print()
        return 0
    print(f"{a.family}, seeds {seeds.start}:{seeds.stop}, {len(runs)} runs against SpotHedge")
    for v, row in table.items():
        print(
            f"  {v:38s} won {row['won']:3d}  as available {row['as_available']:3d}  "
            f"cheaper {row['cheaper']:3d}  mean dA {row['mean_d_availability']:+.4f}  "
            f"dC {row['mean_d_cost']:+.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
