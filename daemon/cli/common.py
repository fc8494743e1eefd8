"""What every ``spotctl`` command group shares: the consoles, the call into the daemon, and
the small formatters of times and events.

``run`` is the one place that loads the HTTP client: aiohttp costs about 100 ms at startup,
which ``spotctl --help`` and the offline commands (``check``, ``catalog``, ``simulate``) need
not pay.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from spotd.config import Settings
from spotd.sdk.local import DaemonUnreachable

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = [
    "DaemonTarget",
    "ago",
    "dur",
    "err",
    "out",
    "parse_env",
    "print_events",
    "print_json",
    "run",
]

T = TypeVar("T")
# Piped output (scripts, tests) gets wide tables instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)


def _announce(pid: int, settings: Settings) -> None:
    err.print(
        f"[dim]No daemon was running: started spotd in the background (pid {pid}, "
        f"home {settings.home}, log {settings.home / 'spotd.log'})[/dim]"
    )


@dataclass(frozen=True, slots=True)
class DaemonTarget:
    """``spotctl --url/--ca-file``: a daemon over TCP instead of the local socket (None: the
    environment decides, as the SDK's ``Connection()`` does)."""

    url: str | None = None
    ca_file: str | None = None


def run(fn: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``fn`` with a client of the daemon (started if none runs); exit 1 when the daemon
    refuses, 3 when it cannot be reached or its certificate is not trusted."""
    from spotd.sdk.client import ApiError, Client  # aiohttp: only for commands that call

    ctx = click.get_current_context(silent=True)
    target = (ctx.find_object(DaemonTarget) if ctx else None) or DaemonTarget()

    async def go() -> T:
        async with Client.connect(url=target.url, ca_file=target.ca_file, on_start=_announce) as c:
            return await fn(c)

    try:
        return asyncio.run(go())
    except ApiError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True)
        sys.exit(1)
    except DaemonUnreachable as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(3)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data))


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--env K=V`` options as a mapping."""
    env = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected K=V, got {p!r}", param_hint="--env")
        k, v = p.split("=", 1)
        env[k] = v
    return env


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    return dur(now - ts) + " ago"


def dur(sec: float | None) -> str:
    """A duration as people read it: 42s, 3m 5s, 2h 7m."""
    if sec is None:
        return "-"
    sec = int(sec)
    if sec < 60:
        return f"{sec}s"
    if sec < 3600:
        return f"{sec // 60}m {sec % 60}s"
    return f"{sec // 3600}h {sec % 3600 // 60}m"


def print_events(rows: list[dict[str, Any]], output: str, who: tuple[str, str]) -> None:
    """An event log as JSON or a table; ``who``: the column (title, key) naming whose event
    it is (a job's attempt, a service's replica)."""
    if output == "json":
        print_json(rows)
        return
    t = Table()
    for col in ("TIME", "KIND", who[0], "MESSAGE"):
        t.add_column(col)
    for e in rows:
        t.add_row(
            time.strftime("%H:%M:%S", time.localtime(e["at"])),
            e["kind"],
            e[who[1]] or "-",
            e["message"],
        )
    out.print(t)
