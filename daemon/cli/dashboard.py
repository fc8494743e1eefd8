"""``spotctl dashboard``: a one-time sign-in link to the daemon's web dashboard.

The daemon makes the link (``POST /dashboard/login-link``) for whoever asks: the admin on the
local socket, or the identity of ``$SPOTD_API_TOKEN`` over ``--url``. It is good for one
sign-in within a minute, so it can be printed and pasted; the browser then holds a session
cookie, never the token. Where a browser can be opened (a desktop session), it is opened;
``--no-browser`` only prints the link, for scripts and remote shells.
"""

from __future__ import annotations

import os
import sys
import webbrowser
from typing import Any

import click

from spotd.cli.common import err, out, run

__all__ = ["dashboard"]


def _can_open_browser() -> bool:
    """A graphical session, or a browser named in $BROWSER: ``webbrowser`` would otherwise
    fall back to a text browser inside this terminal (or fail quietly)."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform == "darwin" or sys.platform.startswith("win"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@click.command("dashboard")
@click.option("--no-browser", is_flag=True, help="Print the sign-in link and exit.")
def dashboard(no_browser: bool) -> None:
    """Print (and open in a browser) a one-time sign-in link to the dashboard."""
    r: Any = run(lambda c: c.request("POST", "/dashboard/login-link"))
    url = r.get("url")
    if url is None:
        ctx = click.get_current_context()
        base = getattr(ctx.obj, "url", None)
        if base:  # over --url: the daemon answers with its own view of the host; ours is right
            url = base.rstrip("/") + r["path"]
    if url is None:
        err.print(f"[red]error:[/red] {r.get('error') or 'the daemon gave no URL'}")
        sys.exit(1)
    out.print(url)
    err.print(
        f"[dim]One sign-in as {r.get('who', '?')} within {r.get('expires_in', 60):g}s; "
        "the browser keeps a session after that.[/dim]"
    )
    if not no_browser and _can_open_browser():
        webbrowser.open(url)
