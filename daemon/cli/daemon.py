"""``spotctl daemon status|start|stop``: the local daemon of ``$SPOTD_HOME``; ``spotctl daemon
cluster``: the daemons sharing its database (``SPOTD_HA``).

status/start/stop look at the daemon's socket and pid file directly (``spotd.sdk.local``): they
work when the daemon does not answer, which is when they are needed.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import click

from spotd.cli.common import ago, out, print_json, run
from spotd.config import load_settings
from spotd.sdk.local import socket_alive, start_local_daemon

__all__ = ["daemon"]


@click.group()
def daemon() -> None:
    """Start, stop or inspect the local daemon."""


@daemon.command("status")
def daemon_status() -> None:
    s = load_settings()
    if socket_alive(s.socket_path):
        pid = s.pid_path.read_text().strip() if s.pid_path.exists() else "?"
        out.print(f"spotd is running (pid {pid}, home {s.home})")
    else:
        out.print(f"spotd is not running (home {s.home})")
        sys.exit(1)


@daemon.command("start")
def daemon_start() -> None:
    s = load_settings()
    if socket_alive(s.socket_path):
        out.print("spotd is already running")
        return
    pid = start_local_daemon(s)
    out.print(f"started spotd (pid {pid}, home {s.home}, log {s.home / 'spotd.log'})")


@daemon.command("stop")
def daemon_stop() -> None:
    """SIGTERM the daemon and wait for it to exit (jobs keep running; it adopts them later)."""
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


@daemon.command("cluster")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def daemon_cluster(output: str) -> None:
    """The daemons on this daemon's database: their leases and what each runs."""
    from rich.table import Table

    rows = run(lambda c: c.request("GET", "/v1/daemons"))
    if output == "json":
        print_json(rows)
        return
    if not rows:
        out.print("one daemon, not in a cluster (SPOTD_HA is off)")
        return
    now = time.time()
    t = Table()
    for col in ("DAEMON", "STATE", "EPOCH", "JOBS", "SERVICES", "RENEWED", "URL"):
        t.add_column(col)
    for d in rows:
        if not d["alive"]:
            state = "[red]gone[/red]"
        else:  # a daemon still starting is not handed work yet
            state = "alive" if d.get("ready", True) else "joining"
        name = d["id"] + (" (this)" if d["this"] else "")
        t.add_row(
            name,
            state,
            str(d["epoch"]),
            str(d["jobs"]),
            str(d["services"]),
            ago(d["renewed_at"], now),
            d["url"] or "-",
        )
    out.print(t)
