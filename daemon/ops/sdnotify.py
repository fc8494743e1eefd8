"""The systemd notify protocol, spoken directly: readiness, shutdown and watchdog pings.

systemd (``Type=notify``) passes ``$NOTIFY_SOCKET``, the address of a datagram socket; a service
reports its state by sending newline-separated ``KEY=VALUE`` assignments to it (``READY=1``,
``STOPPING=1``, ``STATUS=…``, ``WATCHDOG=1``). The protocol is a single ``sendto()``, so it is
implemented here on the standard library rather than through a systemd binding:

- an address starting with ``/`` is a filesystem socket; one starting with ``@`` is in the Linux
  abstract namespace (the ``@`` stands for a leading NUL byte);
- with ``WatchdogSec=`` set, systemd passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the pid
  the setting is meant for) and restarts the service when no ``WATCHDOG=1`` arrives within it.

Why the pings come from the event loop: the daemon's failure mode worth a watchdog is a *wedged
loop* (a blocking call, a busy coroutine), not a dead process — systemd sees a dead process on
its own. :func:`watchdog_loop` is a coroutine, so a loop that stops turning stops the pings and
systemd restarts the daemon; a thread sending pings would keep a wedged daemon "healthy".

Nothing here raises on a missing or broken notify socket: outside systemd every call is a
no-op that returns False, and a daemon must never die because its supervisor went away.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

from spotd.aiokit import sleep

log = structlog.get_logger("spotd.ops.sdnotify")

#: Variables systemd hands to the service itself. Children (job agents, user code) must not
#: inherit them: with ``NotifyAccess=main`` their messages are refused and logged as noise, and a
#: child that is itself systemd-aware would believe it is the service.
NOTIFY_ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_SEND_TIMEOUT = 1.0  # seconds; a send runs on the event loop, it must not hang it


def _address(raw: str) -> str | bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or None if we cannot speak it."""
    if raw.startswith("/"):
        return raw
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + raw[1:].encode()
    # systemd >= 254 may also hand out "vsock:CID:PORT" (services in VMs); not needed for a
    # daemon running on the host, so it is reported as unsupported rather than half-done.
    return None


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"STOPPING=1"``, ``"STATUS=recovering 3 jobs"``).

    Several assignments may be joined with newlines. Returns True when the datagram was sent,
    False when there is no notify socket (not run by systemd) or sending failed.
    """
    environ = os.environ if env is None else env
    raw = environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    addr = _address(raw)
    if addr is None:
        log.warning("unsupported NOTIFY_SOCKET address", notify_socket=raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendto(state.encode(), addr)
    except OSError as exc:
        log.warning("sd_notify failed", notify_socket=raw, state=state, error=str(exc))
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None when there is none.

    None also when ``$WATCHDOG_PID`` names another process: the variables were inherited from a
    parent that systemd watches, and pinging on its behalf would hide the parent's hang.
    """
    environ = os.environ if env is None else env
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.warning("invalid WATCHDOG_USEC", value=raw_usec)
        return None
    if usec <= 0:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            log.warning("invalid WATCHDOG_PID", value=raw_pid)
            return None
    return usec / 1_000_000


async def watchdog_loop(
    stop: asyncio.Event,
    *,
    interval: float | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Send ``WATCHDOG=1`` every half watchdog interval until ``stop`` is set.

    ``interval`` overrides the timeout read from the environment (tests). Without a watchdog
    the coroutine just waits for ``stop``, so it can run as a supervised forever-task whether or
    not systemd asked for pings.
    """
    timeout = interval if interval is not None else watchdog_interval(env)
    if timeout is None:
        await stop.wait()
        return
    period = timeout / 2
    log.info("watchdog enabled", timeout_s=timeout, ping_every_s=period)
    while not stop.is_set():
        notify("WATCHDOG=1", env=env)
        if await sleep(period, stop):
            return


def scrub_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without the notify/watchdog variables, for spawning child processes."""
    return {k: v for k, v in env.items() if k not in NOTIFY_ENV_VARS}
