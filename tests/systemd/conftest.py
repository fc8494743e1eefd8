"""A stand-in for systemd's notify socket: a real AF_UNIX datagram socket the test binds."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass
class NotifySocket:
    sock: socket.socket
    address: str  # the $NOTIFY_SOCKET value: "/path" or "@abstract-name"

    def recv(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return got

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, **extra}


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    """Bound like systemd binds it: a filesystem path, or a name in the abstract namespace."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tmpdir = None
    try:
        if request.param == "path":
            # Short directory: AF_UNIX paths are limited to 107 bytes.
            tmpdir = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
            path = os.path.join(tmpdir, "notify")
            sock.bind(path)
            yield NotifySocket(sock, path)
        else:
            name = f"spotd-test-{uuid.uuid4().hex}"
            sock.bind(b"\0" + name.encode())
            yield NotifySocket(sock, "@" + name)
    finally:
        sock.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
