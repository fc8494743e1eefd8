"""The local daemon as a client sees it: is one answering on its socket, and starting one.

Standard library and ``spotd.config`` only, so ``spotctl daemon status|start|stop`` and the
test fixtures can ask without loading the HTTP client (aiohttp) or anything of the daemon.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from spotd.config import Settings

__all__ = ["DaemonUnreachable", "UntrustedDaemon", "socket_alive", "start_local_daemon"]


class DaemonUnreachable(Exception):
    """No daemon answered (and none could be started)."""


class UntrustedDaemon(DaemonUnreachable):
    """The daemon's TLS certificate did not verify against the CA this client trusts; no
    request (and no token) was sent."""


def socket_alive(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path`` (within a second)."""
    if not path.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def started_daemon_answers(pid_path: Path, socket_path: Path, pid: int) -> bool:
    """Whether the daemon just started as ``pid`` answers: it has written its pid (which it
    does once its socket listens) and the socket accepts. The socket alone could be another
    process's: a daemon killed a moment before, whose stale socket must not pass for it."""
    try:
        written = pid_path.read_text().strip()
    except OSError:
        return False
    return written == str(pid) and socket_alive(socket_path)


def start_local_daemon(settings: Settings, *, timeout: float = 20.0) -> int:
    """Start ``spotd`` in the background for this home; returns its pid once it answers."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = open(settings.home / "spotd.log", "ab")  # noqa: SIM115
    env = dict(os.environ, SPOTD_HOME=str(settings.home))
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotd.main", "--json-logs"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=env,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (settings.home / "spotd.log").read_text(errors="replace")[-2000:]
            raise DaemonUnreachable(f"spotd exited at start (code {proc.returncode}):\n{tail}")
        if started_daemon_answers(settings.pid_path, settings.socket_path, proc.pid):
            return proc.pid
        time.sleep(0.1)
    raise DaemonUnreachable(f"spotd did not answer on {settings.socket_path} within {timeout}s")
