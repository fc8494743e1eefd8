"""``spotctl cost`` and ``spotctl project create|list|update``: what was spent, and the
tenants with their limits."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table

from spotd.cli.common import ago, err, out, print_json, run

__all__ = ["cost_cmd", "project"]

# the limits ``--unlimited`` may name: the API's names, with '-' for '_'
LIMITS = ("gpu-quota", "max-jobs", "max-nodes-per-job", "max-services")


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
        if r.get("simulated"):
            label += " (simulated)"
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
    if report.get("note"):
        err.print(f"[yellow]{report['note']}[/yellow]")


@click.group()
def project() -> None:
    """Tenants: projects with GPU quotas and their own API tokens."""


def _limit_options(f: Any) -> Any:
    for opt in reversed(
        (
            click.option(
                "--gpu-quota",
                type=click.FloatRange(min=0),
                default=None,
                help="Most GPUs the project's active jobs and live services may reserve.",
            ),
            click.option(
                "--max-jobs",
                type=click.IntRange(min=0),
                default=None,
                help="Most active jobs at once.",
            ),
            click.option(
                "--max-nodes-per-job",
                type=click.IntRange(min=0),
                default=None,
                help="Most nodes one job may ask for.",
            ),
            click.option(
                "--max-services",
                type=click.IntRange(min=0),
                default=None,
                help="Most live services at once.",
            ),
        )
    ):
        f = opt(f)
    return f


def limits_text(p: dict[str, Any]) -> str:
    """A project's limits in one line: "8 GPUs, 2 jobs, unlimited nodes/job, 1 service"."""
    parts = [
        ("gpu_quota", "GPUs"),
        ("max_jobs", "jobs"),
        ("max_nodes_per_job", "nodes/job"),
        ("max_services", "services"),
    ]
    return ", ".join(
        f"{'unlimited' if p.get(k) is None else f'{p[k]:g}'} {what}" for k, what in parts
    )


@project.command("create")
@click.argument("name")
@_limit_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def project_create(
    name: str,
    gpu_quota: float | None,
    max_jobs: int | None,
    max_nodes_per_job: int | None,
    max_services: int | None,
    output: str,
) -> None:
    """Create project NAME and print its API token (shown only this once). A limit left out
    is unlimited."""
    p = run(
        lambda c: c.create_project(
            name,
            gpu_quota=gpu_quota,
            max_jobs=max_jobs,
            max_nodes_per_job=max_nodes_per_job,
            max_services=max_services,
        )
    )
    if output == "json":
        print_json(p)
        return
    quota = "unlimited" if p["gpu_quota"] is None else f"{p['gpu_quota']:g} GPUs"
    out.print(f"project {p['name']} created (quota {quota})")
    if any(p.get(k) is not None for k in ("max_jobs", "max_nodes_per_job", "max_services")):
        out.print(f"limits: {limits_text(p)}")
    out.print(f"token: {p['token']}")
    err.print("[dim]The token is shown once: store it now (SPOTD_API_TOKEN for the TCP API).[/dim]")


@project.command("update")
@click.argument("name")
@_limit_options
@click.option(
    "--unlimited",
    "unlimited",
    multiple=True,
    type=click.Choice(LIMITS),
    help="Remove this limit (repeatable).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def project_update(
    name: str,
    gpu_quota: float | None,
    max_jobs: int | None,
    max_nodes_per_job: int | None,
    max_services: int | None,
    unlimited: tuple[str, ...],
    output: str,
) -> None:
    """Change project NAME's limits; those not named stay. A lower limit refuses the next
    launch, it never stops what runs."""
    given = {
        "gpu_quota": gpu_quota,
        "max_jobs": max_jobs,
        "max_nodes_per_job": max_nodes_per_job,
        "max_services": max_services,
    }
    changes: dict[str, float | None] = {k: v for k, v in given.items() if v is not None}
    lifted = {u.replace("-", "_") for u in unlimited}
    both = sorted(lifted & changes.keys())
    if both:
        raise click.UsageError(f"{both[0]} is given and named by --unlimited")
    changes.update(dict.fromkeys(lifted))
    if not changes:
        raise click.UsageError("nothing to change: give a limit or --unlimited LIMIT")
    p = run(lambda c: c.update_project(name, **changes))
    if output == "json":
        print_json(p)
        return
    out.print(f"project {p['name']}: {limits_text(p)}")


@project.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def project_list(output: str) -> None:
    """Projects, their limits and current use."""
    rows = run(lambda c: c.projects())
    if output == "json":
        print_json(rows)
        return
    t = Table()
    for col in ("PROJECT", "GPUS", "JOBS", "NODES/JOB", "SERVICES", "CREATED"):
        t.add_column(col)
    now = time.time()
    for p in rows:
        t.add_row(
            p["name"],
            f"{p['gpus_in_use']:g} / {_cap(p['gpu_quota'])}",
            f"{p['active_jobs']} / {_cap(p.get('max_jobs'))}",
            _cap(p.get("max_nodes_per_job")),
            f"{p.get('live_services', 0)} / {_cap(p.get('max_services'))}",
            ago(p["created_at"], now),
        )
    out.print(t)


def _cap(limit: float | None) -> str:
    return "unlimited" if limit is None else f"{limit:g}"
