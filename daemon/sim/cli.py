"""``spotctl simulate jobs|serve``: replay spot traces through spotd's policies, offline.

Runs in the client process and needs no daemon. Every parameter of the simulators is an
option; the defaults are the papers' setups (SpotHedge for services, "Can't Be Late" for jobs).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from spotd.sim import jobs as sim_jobs
from spotd.sim import report
from spotd.sim import serve as sim_serve
from spotd.sim.traces import TraceError, load_trace_dir


def _console(*, stderr: bool = False) -> Console:
    """A console for one print: wide when piped, so tables are not wrapped for a file."""
    width = None if sys.stdout.isatty() else 200
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


_TRACE = click.option(
    "--trace",
    "trace_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of per-zone trace files (e.g. traces/availability/serving/AWS1).",
)
_OUTPUT = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
_PLOT = click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG of one window (needs matplotlib: spotd[sim]).",
)
_PLOT_WINDOW = click.option(
    "--plot-window", type=int, default=0, show_default=True, help="Which window the plot shows."
)
_SEED = click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seeds the window offsets (drawn as the SpotHedge artifact draws them).",
)


def _print_table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    table = Table(title=title, title_justify="left")
    for _, header in columns:
        table.add_column(header, justify="left" if header == "policy" else "right")
    for row in rows:
        table.add_row(*(_fmt(key, row[key]) for key, _ in columns))
    _console().print(table)


_FRACTIONS = frozenset({"availability", "min_availability", "cost_vs_ondemand"})


def _fmt(key: str, v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if key in _FRACTIONS else f"{v:.2f}" if key == "cost" else f"{v:.1f}"
    return str(v)


def _policies(chosen: tuple[str, ...], known: tuple[str, ...]) -> list[str]:
    return list(chosen) if chosen else list(known)


@click.group("simulate")
def simulate() -> None:
    """Replay spot traces through spotd's policies and published baselines (no daemon)."""


@simulate.command("serve")
@_TRACE
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(list(sim_serve.POLICY_NAMES)),
    help="Repeat to choose; default: all.",
)
@click.option("--target", type=int, default=3, show_default=True, help="READY replicas wanted.")
@click.option("--tick-seconds", type=float, default=30.0, show_default=True)
@click.option(
    "--window-ticks",
    type=int,
    default=2880,
    show_default=True,
    help="Ticks per window (2880 x 30 s = 24 h).",
)
@click.option("--windows", type=int, default=10, show_default=True)
@_SEED
@click.option(
    "--cold-start-seconds", type=float, default=120.0, show_default=True, help="Launch to READY."
)
@click.option(
    "--ondemand-cost",
    type=float,
    default=3.0,
    show_default=True,
    help="Cost of an on-demand replica-tick, in spot replica-ticks.",
)
@click.option(
    "--overprovision",
    type=int,
    default=1,
    show_default=True,
    help="Extra spot replicas (spotd, spothedge).",
)
@click.option(
    "--base-ondemand",
    type=int,
    default=0,
    show_default=True,
    help="spotd: on-demand replicas always held, inside the target "
    "(SkyServe's base_ondemand_fallback_replicas).",
)
@click.option(
    "--bad-zone-seconds",
    type=float,
    default=3600.0,
    show_default=True,
    help="spotd: how long a preempted / refusing zone stays bad.",
)
@click.option(
    "--risk/--no-risk",
    default=True,
    show_default=True,
    help="spotd: rank zones by the learned preemption risk.",
)
@click.option(
    "--shaky-zone-seconds",
    type=float,
    default=600.0,
    show_default=True,
    help="spotd: after a preemption, on-demand covers that zone's READY spot this long.",
)
@click.option(
    "--calm-seconds",
    type=float,
    default=7200.0,
    show_default=True,
    help="spotd: no preemption this long (and READY that long): no overprovision (0: off).",
)
@click.option(
    "--notice-lead",
    type=(float, float),
    default=None,
    help="+notice policies: notice lead time, uniform in MIN MAX seconds "
    "[default: EC2 90 120, GCP 15 30].",
)
@click.option(
    "--notice-missed",
    type=float,
    default=None,
    help="+notice policies: fraction of preemptions with no notice [default: 0.1].",
)
@click.option(
    "--shape",
    default=None,
    help="Only the trace files of this shape (e.g. v100_1), for folders with several.",
)
@click.option(
    "--binary-as",
    type=click.Choice(["unlimited", "one"]),
    default="unlimited",
    show_default=True,
    help="How a 0/1 trace reads: 1 = available, unlimited (the SpotHedge artifact's) or 1 replica.",
)
@_OUTPUT
@_PLOT
@_PLOT_WINDOW
def serve_cmd(
    trace_dir: str,
    policies: tuple[str, ...],
    target: int,
    tick_seconds: float,
    window_ticks: int,
    windows: int,
    seed: int,
    cold_start_seconds: float,
    ondemand_cost: float,
    overprovision: int,
    base_ondemand: int,
    bad_zone_seconds: float,
    risk: bool,
    shaky_zone_seconds: float,
    calm_seconds: float,
    notice_lead: tuple[float, float] | None,
    notice_missed: float | None,
    shape: str | None,
    binary_as: str,
    output: str,
    plot_path: str | None,
    plot_window: int,
) -> None:
    """Services: READY availability and cost of each placement policy (SpotHedge's setup)."""
    try:
        setup = sim_serve.ServeSetup(
            target=target,
            tick_seconds=tick_seconds,
            window_ticks=window_ticks,
            windows=windows,
            seed=seed,
            cold_start_seconds=cold_start_seconds,
            ondemand_cost=ondemand_cost,
            overprovision=overprovision,
            base_ondemand=base_ondemand,
            bad_zone_seconds=bad_zone_seconds,
            use_risk=risk,
            shaky_zone_seconds=shaky_zone_seconds,
            calm_seconds=calm_seconds,
            binary_unlimited=binary_as == "unlimited",
        )
        traces = load_trace_dir(trace_dir, shape=shape)
        setup = sim_serve.with_notice(setup, traces, lead=notice_lead, missed=notice_missed)
        started = time.monotonic()
        results = sim_serve.simulate_serve(
            traces, setup, _policies(policies, sim_serve.POLICY_NAMES)
        )
    except (TraceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    rows = report.serve_rows(results)
    if output == "json":
        _console().print_json(json.dumps(rows))
    else:
        zones = ", ".join(t.zone.zone for t in traces)
        _print_table(
            f"{Path(trace_dir).name}: {zones}; target {target}, {windows} windows of "
            f"{window_ticks} x {tick_seconds:g} s, cold start {cold_start_seconds:g} s, "
            f"seed {seed}; +notice: {setup.notice} ({time.monotonic() - started:.1f} s)",
            rows,
            [
                ("policy", "policy"),
                ("availability", "availability"),
                ("min_availability", "worst window"),
                ("cost_vs_ondemand", "cost vs on-demand"),
                ("cost", "cost (replica-h)"),
                ("preemptions", "preemptions"),
                ("launch_failures", "failed launches"),
            ],
        )
    if plot_path:
        _plot(
            lambda: report.plot_serve(
                results,
                setup,
                plot_path,
                window=plot_window,
                title=f"{Path(trace_dir).name}, window {plot_window}",
            )
        )


@simulate.command("jobs")
@_TRACE
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(list(sim_jobs.JOB_POLICY_NAMES)),
    help="Repeat to choose; default: all.",
)
@click.option(
    "--job-hours", type=float, default=48.0, show_default=True, help="Work the job needs."
)
@click.option(
    "--deadline-hours",
    type=float,
    default=52.0,
    show_default=True,
    help="Deadline, after submission.",
)
@click.option(
    "--checkpoint-seconds",
    type=float,
    default=600.0,
    show_default=True,
    help="Progress between checkpoints (0: continuous).",
)
@click.option(
    "--restart-overhead-seconds",
    type=float,
    default=720.0,
    show_default=True,
    help="Billed time without progress on every (re)launch.",
)
@click.option(
    "--nodes", type=int, default=1, show_default=True, help="Instances the job needs at once."
)
@click.option(
    "--windows", type=int, default=10, show_default=True, help="Submission times (seeded)."
)
@_SEED
@click.option(
    "--tick-seconds",
    type=float,
    default=None,
    help="Simulation step [default: the trace's finest gap].",
)
@click.option(
    "--ondemand-price",
    type=float,
    default=None,
    help="On-demand USD/h [default: catalog price when the trace has prices, else 3].",
)
@click.option(
    "--shape",
    "job_shape",
    default=None,
    help="Only the trace files of this shape (e.g. v100_1), for folders with several.",
)
@_OUTPUT
@_PLOT
@_PLOT_WINDOW
def jobs_cmd(
    trace_dir: str,
    policies: tuple[str, ...],
    job_hours: float,
    deadline_hours: float,
    checkpoint_seconds: float,
    restart_overhead_seconds: float,
    nodes: int,
    windows: int,
    seed: int,
    tick_seconds: float | None,
    ondemand_price: float | None,
    job_shape: str | None,
    output: str,
    plot_path: str | None,
    plot_window: int,
) -> None:
    """Managed jobs: cost and deadline misses of each recovery strategy."""
    try:
        setup = sim_jobs.JobSetup(
            job_hours=job_hours,
            deadline_hours=deadline_hours,
            checkpoint_seconds=checkpoint_seconds,
            restart_overhead_seconds=restart_overhead_seconds,
            num_nodes=nodes,
            windows=windows,
            seed=seed,
            tick_seconds=tick_seconds,
            ondemand_price=ondemand_price,
        )
        traces = load_trace_dir(trace_dir, shape=job_shape)
        started = time.monotonic()
        results = sim_jobs.simulate_jobs(
            traces, setup, _policies(policies, sim_jobs.JOB_POLICY_NAMES)
        )
        pricing = sim_jobs.pricing_for(traces, setup)
    except (TraceError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    rows = report.job_rows(results)
    if output == "json":
        _console().print_json(json.dumps(rows))
    else:
        prices = (
            f"trace spot prices, on-demand ${pricing.ondemand:g}/h"
            if pricing.real
            else f"spot 1 / on-demand {pricing.ondemand:g} per hour"
        )
        _print_table(
            f"{Path(trace_dir).name}: {job_hours:g} h job, deadline {deadline_hours:g} h, "
            f"checkpoint {checkpoint_seconds:g} s, restart {restart_overhead_seconds:g} s, "
            f"{windows} windows, seed {seed}; {prices} ({time.monotonic() - started:.1f} s)",
            rows,
            [
                ("policy", "policy"),
                ("cost", "cost"),
                ("cost_vs_ondemand", "cost vs on-demand"),
                ("deadline_misses", "deadline misses"),
                ("preemptions", "preemptions"),
                ("time_lost_hours", "time lost (h)"),
                ("finish_hours", "finish (h)"),
            ],
        )
    if plot_path:
        _plot(
            lambda: report.plot_jobs(
                results,
                setup,
                plot_path,
                window=plot_window,
                title=f"{Path(trace_dir).name}, window {plot_window}",
            )
        )


def _plot(make: Any) -> None:
    try:
        path = make()
    except (RuntimeError, IndexError) as exc:
        raise click.ClickException(str(exc)) from exc
    _console(stderr=True).print(f"wrote {path}")
