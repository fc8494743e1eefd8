"""spotd's policies against their baselines over many sets of windows (a simulation).

``spotctl simulate`` runs a policy over ``--windows`` (10) submission times drawn from
``--seed``. docs/simulate.md tables three seeds; this runs as many as asked, so a claim of
"on every trace" can be read against runs no choice looked at. Per trace and seed (one *run* =
one seed's windows, every policy seeing the same ones):

- ``serve``: ``spotd`` against ``spothedge`` (the reference, measured in the same run), the
  default setup of ``spotctl simulate serve``; a run is *won* when spotd is at least as
  available and cheaper. With ``--notice``, also ``spotd+notice`` against the target of issue
  #16: availability >= 0.999 at a cost below SpotHedge's without notices.
- ``jobs``: ``deadline`` (spotd's Uniform Progress) against Can't Be Late's
  ``uniform-progress`` (the reference), the default job of ``spotctl simulate jobs`` (48 h of
  work due in 52 h; the two-day GCP trace: 24 h due in 26 h); a run is won when no deadline
  is missed and the cost is no higher.

Output: per trace, the runs won, the means of both sides and the runs lost (seed, the two
values); ``--json`` prints the same as one object.

  python bench/policies.py [--seeds 0:10] [--part serve|jobs|both] [--notice] [--json]

``--no-return-backoff`` runs DEADLINE without the back-off on refused returns to spot
(``spotd.recovery.returns``), as it was before the eleventh round of docs/simulate.md: the
ablation that round's table compares against.

About 8 minutes for ten seeds of ``serve`` (both policies, 11 traces) on 2 cores, 12 with
``--notice``; 30 s for ``jobs``. The 16-node trace is read from
``../shared/traces`` and skipped (with a line saying so) where that folder is absent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spotd.recovery import returns
from spotd.sim import jobs as simjobs
from spotd.sim import serve as simserve
from spotd.sim.serve_model import ServeSetup
from spotd.sim.traces import load_trace_dir

# bench/ is not a package: its folder goes last on the path, so it shadows nothing
sys.path.append(str(Path(__file__).resolve().parent))
import synth_traces

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Trace:
    name: str
    path: Path
    shape: str | None = None
    job: dict[str, Any] | None = None  # JobSetup fields; None: not a jobs trace


_AVAIL = ROOT / "traces/availability"
_PRE = ROOT / "traces/preemption"
SERVE_TRACES = (
    Trace("serving/AWS1", _AVAIL / "serving/AWS1"),
    Trace("serving/AWS2", _AVAIL / "serving/AWS2"),
    Trace(
        "16-node/aws-08-27-2023", ROOT.parent / "shared/traces/availability/16-node/aws-08-27-2023"
    ),
    Trace("aws-10-26-2022 v100_1", _AVAIL / "1-node/aws-10-26-2022", "v100_1"),
    Trace("aws-10-26-2022 k80_1", _AVAIL / "1-node/aws-10-26-2022", "k80_1"),
    Trace("aws-10-26-2022 v100_8", _AVAIL / "1-node/aws-10-26-2022", "v100_8"),
    Trace("aws-10-26-2022 k80_8", _AVAIL / "1-node/aws-10-26-2022", "k80_8"),
    Trace("preemption aws-04-22-2023", _PRE / "1-node/aws-04-22-2023"),
    Trace("preemption aws-04-19-2023", _PRE / "1-node/aws-04-19-2023"),
    Trace("preemption gcp-04-30-2023", _PRE / "1-node/gcp-04-30-2023"),
    Trace("preemption 4-node aws-08-03-2023", _PRE / "4-node/aws-08-03-2023"),
)
JOB_TRACES = (
    Trace("preemption aws-04-22-2023", _PRE / "1-node/aws-04-22-2023", job={}),
    Trace("preemption aws-04-19-2023", _PRE / "1-node/aws-04-19-2023", job={}),
    Trace(
        "preemption gcp-04-30-2023 (24 h in 26 h)",
        _PRE / "1-node/gcp-04-30-2023",
        job={"job_hours": 24.0, "deadline_hours": 26.0},
    ),
    Trace("preemption 4-node aws-08-03-2023", _PRE / "4-node/aws-08-03-2023", job={"num_nodes": 4}),
    Trace("aws-10-26-2022 v100_1", _AVAIL / "1-node/aws-10-26-2022", "v100_1", job={}),
    Trace("aws-10-26-2022 k80_1", _AVAIL / "1-node/aws-10-26-2022", "k80_1", job={}),
)


@dataclass(frozen=True)
class Run:
    """One trace, one seed: ours against the reference."""

    trace: str
    seed: int
    ours: tuple[float, float]  # serve: (availability, cost); jobs: (cost, misses)
    reference: tuple[float, float]
    noticed: tuple[float, float] | None = None  # serve --notice: spotd+notice

    @property
    def won(self) -> bool:
        if self.trace.startswith("jobs:"):
            return self.ours[1] == 0 and self.ours[0] <= self.reference[0] + 1e-9
        return self.ours[0] >= self.reference[0] - 1e-9 and self.ours[1] < self.reference[1]

    @property
    def notice_met(self) -> bool:
        return self.noticed is not None and (
            self.noticed[0] >= 0.999 and self.noticed[1] < self.reference[1]
        )


def _serve(args: tuple[Trace, int, bool]) -> Run:
    trace, seed, notice = args
    traces = load_trace_dir(trace.path, shape=trace.shape)
    setup = ServeSetup(seed=seed)

    def one(policy: str, s: ServeSetup) -> tuple[float, float]:
        r = simserve.run_policy(policy, traces, s)
        return r.availability, r.cost_vs_ondemand

    noticed = one("spotd+notice", simserve.with_notice(setup, traces)) if notice else None
    return Run(trace.name, seed, one("spotd", setup), one("spothedge", setup), noticed)


def _jobs(args: tuple[Trace, int]) -> Run:
    trace, seed = args
    traces = load_trace_dir(trace.path, shape=trace.shape)
    setup = replace(simjobs.JobSetup(seed=seed), **(trace.job or {}))
    got = {
        r.policy: r for r in simjobs.simulate_jobs(traces, setup, ["deadline", "uniform-progress"])
    }
    d, u = got["deadline"], got["uniform-progress"]
    return Run(
        f"jobs: {trace.name}",
        seed,
        (d.cost_vs_ondemand, float(d.deadline_misses)),
        (u.cost_vs_ondemand, float(u.deadline_misses)),
    )


def _synthetic(root: Path, folders: int, seed: int, hazard: str) -> tuple[Trace, ...]:
    """``folders`` synthetic trace folders (``bench/synth_traces.py``), written under
    ``root``; each one a serving and a jobs trace (the default 48 h job due in 52 h)."""
    out = []
    for i in range(folders):
        path = root / f"syn-{seed}-{i:03d}"
        synth_traces.write(path, i, seed, hazard)
        out.append(Trace(f"synthetic {hazard} {seed}/{i:03d}", path, job={}))
    return tuple(out)


def summarize(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per trace: runs won, means, and the runs lost."""
    out = []
    for name in dict.fromkeys(r.trace for r in runs):
        mine = [r for r in runs if r.trace == name]
        row: dict[str, Any] = {
            "trace": name,
            "runs": len(mine),
            "won": sum(r.won for r in mine),
            "ours_mean": [round(statistics.fmean(r.ours[i] for r in mine), 4) for i in (0, 1)],
            "reference_mean": [
                round(statistics.fmean(r.reference[i] for r in mine), 4) for i in (0, 1)
            ],
            "lost": [
                {"seed": r.seed, "ours": list(r.ours), "reference": list(r.reference)}
                for r in mine
                if not r.won
            ],
        }
        if any(r.noticed is not None for r in mine):
            row["notice_met"] = sum(r.notice_met for r in mine)
            row["notice_availability"] = [r.noticed[0] for r in mine if r.noticed is not None]
        out.append(row)
    return out


def _lost(x: dict[str, Any], *, jobs: bool) -> str:
    o, r = x["ours"], x["reference"]
    if jobs:  # (cost, deadline misses)
        return f"s{x['seed']} ({o[0]:.4f}, {o[1]:.0f} missed vs {r[0]:.4f}, {r[1]:.0f} missed)"
    return f"s{x['seed']} ({o[0]:.4f}/{o[1]:.4f} vs {r[0]:.4f}/{r[1]:.4f})"


def _ablate(no_return_backoff: bool) -> None:
    """In each worker: a back-off capped at 0 s is none (every checkpoint is due)."""
    if no_return_backoff:
        returns.CAP_SECONDS = 0.0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0:10", help="A:B, seeds A..B-1 (default 0:10)")
    p.add_argument("--part", choices=("serve", "jobs", "both"), default="both")
    p.add_argument("--notice", action="store_true", help="serve: also spotd+notice")
    p.add_argument("--json", action="store_true")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help="instead of the repository's traces, N folders drawn by bench/synth_traces.py",
    )
    p.add_argument("--synthetic-seed", type=int, default=0, help="the family drawn (default 0)")
    p.add_argument("--hazard", choices=synth_traces.HAZARDS, default="lognormal")
    p.add_argument(
        "--no-return-backoff",
        action="store_true",
        help="jobs: DEADLINE tries a refused return again at every checkpoint (an ablation)",
    )
    p.add_argument(
        "--job",
        metavar="HOURS:DEADLINE",
        help="jobs: HOURS of work due in DEADLINE hours on every trace (default 48:52; GCP 24:26)",
    )
    a = p.parse_args(argv)
    lo, _, hi = a.seeds.partition(":")
    seeds = range(int(lo), int(hi) if hi else int(lo) + 1)
    runs: list[Run] = []
    serve_traces, job_traces = SERVE_TRACES, JOB_TRACES
    with tempfile.TemporaryDirectory(prefix="spotd-synth-") as tmp:
        if a.synthetic:
            serve_traces = job_traces = _synthetic(
                Path(tmp), a.synthetic, a.synthetic_seed, a.hazard
            )
        skipped = [t.name for t in serve_traces if not t.path.is_dir()]
        ablate = (a.no_return_backoff,)
        with multiprocessing.Pool(a.processes, initializer=_ablate, initargs=ablate) as pool:
            if a.part in ("serve", "both"):
                work = [(t, s, a.notice) for t in serve_traces if t.path.is_dir() for s in seeds]
                runs += pool.map(_serve, work)
            if a.part in ("jobs", "both"):
                if a.job:
                    hours, _, due = a.job.partition(":")
                    job = {"job_hours": float(hours), "deadline_hours": float(due)}
                    job_traces = tuple(replace(t, job=job) for t in job_traces)
                runs += pool.map(_jobs, [(t, s) for t in job_traces for s in seeds])
    rows = summarize(runs)
    total = {"runs": len(runs), "won": sum(r.won for r in runs), "skipped": skipped}
    if a.json:
        json.dump({"seeds": [seeds.start, seeds.stop], "traces": rows, "total": total}, sys.stdout)
        print()
        return 0
    for name in skipped:
        print(f"skipped (folder absent): {name}")
    for row in rows:
        jobs = row["trace"].startswith("jobs:")
        o, r = row["ours_mean"], row["reference_mean"]
        means = (
            f"cost {o[0]:.4f} vs {r[0]:.4f}"
            if jobs
            else f"{o[0]:.4f} / {o[1]:.4f} vs {r[0]:.4f} / {r[1]:.4f}"
        )
        extra = f"  +notice >= 0.999 under cost: {row['notice_met']}" if "notice_met" in row else ""
        lost = ", ".join(_lost(x, jobs=jobs) for x in row["lost"])
        print(f"{row['trace']:45s} won {row['won']:2d}/{row['runs']}  {means}{extra}")
        if lost:
            print(f"    lost: {lost}")
    print(f"total: won {total['won']} of {total['runs']} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
