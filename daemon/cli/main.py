"""``spotctl``: the command line client. It talks only to the daemon's API.

Commands follow SkyPilot's where a user knows them (``sky jobs launch`` → ``spotctl jobs
launch``). Every listing takes ``-o json``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from spotd.cli.providers import catalog, check_providers
from spotd.sdk.client import ApiError, Client, DaemonUnreachable

T = TypeVar("T")
# Piped output (scripts, tests) gets wide tables instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)


def _announce(pid: int, settings: Any) -> None:
    err.print(f"[dim]No daemon was running: started spotd in the background (pid {pid}, "
              f"home {settings.home}, log {settings.home / 'spotd.log'})[/dim]")


def run(fn: Callable[[Client], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Client.connect(on_start=_announce) as c:
            return await fn(c)

    try:
        return asyncio.run(go())
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)
        sys.exit(1)
    except DaemonUnreachable as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(3)


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected K=V, got {p!r}", param_hint="--env")
        k, v = p.split("=", 1)
        env[k] = v
    return env


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    return _dur(now - ts) + " ago"


def _dur(sec: float | None) -> str:
    if sec is None:
        return "-"
    sec = int(sec)
    if sec < 60:
        return f"{sec}s"
    if sec < 3600:
        return f"{sec // 60}m {sec % 60}s"
    return f"{sec // 3600}h {sec % 3600 // 60}m"


STATUS_STYLE = {
    "SUCCEEDED": "green",
    "RUNNING": "cyan",
    "STARTING": "yellow",
    "PENDING": "yellow",
    "RECOVERING": "magenta",
    "CANCELLED": "dim",
    "CANCELLING": "dim",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """spotd client: managed jobs and services on spot capacity."""


# -- check -------------------------------------------------------------------------------


@main.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option("--env", "envs", multiple=True, help="K=V override for envs (repeatable).")
@click.option("--providers", is_flag=True, help="Say which providers are enabled, or why not.")
def check(files: tuple[str, ...], envs: tuple[str, ...], providers: bool) -> None:
    """Validate task YAML files; exit non-zero if any has an error."""
    if providers:
        check_providers()
        if not files:
            return
    if not files:
        raise click.UsageError("give task YAML files to check, or --providers")
    from spotd.pricing.catalog import default_local_catalog
    from spotd.recovery import placement
    from spotd.spec import SpecError, check_file, load_tasks

    overrides = _parse_env(envs)
    bad = 0
    catalog = default_local_catalog()
    for f in files:
        if not Path(f).exists():
            err.print(f"{f}: no such file")
            bad += 1
            continue
        issues = check_file(f) if not overrides else []
        tasks = []
        if not issues:
            try:
                tasks = load_tasks(f, env_overrides=overrides)
            except SpecError as exc:
                issues = exc.issues
        for t in tasks:
            req = t.resource_request()
            if not placement.candidates(req, catalog, num_nodes=t.num_nodes):
                issues.append(
                    _Issue(f"{f}: resources: {placement.explain_infeasible(req, catalog)}")
                )
        if issues:
            bad += 1
            for i in issues:
                err.print(str(i), markup=False)
        else:
            out.print(f"{f}: OK ({len(tasks)} task{'s' if len(tasks) != 1 else ''})")
    sys.exit(1 if bad else 0)


class _Issue:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


# -- jobs --------------------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """Managed jobs: launched on the cheapest place that fits, recovered on preemption."""


def _plan_table(plan: dict[str, Any]) -> Table:
    t = Table(title=f"Placement for {plan.get('name') or 'job'} ({plan['resources']}, "
              f"{plan['num_nodes']} node{'s' if plan['num_nodes'] != 1 else ''})")
    for col in ("", "provider", "region", "zone", "instance type", "market", "$/h per node"):
        t.add_column(col)
    for i, c in enumerate(plan["candidates"][:8]):
        t.add_row(
            "chosen" if i == 0 else f"#{i + 1}",
            c["provider"], c["region"], c["zone"], c["instance_type"], c["market"],
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
@click.option("--infra", default=None,
              help="Run only here, e.g. aws, aws/us-east-1, k8s, slurm (overrides resources.infra).")
@click.option("-p", "--project", default=None, help="Launch into this project (default: default).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def jobs_launch(
    file: str, name: str | None, envs: tuple[str, ...], detach: bool, yes: bool,
    dry_run: bool, deadline: str | None, infra: str | None, project: str | None, output: str,
) -> None:
    """Launch FILE as a managed job."""
    text = Path(file).read_text()
    env = _parse_env(envs)

    async def go(c: Client) -> Any:
        plan = await c.launch(text, filename=file, name=name, env=env, dry_run=True,
                              deadline=deadline, infra=infra, project=project)
        if dry_run:
            return plan
        if output == "table":
            out.print(_plan_table(plan))
        if not yes and sys.stdin.isatty() and not click.confirm("Launch this job?", default=True):
            sys.exit(1)
        job = await c.launch(text, filename=file, name=name, env=env, deadline=deadline,
                             infra=infra, project=project)
        if detach or output == "json":
            return job
        out.print(f"Job [bold]{job['id']}[/bold] submitted; following its logs "
                  f"(Ctrl-C stops following, the job keeps running).")
        async for chunk in c.logs(job["id"], follow=True):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        return await c.job(job["id"])

    result = run(go)
    if output == "json":
        out.print_json(json.dumps(result))
    elif dry_run:
        out.print(_plan_table(result))
    elif detach:
        out.print(f"Job submitted: id {result['id']}")
    else:
        _print_jobs([result])
        if result["status"] != "SUCCEEDED":
            sys.exit(1)


def _print_jobs(rows: list[dict[str, Any]], verbose: bool = False) -> None:
    now = time.time()
    t = Table()
    for col in ("ID", "NAME", "RESOURCES", "REGION/ZONE", "MARKET", "SUBMITTED", "DURATION",
                "RECOVERIES", "STATUS"):
        t.add_column(col)
    if verbose:
        t.add_column("GPUS", no_wrap=True)
        t.add_column("DETAIL")
    for j in rows:
        st = j["status"]
        cells = [
            str(j["id"]), j["name"] or "-", j["resources"],
            f"{j['region']}/{j['zone']}" if j["region"] else "-", j["market"] or "-",
            _ago(j["submitted_at"], now), _dur(j["duration"]), str(j["recoveries"]),
            f"[{STATUS_STYLE.get(st, 'red')}]{st}[/]",
        ]
        if verbose:
            cells.append(j.get("gpu_summary") or "-")
            cells.append(j.get("message") or "")
        t.add_row(*cells)
    out.print(t)


@jobs.command("queue")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("-v", "--verbose", is_flag=True,
              help="Show GPU utilisation/memory and the last status message.")
def jobs_queue(output: str, verbose: bool) -> None:
    """List managed jobs."""
    rows = run(lambda c: c.jobs())
    if output == "json":
        out.print_json(json.dumps(rows))
    else:
        _print_jobs(rows, verbose)


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


def print_events(rows: list[dict[str, Any]], output: str, who: tuple[str, str]) -> None:
    """An event log as JSON or a table; ``who``: the column (title, key) naming whose event
    it is (a job's attempt, a service's replica)."""
    if output == "json":
        out.print_json(json.dumps(rows))
        return
    t = Table()
    for col in ("TIME", "KIND", who[0], "MESSAGE"):
        t.add_column(col)
    for e in rows:
        t.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"])), e["kind"],
                  e[who[1]] or "-", e["message"])
    out.print(t)


@jobs.command("cancel")
@click.argument("job_ids", type=int, nargs=-1, required=True)
def jobs_cancel(job_ids: tuple[int, ...]) -> None:
    """Cancel jobs: their instances are terminated."""

    async def go(c: Client) -> list[Any]:
        return [await c.cancel(j) for j in job_ids]

    for j in run(go):
        out.print(f"job {j['id']}: {j['status']}")


# -- cost and projects -------------------------------------------------------------------


@main.command("cost")
@click.option("--by", type=click.Choice(["job", "service", "project", "region"]), default="job",
              show_default=True, help="One row per job, service, project or provider/region.")
@click.option("--since", default=None,
              help="Only time after this: a date (2025-01-31), a datetime, or a duration (7d).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def cost_cmd(by: str, since: str | None, output: str) -> None:
    """What jobs and services cost: GPU-hours, spot vs on-demand, dollars, saving."""
    report = run(lambda c: c.cost(by=by, since=since))
    if output == "json":
        out.print_json(json.dumps(report))
        return
    t = Table(title=f"Cost by {by}" + (f" since {since}" if since else ""))
    for col in (by.upper(), "PLACEMENTS", "HOURS", "GPU-HOURS", "SPOT H", "ON-DEMAND H", "COST $",
                "ON-DEMAND EQUIV $", "SAVED $", "SAVED %"):
        t.add_column(col, justify="left" if col == by.upper() else "right")
    for r in [*report["rows"], report["total"]]:
        label = r["label"] if by != "job" or r["key"] == "total" else f"{r['key']} {r['label']}"
        t.add_row(
            f"[bold]{label}[/bold]" if r["key"] == "total" else label, str(r["placements"]),
            f"{r['hours']:.2f}", f"{r['gpu_hours']:.2f}", f"{r['spot_hours']:.2f}",
            f"{r['ondemand_hours']:.2f}", f"{r['dollars']:.4f}",
            f"{r['ondemand_equivalent_dollars']:.4f}", f"{r['saving_dollars']:.4f}",
            f"{r['saving_pct']:.0f}%",
        )
    out.print(t)


@main.group()
def project() -> None:
    """Tenants: projects with GPU quotas and their own API tokens."""


@project.command("create")
@click.argument("name")
@click.option("--gpu-quota", type=float, default=None,
              help="Most GPUs the project's active jobs may reserve (default: unlimited).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def project_create(name: str, gpu_quota: float | None, output: str) -> None:
    """Create project NAME and print its API token (shown only this once)."""
    p = run(lambda c: c.create_project(name, gpu_quota=gpu_quota))
    if output == "json":
        out.print_json(json.dumps(p))
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
        out.print_json(json.dumps(rows))
        return
    t = Table()
    for col in ("PROJECT", "GPU QUOTA", "GPUS IN USE", "ACTIVE JOBS", "CREATED"):
        t.add_column(col)
    now = time.time()
    for p in rows:
        t.add_row(p["name"], "unlimited" if p["gpu_quota"] is None else f"{p['gpu_quota']:g}",
                  f"{p['gpus_in_use']:g}", str(p["active_jobs"]), _ago(p["created_at"], now))
    out.print(t)


# -- chaos -------------------------------------------------------------------------------


@main.group()
def chaos() -> None:
    """Inject failures into a live daemon's local provider (for tests and demos)."""


@chaos.command("preempt")
@click.argument("target")
@click.option("--notice", type=float, default=None, help="Give an advance notice of N seconds.")
def chaos_preempt(target: str, notice: float | None) -> None:
    """Preempt TARGET (a job id or an instance id), with or without a notice."""
    body: dict[str, Any] = {"target": target}
    if notice:
        body["notice_seconds"] = notice
    r = run(lambda c: c.chaos("preempt", **body))
    out.print(f"preempted {', '.join(r['preempted'])}"
              + (f" with a {notice:g}s notice" if notice else " without notice"))


@chaos.command("kill-instance")
@click.argument("target")
def chaos_kill(target: str) -> None:
    """SIGKILL the whole process group of an instance (or of a job's node 0): no notice."""
    r = run(lambda c: c.chaos("kill-instance", target=target))
    out.print(f"killed {', '.join(r['killed'])}")


@chaos.command("stockout")
@click.argument("region")
@click.option("--for", "seconds", type=float, default=300.0,
              help="How long (seconds); 0 ends the stockout.")
@click.option("--market", type=click.Choice(["spot", "on-demand"]), default=None,
              help="Only this market (default: both).")
def chaos_stockout(region: str, seconds: float, market: str | None) -> None:
    """Make launches in REGION fail with no capacity for a while."""
    body: dict[str, Any] = {"target": region, "seconds": seconds}
    if market:
        body["market"] = market
    run(lambda c: c.chaos("stockout", **body))
    what = f"{region} ({market})" if market else region
    out.print(f"{what} stocked out for {seconds:g}s" if seconds else f"{what}: stockout ended")


@chaos.command("partition")
@click.argument("target")
@click.option("--for", "seconds", type=float, default=30.0, help="How long (seconds).")
def chaos_partition(target: str, seconds: float) -> None:
    """Block an instance's heartbeats (it keeps running)."""
    r = run(lambda c: c.chaos("partition", target=target, seconds=seconds))
    out.print(f"partitioned {', '.join(r['partitioned'])} for {seconds:g}s")


# -- daemon ------------------------------------------------------------------------------


@main.group()
def daemon() -> None:
    """Start, stop or inspect the local daemon."""


@daemon.command("status")
def daemon_status() -> None:
    from spotd.config import load_settings
    from spotd.server import socket_alive

    s = load_settings()
    if socket_alive(s.socket_path):
        pid = s.pid_path.read_text().strip() if s.pid_path.exists() else "?"
        out.print(f"spotd is running (pid {pid}, home {s.home})")
    else:
        out.print(f"spotd is not running (home {s.home})")
        sys.exit(1)


@daemon.command("start")
def daemon_start() -> None:
    from spotd.sdk.client import start_local_daemon
    from spotd.config import load_settings
    from spotd.server import socket_alive

    s = load_settings()
    if socket_alive(s.socket_path):
        out.print("spotd is already running")
        return
    pid = start_local_daemon(s)
    out.print(f"started spotd (pid {pid}, home {s.home}, log {s.home / 'spotd.log'})")


@daemon.command("stop")
def daemon_stop() -> None:
    """SIGTERM the daemon and wait for it to exit (jobs keep running; it adopts them later)."""
    import os
    import signal

    from spotd.config import load_settings
    from spotd.server import socket_alive

    s = load_settings()
    if not s.pid_path.exists():
        out.print("spotd is not running")
        return
    pid = int(s.pid_path.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        out.print("spotd is not running")
        return
    for _ in range(100):
        if not socket_alive(s.socket_path):
            break
        time.sleep(0.1)
    out.print(f"stopped spotd (pid {pid})")


from spotd.cli.serve import serve  # noqa: E402 - it reads this module's helpers when run

main.add_command(serve)

main.add_command(catalog)


from spotd.sim.cli import simulate  # offline: needs no daemon

main.add_command(simulate)


if __name__ == "__main__":
    main()
