"""The environment of the processes a provider starts on the daemon's machine.

Agents, and the jobs they run, must not inherit what systemd hands the daemon's service
(``NOTIFY_SOCKET`` and the watchdog variables): with ``NotifyAccess=main`` their messages are
refused and logged as noise, and a child that is itself systemd-aware would believe it is the
service. The names are systemd's; ``spotd.ops.sdnotify`` speaks the protocol itself, and a test
keeps the two lists equal, so that providers need not depend on ops.
"""

from __future__ import annotations

from collections.abc import Mapping

SERVICE_ONLY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without the service-only variables."""
    return {k: v for k, v in env.items() if k not in SERVICE_ONLY_VARS}
