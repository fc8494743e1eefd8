"""``spotctl serve``: services, with SkyServe's verbs (``sky serve up|status|update|down|logs``)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

from spotd.cli.common import ago, err, out, parse_env, print_events, print_json, run
from spotd.sdk.client_serve import (
    serve_down,
    serve_events,
    serve_logs,
    serve_status,
    serve_up,
    serve_update,
)

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = ["serve"]

SERVICE_STYLE = MappingProxyType(
    {
        "READY": "green",
        "STARTING": "yellow",
        "NO_REPLICA": "magenta",
        "SHUTTING_DOWN": "dim",
        "DOWN": "dim",
    }
)
REPLICA_STYLE = MappingProxyType(
    {
        "READY": "green",
        "STARTING": "yellow",
        "PROVISIONING": "yellow",
        "NOT_READY": "magenta",
        "DRAINING": "cyan",
        "SHUTTING_DOWN": "dim",
        "TERMINATED": "dim",
        "PREEMPTED": "magenta",
    }
)


@click.group()
def serve() -> None:
    """Services: replicas on spot capacity behind a load balancer."""


@serve.command("up")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-n", "--service-name", "name", default=None, help="Service name (default: the task's name)."
)
@click.option("--env", "envs", multiple=True, help="K=V override for envs (repeatable).")
@click.option(
    "--project",
    default=None,
    help="The project the service belongs to and reserves its GPUs from (default: default).",
)
@click.option("-y", "--yes", is_flag=True, help="Accepted for SkyPilot habits; spotd never asks.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def serve_up_cmd(
    file: str,
    name: str | None,
    envs: tuple[str, ...],
    project: str | None,
    output: str,
    yes: bool,
) -> None:
    """Start a service from FILE (a task with a `service:` section)."""
    text = Path(file).read_text()
    svc = run(
        lambda c: serve_up(c, text, filename=file, name=name, env=parse_env(envs), project=project)
    )
    if output == "json":
        print_json(svc)
        return
    out.print(
        f"Service [bold]{svc['name']}[/bold] is starting: {svc['target']} replica(s), "
        f"endpoint [bold]{svc['endpoint']}[/bold]"
    )
    out.print(f"  spotctl serve status {svc['name']} --watch    # follow the replicas")
    out.print(f"  curl {svc['endpoint']}/v1/models")


@serve.command("status")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("-w", "--watch", is_flag=True, help="Redraw every second until Ctrl-C.")
@click.option(
    "-v",
    "--verbose",
    "--all",
    "verbose",
    is_flag=True,
    help="Also ended replicas, and each replica's last message.",
)
def serve_status_cmd(name: str | None, output: str, watch: bool, verbose: bool) -> None:
    """Show services and their replicas."""
    if output == "json":
        data = run(lambda c: serve_status(c, name, all_replicas=verbose))
        print_json(data)
        return
    if not watch:
        _print(run(lambda c: serve_status(c, name, all_replicas=verbose)), verbose)
        return

    async def loop(c: Client) -> None:
        with Live(console=out, refresh_per_second=2) as live:
            while True:
                data = await serve_status(c, name, all_replicas=verbose)
                live.update(_tables(data, verbose))
                await asyncio.sleep(1.0)

    try:
        run(loop)
    except KeyboardInterrupt:
        pass


def _tables(data: Any, verbose: bool) -> RenderableType:
    services = data if isinstance(data, list) else [data]
    parts: list[RenderableType] = [_services_table(services)]
    for s in services:
        if s["replicas"]:
            parts.append(_replicas_table(s, verbose))
    return Group(*parts)


def _print(data: Any, verbose: bool) -> None:
    services = data if isinstance(data, list) else [data]
    if not services:
        out.print("No services.")
        return
    out.print(_tables(data, verbose))


def _services_table(services: list[dict[str, Any]]) -> Table:
    now = time.time()
    t = Table(title="Services")
    for col in ("NAME", "VERSION", "UPTIME", "STATUS", "REPLICAS", "TARGET", "$/h", "ENDPOINT"):
        t.add_column(col)
    for s in services:
        st = s["status"]
        t.add_row(
            s["name"],
            str(s["version"]),
            ago(s["created_at"], now).removesuffix(" ago"),
            f"[{SERVICE_STYLE.get(st, 'red')}]{st}[/]",
            f"{s['ready_replicas']}/{len([r for r in s['replicas'] if r['ended_at'] is None])}",
            str(s["target"]),
            f"{s['price_per_hour']:.3f}",
            s["endpoint"],
        )
    return t


def _replicas_table(s: dict[str, Any], verbose: bool) -> Table:
    now = time.time()
    t = Table(title=f"Replicas of {s['name']}")
    cols = ["ID", "VERSION", "ZONE", "MARKET", "URL", "LAUNCHED", "STATUS"]
    if verbose:
        cols.append("DETAIL")
    for col in cols:
        t.add_column(col)
    for r in s["replicas"]:
        st = r["status"]
        cells = [
            str(r["id"]),
            str(r["version"]),
            f"{r['region']}/{r['zone']}",
            r["market"],
            r["url"] or "-",
            ago(r["created_at"], now),
            f"[{REPLICA_STYLE.get(st, 'red')}]{st}[/]",
        ]
        if verbose:
            cells.append(r["message"])
        t.add_row(*cells)
    return t


@serve.command("update")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--mode",
    type=click.Choice(["rolling", "blue_green"]),
    default="rolling",
    help="rolling: old replicas leave one by one as new ones become READY; "
    "blue_green: all at once when the new set is READY.",
)
@click.option("--env", "envs", multiple=True, help="K=V override for envs (repeatable).")
@click.option("-y", "--yes", is_flag=True, help="Accepted for SkyPilot habits; spotd never asks.")
def serve_update_cmd(name: str, file: str, mode: str, envs: tuple[str, ...], yes: bool) -> None:
    """Move service NAME to a new version from FILE without dropping requests."""
    text = Path(file).read_text()
    svc = run(lambda c: serve_update(c, name, text, filename=file, mode=mode, env=parse_env(envs)))
    out.print(f"Service [bold]{svc['name']}[/bold]: version {svc['version']} rolling out ({mode}).")


@serve.command("down")
@click.argument("names", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Accepted for SkyPilot habits; spotd never asks.")
def serve_down_cmd(names: tuple[str, ...], yes: bool) -> None:
    """Tear down services: every replica and the load balancer are stopped."""

    async def go(c: Client) -> list[Any]:
        return [await serve_down(c, n) for n in names]

    for s in run(go):
        out.print(f"service {s['name']}: {s['status']}")


@serve.command("events")
@click.argument("name")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def serve_events_cmd(name: str, output: str) -> None:
    """Show a service's event log: replicas launched, ready, drained, lost, ejected by the
    load balancer, and the autoscaler's and planner's decisions, each with its reason."""
    print_events(run(lambda c: serve_events(c, name)), output, ("REPLICA", "replica"))


@serve.command("logs")
@click.argument("name")
@click.argument("replica", type=int, required=False)
@click.option("--lb", "--load-balancer", "lb", is_flag=True, help="The load balancer's log.")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming.")
def serve_logs_cmd(name: str, replica: int | None, lb: bool, follow: bool) -> None:
    """Print a replica's log (or every replica's, or the load balancer's with --lb)."""
    if lb and replica is not None:
        err.print("give a REPLICA or --lb, not both")
        sys.exit(2)

    async def go(c: Client) -> None:
        async for chunk in serve_logs(c, name, replica=replica, lb=lb, follow=follow):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()

    run(go)
