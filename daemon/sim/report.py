"""Results as rows (for the table and ``-o json``) and as a PNG (matplotlib, optional).

matplotlib is imported only when a plot is asked for; it comes with the ``sim`` extra
(``pip install 'spotd[sim]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spotd.sim.jobs import JobResult, JobSetup
from spotd.sim.serve import PolicyResult, ServeSetup

__all__ = ["job_rows", "plot_jobs", "plot_serve", "serve_rows"]


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


def plot_jobs(
    results: Sequence[JobResult],
    setup: JobSetup,
    path: str | Path,
    *,
    window: int = 0,
    title: str = "",
) -> Path:
    """Job progress and cumulative cost over one window, one line per policy."""
    plt = _pyplot()
    fig, (ax_p, ax_c) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for r in results:
        run = r.runs[window]
        if not run.timeline:
            continue
        hours = [t / 3600.0 for t, _, _ in run.timeline]
        ax_p.plot(hours, [p for _, p, _ in run.timeline], lw=1.2, label=r.policy)
        ax_c.plot(
            hours,
            [c for _, _, c in run.timeline],
            lw=1.2,
            label=f"{r.policy} ({run.cost / run.ondemand_cost:.2f}x on-demand)",
        )
    for ax in (ax_p, ax_c):
        ax.axvline(setup.deadline_hours, color="black", lw=0.6, ls=":")
    ax_p.set_ylabel("progress")
    ax_p.legend(fontsize=7, loc="lower right")
    ax_c.set_ylabel("cumulative cost")
    ax_c.set_xlabel("hours since submission (dotted: deadline)")
    ax_c.legend(fontsize=7, loc="upper left")
    fig.suptitle(title or "spotctl simulate jobs")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
