"""``spotctl jobs pool apply|status|logs|cancel|down`` and ``spotctl jobs launch --pool``: pools.

A pool keeps N spot workers up (each a managed job: placed, preempted and recovered as one);
``jobs launch --pool NAME --num-jobs N`` queues N copies of a job on it, each with its rank
(``$SKYPILOT_JOB_RANK``), and provisions nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from spotd.cli.common import ago, err, out, parse_env, print_json, run
from spotd.sdk.client_pools import (
    pool_apply,
    pool_cancel,
    pool_down,
    pool_job_follow,
    pool_job_logs,
    pool_launch,
    pool_status,
)

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = ["launch_on_pool", "pool"]


@click.group("pool")
def pool() -> None:
    """Pools: N workers kept up, jobs queued onto them (SkyPilot's pools)."""


@pool.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-p", "--pool", "name", default=None, help="Pool name (default: the task's name).")
@click.option("--env", "envs", multiple=True, help="K=V override for envs (repeatable).")
@click.option("--infra", default=None, help="Run the workers only here (overrides infra).")
@click.option("--project", default=None, help="Create the pool in this project.")
@click.option("-y", "--yes", is_flag=True, help="Accepted for SkyPilot habits; spotd never asks.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def pool_apply_cmd(
    file: str,
    name: str | None,
    envs: tuple[str, ...],
    infra: str | None,
    project: str | None,
    yes: bool,
    output: str,
) -> None:
    """Create the pool FILE describes (pool: {workers: N}), or resize it to N workers."""
    text = Path(file).read_text()
    pool_name = name or _task_name(text)
    if not pool_name:
        raise click.UsageError("name the pool: -p NAME (or `name:` in the YAML)")
    result = run(
        lambda c: pool_apply(
            c, pool_name, text, filename=file, env=parse_env(envs), infra=infra, project=project
        )
    )
    if output == "json":
        print_json(result)
        return
    started = ", ".join(str(j) for j in result["started"]) or "none"
    out.print(
        f"Pool [bold]{result['name']}[/bold]: {result['workers']} workers "
        f"(worker jobs started now: {started})"
    )


def _task_name(text: str) -> str | None:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return str(name) if name else None


@pool.command("status")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def pool_status_cmd(name: str | None, output: str) -> None:
    """Show the pools (or one pool: its workers and its jobs)."""
    result = run(lambda c: pool_status(c, name))
    if output == "json":
        print_json(result)
        return
    pools = result if isinstance(result, list) else [result]
    now = time.time()
    t = Table()
    for col in ("POOL", "WORKERS", "UP", "JOBS", "CREATED", "STATUS"):
        t.add_column(col)
    for p in pools:
        up = sum(1 for w in p["worker_jobs"] if w["status"] == "RUNNING")
        counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(p["job_counts"].items()))
        t.add_row(
            p["name"],
            str(p["workers"]),
            str(up),
            counts or "-",
            ago(p["created_at"], now),
            p["status"],
        )
    out.print(t)
    if isinstance(result, dict):
        _print_workers(result)
        _print_jobs(result.get("jobs", []))


def _print_workers(p: dict[str, Any]) -> None:
    t = Table(title="workers")
    for col in ("SLOT", "JOB", "STATUS", "ATTEMPTS", "PREEMPTIONS", "RUNNING"):
        t.add_column(col)
    for w in p["worker_jobs"]:
        t.add_row(
            str(w["slot"]),
            str(w["job_id"]),
            w["status"],
            str(w["attempts"]),
            str(w["preemptions"]),
            "-" if w["running"] is None else f"pool job {w['running']}",
        )
    out.print(t)


def _print_jobs(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        return
    t = Table(title="jobs")
    for col in ("ID", "NAME", "RANK", "ATTEMPTS", "WORKER", "STATUS"):
        t.add_column(col)
    for j in jobs:
        last = j["attempts"][-1] if j["attempts"] else None
        t.add_row(
            str(j["id"]),
            j["name"],
            f"{j['rank']}/{j['num_jobs']}",
            str(len(j["attempts"])),
            "-" if last is None else str(last["worker_job_id"]),
            j["status"],
        )
    out.print(t)


@pool.command("logs")
@click.argument("name")
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
def pool_logs_cmd(name: str, job_id: int, follow: bool) -> None:
    """Print a pool job's output, every attempt's (cut from its workers' logs)."""
    if not follow:
        sys.stdout.write(run(lambda c: pool_job_logs(c, name, job_id)))
        return

    async def go(c: Client) -> None:
        async for chunk in pool_job_follow(c, name, job_id):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()

    run(go)


@pool.command("cancel")
@click.argument("name")
@click.argument("job_ids", type=int, nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Accepted for SkyPilot habits; spotd never asks.")
def pool_cancel_cmd(name: str, job_ids: tuple[int, ...], yes: bool) -> None:
    """Cancel jobs of a pool: a queued one leaves the queue, a running one is stopped on its
    worker (SIGTERM, then SIGKILL after the grace period), which then runs the next job."""
    from spotd.sdk.client import ApiError

    async def go(c: Client) -> list[str]:
        lines = []
        for j in job_ids:
            try:
                job = await pool_cancel(c, name, j)
                lines.append(f"pool job {job['id']}: {job['status']}")
            except ApiError as exc:
                lines.append(f"[red]error:[/red] pool job {j}: {exc}")
        return lines

    lines = run(go)
    for line in lines:
        (err if line.startswith("[red]") else out).print(line)
    if any(line.startswith("[red]") for line in lines):
        raise SystemExit(1)


@pool.command("down")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Accepted for SkyPilot habits; spotd never asks.")
def pool_down_cmd(name: str, yes: bool) -> None:
    """Take a pool down: its queued and running jobs are cancelled, its workers terminated."""
    result = run(lambda c: pool_down(c, name))
    out.print(f"pool {result['name']}: {result['status']}")


def launch_on_pool(
    c: Client,
    pool_name: str,
    *,
    file: str,
    name: str | None,
    env: dict[str, str],
    num_jobs: int,
) -> Any:
    """``spotctl jobs launch --pool``'s request (``spotd.cli.jobs``)."""
    text = Path(file).read_text()
    return pool_launch(c, pool_name, text, filename=file, name=name, env=env, num_jobs=num_jobs)


def print_queued(result: dict[str, Any]) -> None:
    ids = [j["id"] for j in result["jobs"]]
    span = str(ids[0]) if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
    out.print(f"{len(ids)} job(s) queued on pool [bold]{result['pool']}[/bold]: {span}")
