"""``spotctl cost`` and ``spotctl project create|list``: what was spent, and the tenants."""

from __future__ import annotations

import time

import click
from rich.table import Table

from spotd.cli.common import ago, err, out, print_json, run

__all__ = ["cost_cmd", "project"]


@click.command("cost")
@click.option(
    "--by",
    type=click.Choice(["job", "service", "project", "region"]),
    default="job",
    show_default=True,
    help="One row per job, service, project or provider/region.",
)
@click.option(
    "--since",
    default=None,
    help="Only time after this: a date (2025-01-31), a datetime, or a duration (7d).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def cost_cmd(by: str, since: str | None, output: str) -> None:
    """What jobs and services cost: GPU-hours, spot vs on-demand, dollars, saving."""
    report = run(lambda c: c.cost(by=by, since=since))
    if output == "json":
        print_json(report)
        return
    t = Table(title=f"Cost by {by}" + (f" since {since}" if since else ""))
    for col in (
        by.upper(),
        "PLACEMENTS",
        "HOURS",
        "GPU-HOURS",
        "SPOT H",
        "ON-DEMAND H",
        "COST $",
        "ON-DEMAND EQUIV $",
        "SAVED $",
        "SAVED %",
    ):
        t.add_column(col, justify="left" if col == by.upper() else "right")
    for r in [*report["rows"], report["total"]]:
        label = r["label"] if by != "job" or r["key"] == "total" else f"{r['key']} {r['label']}"
        t.add_row(
            f"[bold]{label}[/bold]" if r["key"] == "total" else label,
            str(r["placements"]),
            f"{r['hours']:.2f}",
            f"{r['gpu_hours']:.2f}",
            f"{r['spot_hours']:.2f}",
            f"{r['ondemand_hours']:.2f}",
            f"{r['dollars']:.4f}",
            f"{r['ondemand_equivalent_dollars']:.4f}",
            f"{r['saving_dollars']:.4f}",
            f"{r['saving_pct']:.0f}%",
        )
    out.print(t)


@click.group()
def project() -> None:
    """Tenants: projects with GPU quotas and their own API tokens."""


@project.command("create")
@click.argument("name")
@click.option(
    "--gpu-quota",
    type=float,
    default=None,
    help="Most GPUs the project's active jobs may reserve (default: unlimited).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def project_create(name: str, gpu_quota: float | None, output: str) -> None:
    """Create project NAME and print its API token (shown only this once)."""
    p = run(lambda c: c.create_project(name, gpu_quota=gpu_quota))
    if output == "json":
        print_json(p)
        return
    quota = "unlimited" if p["gpu_quota"] is None else f"{p['gpu_quota']:g} GPUs"
    out.print(f"project {p['name']} created (quota {quota})")
    out.print(f"token: {p['token']}")
    err.print("[dim]The token is shown once: store it now (SPOTD_API_TOKEN for the TCP API).[/dim]")


@project.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def project_list(output: str) -> None:
    """Projects, their GPU quotas and current use."""
    rows = run(lambda c: c.projects())
    if output == "json":
        print_json(rows)
        return
    t = Table()
    for col in ("PROJECT", "GPU QUOTA", "GPUS IN USE", "ACTIVE JOBS", "CREATED"):
        t.add_column(col)
    now = time.time()
    for p in rows:
        t.add_row(
            p["name"],
            "unlimited" if p["gpu_quota"] is None else f"{p['gpu_quota']:g}",
            f"{p['gpus_in_use']:g}",
            str(p["active_jobs"]),
            ago(p["created_at"], now),
        )
    out.print(t)
