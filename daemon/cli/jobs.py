"""``spotctl jobs launch|queue|logs|events|cancel``: managed jobs.

``jobs launch`` first uploads the task's workdir and local file_mounts (only the files the
daemon lacks: ``spotd.sdk.uploads``; progress on stderr: ``spotd.cli.progress``), then
sends one request: the daemon plans the job, stores it, and answers with the job and the plan
it used, which is printed as the placement table. ``--dry-run`` sends the
same request with ``dry_run`` set and prints the plan alone. Only a person at a terminal who
did not pass ``-y`` is shown the plan before anything is stored, to confirm it: that costs a
dry run first.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from spotd.cli.common import ago, dur, err, out, parse_env, print_events, print_json, run
from spotd.cli.pools import launch_on_pool, pool, print_queued
from spotd.cli.progress import FilesProgress, progress_mode, upload_line
from spotd.sdk.uploads import SourceError, local_sources

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = ["jobs", "plan_table", "print_jobs"]

QUEUE_PAGE = 100  # `jobs queue` shows this many newest jobs unless told otherwise

STATUS_STYLE = MappingProxyType(
    {
        "SUCCEEDED": "green",
        "RUNNING": "cyan",
        "STARTING": "yellow",
        "PENDING": "yellow",
        "RECOVERING": "magenta",
        "CANCELLED": "dim",
        "CANCELLING": "dim",
    }
)
_PLAN_ROWS = 8  # the chosen placement and the next seven


@click.group()
def jobs() -> None:
    """Managed jobs: launched on the cheapest place that fits, recovered on preemption."""


jobs.add_command(pool)  # spotctl jobs pool apply|status|down (spotd.cli.pools)


def plan_table(plan: dict[str, Any]) -> Table:
    """The API's plan (``{name, resources, num_nodes, candidates}``) as a placement table."""
    t = Table(
        title=f"Placement for {plan.get('name') or 'job'} ({plan['resources']}, "
        f"{plan['num_nodes']} node{'s' if plan['num_nodes'] != 1 else ''})"
    )
    for col in ("", "provider", "region", "zone", "instance type", "market", "$/h per node"):
        t.add_column(col)
    for i, c in enumerate(plan["candidates"][:_PLAN_ROWS]):
        t.add_row(
            "chosen" if i == 0 else f"#{i + 1}",
            c["provider"],
            c["region"],
            c["zone"],
            c["instance_type"],
            c["market"],
            f"{c['price_per_hour']:.3f}",
        )
    return t


@jobs.command("launch")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-n", "--name", default=None, help="Job name (default: the task's name).")
@click.option("--env", "envs", multiple=True, help="K=V override for envs (repeatable).")
@click.option("-d", "--detach", is_flag=True, help="Print the job id and return.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Print the placement and candidates; launch nothing.")
@click.option("--deadline", default=None, help="Finish by (ISO-8601 or a duration like 6h).")
@click.option(
    "--infra",
    default=None,
    help="Run only here, e.g. aws, aws/us-east-1, k8s, slurm (overrides resources.infra).",
)
@click.option("-p", "--project", default=None, help="Launch into this project (default: default).")
@click.option(
    "--host-paths",
    is_flag=True,
    help="workdir/file_mounts name paths on the daemon's host, not uploaded (the admin's, "
    "under the daemon's file_roots).",
)
@click.option("--pool", "pool_name", default=None, help="Queue on this pool's workers instead.")
@click.option(
    "--num-jobs", type=click.IntRange(min=1), default=1, help="With --pool: N copies, ranked."
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def jobs_launch(
    file: str,
    name: str | None,
    envs: tuple[str, ...],
    detach: bool,
    yes: bool,
    dry_run: bool,
    deadline: str | None,
    infra: str | None,
    project: str | None,
    host_paths: bool,
    pool_name: str | None,
    num_jobs: int,
    output: str,
) -> None:
    """Launch FILE as a managed job (with --pool: queue it on a pool's workers)."""
    text = Path(file).read_text()
    env = parse_env(envs)
    if pool_name is not None:
        queued = run(
            lambda c: launch_on_pool(c, pool_name, file=file, name=name, env=env, num_jobs=num_jobs)
        )
        if output == "json":
            print_json(queued)
        else:
            print_queued(queued)
        return
    if num_jobs != 1:
        raise click.UsageError("--num-jobs needs --pool")
    confirm = not dry_run and not yes and sys.stdin.isatty()
    bar = FilesProgress(err, progress_mode(err, output))

    def request(c: Client, *, dry: bool) -> Awaitable[Any]:
        return c.launch(
            text,
            filename=file,
            name=name,
            env=env,
            dry_run=dry,
            deadline=deadline,
            infra=infra,
            project=project,
            host_paths=host_paths,
            progress=bar.update,
        )

    async def go(c: Client) -> Any:
        if not host_paths:
            bar.packing(list(local_sources(text, filename=file, env=env, base=Path.cwd())))
        if dry_run:
            return await request(c, dry=True)
        if confirm:
            plan = await request(c, dry=True)
            if output == "table":
                out.print(plan_table(plan))
            if not click.confirm("Launch this job?", default=True):
                sys.exit(1)
        job = await request(c, dry=False)
        bar.close()
        if output == "table" and "upload" in job:
            out.print(upload_line(job["upload"]))
        if output == "table" and not confirm:
            out.print(plan_table(job["plan"]))
        if detach or output == "json":
            return job
        out.print(
            f"Job [bold]{job['id']}[/bold] submitted; following its logs "
            f"(Ctrl-C stops following, the job keeps running)."
        )
        async for chunk in c.logs(job["id"], follow=True):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        return await c.job(job["id"])

    try:
        result = run(go)
    except SourceError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)
        sys.exit(1)
    finally:
        bar.close()
    if output == "json":
        print_json(result)
    elif dry_run:
        out.print(plan_table(result))
    elif detach:
        out.print(f"Job submitted: id {result['id']}")
    else:
        print_jobs([result])
        if result["status"] != "SUCCEEDED":
            sys.exit(1)


def pace_cell(pace: dict[str, Any] | None) -> str:
    """A DEADLINE job's pace in a few characters: progress, work ahead of (+) or behind (-)
    the uniform-progress line, the slack left; ``(wall time)`` when the job writes no
    progress and the daemon paces it by the time its attempts ran."""
    if not pace:
        return "-"
    ahead = float(pace["ahead_of_line_seconds"])
    slack = float(pace["slack_seconds"])
    cell = f"{float(pace['progress']):.0%} {'+' if ahead >= 0 else '-'}{dur(abs(ahead))}"
    cell += f", slack {dur(slack)}" if slack >= 0 else f", late by {dur(-slack)}"
    return cell + (" (wall time)" if pace.get("progress_from") == "wall time" else "")


def print_jobs(rows: list[dict[str, Any]], verbose: bool = False) -> None:
    now = time.time()
    t = Table()
    for col in (
        "ID",
        "NAME",
        "RESOURCES",
        "REGION/ZONE",
        "MARKET",
        "SUBMITTED",
        "DURATION",
        "RECOVERIES",
        "STATUS",
    ):
        t.add_column(col)
    if verbose:
        t.add_column("GPUS", no_wrap=True)
        t.add_column("PACE", no_wrap=True)
        t.add_column("DETAIL")
    for j in rows:
        st = j["status"]
        cells = [
            str(j["id"]),
            j["name"] or "-",
            j["resources"],
            f"{j['region']}/{j['zone']}" if j["region"] else "-",
            j["market"] or "-",
            ago(j["submitted_at"], now),
            dur(j["duration"]),
            str(j["recoveries"]),
            f"[{STATUS_STYLE.get(st, 'red')}]{st}[/]",
        ]
        if verbose:
            cells.append(j.get("gpu_summary") or "-")
            cells.append(pace_cell(j.get("pace")))
            cells.append(j.get("message") or "")
        t.add_row(*cells)
    out.print(t)


@jobs.command("queue")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option(
    "-v", "--verbose", is_flag=True, help="Show GPU utilisation/memory and the last status message."
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    help=f"Show the newest N jobs; 0: every job [default: {QUEUE_PAGE} for the table, every "
    "job with -o json].",
)
def jobs_queue(output: str, verbose: bool, limit: int | None) -> None:
    """List managed jobs, newest first."""
    limit = (QUEUE_PAGE if output == "table" else 0) if limit is None else limit
    if limit:
        rows, more = run(lambda c: c.job_page(limit=limit))
    else:
        rows, more = run(lambda c: c.jobs()), None
    if output == "json":
        print_json(rows)
        return
    print_jobs(rows, verbose)
    if more is not None:
        err.print(f"[dim]the newest {len(rows)} jobs; --limit 0 lists every one[/]")


@jobs.command("logs")
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
@click.option("--attempt", type=int, default=None, help="Only this attempt (1-based).")
def jobs_logs(job_id: int, follow: bool, attempt: int | None) -> None:
    """Print a job's logs, every attempt labelled."""

    async def go(c: Client) -> None:
        async for chunk in c.logs(job_id, follow=follow, attempt=attempt):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()

    run(go)


@jobs.command("events")
@click.argument("job_id", type=int)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def jobs_events(job_id: int, output: str) -> None:
    """Show the event log of a job: every transition with its reason."""
    print_events(run(lambda c: c.events(job_id)), output, ("ATTEMPT", "attempt_id"))


@jobs.command("cancel")
@click.argument("job_ids", type=int, nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Accepted for SkyPilot habits; spotd never asks.")
def jobs_cancel(job_ids: tuple[int, ...], yes: bool) -> None:
    """Cancel jobs: their instances are terminated."""

    async def go(c: Client) -> list[Any]:
        return [await c.cancel(j) for j in job_ids]

    for j in run(go):
        out.print(f"job {j['id']}: {j['status']}")
