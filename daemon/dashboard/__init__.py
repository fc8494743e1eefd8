"""The web dashboard the daemon serves: jobs, preemptions, services, fleet and cost.

Mounted by the composition root on the daemon's own listeners (``mount_dashboard``): the
unix socket and, when configured, the TCP listener, where a browser signs in with a token or
a one-time link (``spotctl dashboard``). See ``docs/dashboard.md``.
"""

from aiohttp import web

from spotd.dashboard.app import make_dashboard
from spotd.dashboard.render import PREFIX
from spotd.dashboard.state import Dashboard

__all__ = ["PREFIX", "Dashboard", "make_dashboard", "mount_dashboard"]


def mount_dashboard(app: web.Application, dashboard: Dashboard, *, tcp: bool) -> None:
    """Serve the dashboard at ``/dashboard`` on a listener's application."""
    app.add_subapp(PREFIX, make_dashboard(dashboard, tcp=tcp))
