"""``spotctl serve``: services, with SkyServe's verbs (``sky serve up|status|update|down|logs``).

``serve up`` and ``serve update`` ship the task's workdir and local file_mounts as ``jobs
launch`` does (packed here, only what the daemon lacks uploaded; every replica restores them),
and with ``--wait`` stay until the replicas are READY. Progress goes to stderr
(``spotd.cli.progress``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

from spotd.cli.common import ago, err, out, parse_env, print_events, print_json, run
from spotd.cli.progress import FilesProgress, Mode, ReplicaWait, progress_mode, upload_line
from spotd.sdk.client_serve import (
    serve_down,
    serve_events,
    serve_logs,
    serve_status,
    serve_up,
    serve_update,
)
from spotd.sdk.uploads import SourceError, local_sources

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = ["serve"]

T = TypeVar("T")

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


HOST_PATHS = click.option(
    "--host-paths",
    is_flag=True,
    help="workdir/file_mounts name paths on the daemon's host, not uploaded (the admin's, "
    "under the daemon's file_roots).",
)
WAIT = click.option(
    "--wait", is_flag=True, help="Stay until the replicas are READY (progress on stderr)."
)
TIMEOUT = click.option(
    "--timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="With --wait: give up (exit 1) after this many seconds; the service keeps going.",
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
@HOST_PATHS
@WAIT
@TIMEOUT
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def serve_up_cmd(
    file: str,
    name: str | None,
    envs: tuple[str, ...],
    project: str | None,
    output: str,
    yes: bool,
    host_paths: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Start a service from FILE (a task with a `service:` section)."""
    text = Path(file).read_text()
    env = parse_env(envs)
    mode = progress_mode(err, output)

    async def go(c: Client) -> Any:
        files = _files_progress(mode, text, file, env, host_paths)
        try:
            svc = await serve_up(
                c,
                text,
                filename=file,
                name=name,
                env=env,
                project=project,
                host_paths=host_paths,
                progress=files.update,
            )
        finally:
            files.close()
        _announce_upload(svc, output)
        if wait:
            return _kept_upload(svc, await _wait_ready(c, svc["name"], None, mode, timeout))
        return svc

    svc = _run_shipping(go)
    if output == "json":
        print_json(svc)
        return
    if wait:
        out.print(
            f"Service [bold]{svc['name']}[/bold] is READY: {svc['ready_replicas']} replica(s), "
            f"endpoint [bold]{svc['endpoint']}[/bold]"
        )
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
@HOST_PATHS
@WAIT
@TIMEOUT
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def serve_update_cmd(
    name: str,
    file: str,
    mode: str,
    envs: tuple[str, ...],
    yes: bool,
    host_paths: bool,
    wait: bool,
    timeout: float,
    output: str,
) -> None:
    """Move service NAME to a new version from FILE without dropping requests."""
    text = Path(file).read_text()
    env = parse_env(envs)
    shown = progress_mode(err, output)

    async def go(c: Client) -> Any:
        files = _files_progress(shown, text, file, env, host_paths)
        try:
            svc = await serve_update(
                c,
                name,
                text,
                filename=file,
                mode=mode,
                env=env,
                host_paths=host_paths,
                progress=files.update,
            )
        finally:
            files.close()
        _announce_upload(svc, output)
        if wait:
            return _kept_upload(
                svc, await _wait_ready(c, name, int(svc["version"]), shown, timeout)
            )
        return svc

    svc = _run_shipping(go)
    if output == "json":
        print_json(svc)
    elif wait:
        out.print(f"Service [bold]{svc['name']}[/bold]: version {svc['version']} is READY.")
    else:
        out.print(
            f"Service [bold]{svc['name']}[/bold]: version {svc['version']} rolling out ({mode})."
        )


def _files_progress(
    mode: Mode, text: str, file: str, env: dict[str, str], host_paths: bool
) -> FilesProgress:
    files = FilesProgress(err, mode)
    if not host_paths:
        files.packing(list(local_sources(text, filename=file, env=env, base=Path.cwd())))
    return files


def _announce_upload(svc: dict[str, Any], output: str) -> None:
    if output == "table" and "upload" in svc:
        out.print(upload_line(svc["upload"]))


def _kept_upload(answer: dict[str, Any], waited: dict[str, Any]) -> dict[str, Any]:
    """The service as the wait ended, with what the request's upload cost."""
    return waited | ({"upload": answer["upload"]} if "upload" in answer else {})


async def _wait_ready(
    c: Client, name: str, version: int | None, mode: Mode, timeout: float
) -> dict[str, Any]:
    """Until the service's target is READY (of ``version``, with no older replica left)."""

    def done(s: dict[str, Any]) -> bool:
        live = [r for r in s["replicas"] if r["ended_at"] is None]
        v = version if version is not None else s["version"]
        ready = sum(1 for r in live if r["status"] == "READY" and r["version"] == v)
        return ready >= max(int(s["target"]), 1) and all(r["version"] == v for r in live)

    return await ReplicaWait(err, mode).run(
        lambda: serve_status(c, name), done, version=version, timeout=timeout
    )


def _run_shipping(go: Callable[[Client], Awaitable[T]]) -> T:
    """``run``, with a local source that cannot be packed, or a wait that timed out, as an
    error line and exit 1 (as a refusal by the daemon is)."""
    try:
        return run(go)
    except (SourceError, TimeoutError) as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)
        sys.exit(1)


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
