"""Results as rows (for the table and ``-o json``) and as a PNG (matplotlib, optional).

matplotlib is imported only when a plot is asked for; it comes with the ``sim`` extra
(``pip install 'spotd[sim]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spotd.sim.jobs import JobResult, JobRun, JobSetup
from spotd.sim.serve import PolicyResult, ServeSetup

__all__ = ["job_rows", "market_spans", "plot_jobs", "plot_serve", "serve_rows"]


def serve_rows(results: Sequence[PolicyResult]) -> list[dict[str, Any]]:
    """One object per policy: means over the windows (``min_availability``: the worst)."""
    return [
        {
            "policy": r.policy,
            "availability": round(r.availability, 4),
            "min_availability": round(r.min_availability, 4),
            "cost": round(r.cost, 2),
            "cost_vs_ondemand": round(r.cost_vs_ondemand, 4),
            "preemptions": round(r.preemptions, 1),
            "launch_failures": round(r.launch_failures, 1),
        }
        for r in results
    ]


def job_rows(results: Sequence[JobResult]) -> list[dict[str, Any]]:
    """One object per policy: means over the windows; misses counted."""
    return [
        {
            "policy": r.policy,
            "cost": round(r.cost, 2),
            "cost_vs_ondemand": round(r.cost_vs_ondemand, 4),
            "deadline_misses": r.deadline_misses,
            "windows": len(r.runs),
            "preemptions": round(r.preemptions, 1),
            "time_lost_hours": round(r.lost_hours, 2),
            "finish_hours": round(r.finish_hours, 2),
        }
        for r in results
    ]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("plotting needs matplotlib: pip install 'spotd[sim]'") from exc
    return plt


def plot_serve(
    results: Sequence[PolicyResult],
    setup: ServeSetup,
    path: str | Path,
    *,
    window: int = 0,
    title: str = "",
) -> Path:
    """READY replicas and cumulative cost over one window, one line per policy."""
    plt = _pyplot()
    fig, (ax_ready, ax_cost) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    hours = [t * setup.tick_seconds / 3600.0 for t in range(setup.window_ticks)]
    for i, r in enumerate(results):
        w = r.windows[window]
        ax_ready.step(
            hours,
            [x + 0.06 * (i - len(results) / 2) for x in w.ready],
            where="post",
            lw=1.0,
            label=f"{r.policy} (avail {w.availability:.3f})",
        )
        ax_cost.plot(
            hours,
            w.cumulative_cost,
            lw=1.2,
            label=f"{r.policy} ({w.cost_vs_ondemand:.2f}x on-demand)",
        )
    ax_ready.axhline(setup.target, color="black", lw=0.6, ls=":")
    ax_ready.set_ylabel("replicas the LB routes to\n(READY, not drained)")
    ax_ready.legend(fontsize=7, ncol=3, loc="lower right")
    ax_cost.set_ylabel("cumulative cost\n(replica-hours, spot 1 / on-demand 3)")
    ax_cost.set_xlabel(
        f"hours into window {window} (offset tick {results[0].windows[window].offset})"
    )
    ax_cost.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle(title or "spotctl simulate serve")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


_MARKET_COLOURS = (("spot", "#6baed6"), ("on-demand", "#de2d26"), ("idle", "#f0f0f0"))


def market_spans(run: JobRun) -> list[tuple[float, float, str]]:
    """Where one run was, as (start h, end h, ``spot`` | ``on-demand`` | ``idle``) spans: each
    tick is in the market of the latest attempt started by its start, ``idle`` when it cost
    nothing (waiting, or done)."""
    spans: list[tuple[float, float, str]] = []
    starts = sorted(run.attempts, key=lambda a: a[0])
    i, prev_t, prev_cost = -1, 0.0, 0.0
    for t, _, cost in run.timeline:
        while i + 1 < len(starts) and starts[i + 1][0] <= prev_t + 1e-9:
            i += 1
        kind = "idle" if i < 0 or cost <= prev_cost + 1e-12 else str(starts[i][1])
        if spans and spans[-1][2] == kind:
            spans[-1] = (spans[-1][0], t / 3600.0, kind)
        else:
            spans.append((prev_t / 3600.0, t / 3600.0, kind))
        prev_t, prev_cost = t, cost
    return spans


def plot_jobs(
    results: Sequence[JobResult],
    setup: JobSetup,
    path: str | Path,
    *,
    window: int = 0,
    title: str = "",
) -> Path:
    """One window, one row per policy: how far ahead of the uniform-progress line the job's
    work is (what DEADLINE steers by), the market it ran on, and the cumulative cost."""
    plt = _pyplot()
    colours = dict(_MARKET_COLOURS)
    fig, (ax_a, ax_m, ax_c) = plt.subplots(
        3, 1, figsize=(10, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 3]}
    )
    shown = [r for r in results if r.runs[window].timeline]
    for row, r in enumerate(shown):
        run = r.runs[window]
        hours = [t / 3600.0 for t, _, _ in run.timeline]
        ahead = [(p - t / setup.deadline_seconds) * setup.job_hours for t, p, _ in run.timeline]
        ax_a.plot(hours, ahead, lw=1.2, label=r.policy)
        ax_c.plot(
            hours,
            [c for _, _, c in run.timeline],
            lw=1.2,
            label=f"{r.policy} ({run.cost / run.ondemand_cost:.2f}x on-demand)",
        )
        for start, end, kind in market_spans(run):
            ax_m.broken_barh([(start, end - start)], (row - 0.4, 0.8), color=colours[kind])
    ax_a.axhline(0.0, color="black", lw=0.6, ls="--")
    for ax in (ax_a, ax_m, ax_c):
        ax.axvline(setup.deadline_hours, color="black", lw=0.6, ls=":")
    ax_a.set_ylabel("ahead of the line (h of work)")
    ax_a.legend(fontsize=7, loc="lower left")
    ax_m.set_yticks(range(len(shown)), [r.policy for r in shown], fontsize=7)
    ax_m.set_ylim(-0.6, len(shown) - 0.4)
    ax_m.invert_yaxis()
    ax_m.set_ylabel("market", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in colours.values()]
    ax_m.legend(handles, list(colours), fontsize=6, loc="upper right", ncol=3)
    ax_c.set_ylabel("cumulative cost")
    ax_c.set_xlabel("hours since submission (dotted: deadline; dashed: on the line)")
    ax_c.legend(fontsize=7, loc="upper left")
    fig.suptitle(title or "spotctl simulate jobs")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
