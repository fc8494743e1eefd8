"""spotd.ops.sdnotify speaks systemd's notify protocol to a real datagram socket."""

from __future__ import annotations

import os
import socket
import struct
import tempfile

import pytest

from spotd.ops import sdnotify
from tests.systemd.conftest import NotifySocket


def test_ready_reaches_the_socket(notify_socket: NotifySocket) -> None:
    assert sdnotify.notify("READY=1", env=notify_socket.env()) is True
    assert notify_socket.recv() == "READY=1"


def test_reads_notify_socket_from_the_process_environment(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    assert sdnotify.notify("STOPPING=1") is True
    assert notify_socket.recv() == "STOPPING=1"


def test_several_assignments_arrive_as_one_datagram(notify_socket: NotifySocket) -> None:
    sdnotify.notify("READY=1\nSTATUS=listening on spotd.sock", env=notify_socket.env())
    assert notify_socket.recv() == "READY=1\nSTATUS=listening on spotd.sock"
    assert notify_socket.drain() == []


def test_sender_is_this_process_as_notify_access_main_requires() -> None:
    """systemd reads the sender's pid from SCM_CREDENTIALS; it must be the daemon's own pid."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        name = f"spotd-test-cred-{os.getpid()}"
        sock.bind(b"\0" + name.encode())
        assert sdnotify.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        sock.settimeout(2)
        data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    assert data == b"WATCHDOG=1"
    creds = [
        d
        for level, kind, d in ancdata
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    ]
    assert creds, "no SCM_CREDENTIALS received"
    pid, uid, _gid = struct.unpack("3i", creds[0][: struct.calcsize("3i")])
    assert (pid, uid) == (os.getpid(), os.getuid())


def test_outside_systemd_notify_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


@pytest.mark.parametrize(
    "address",
    [
        "relative/notify",  # systemd only hands out absolute paths or @names
        "@",  # an empty abstract name
        "vsock:2:1234",  # VM addresses are not spoken here
    ],
)
def test_unusable_addresses_are_refused_without_raising(address: str) -> None:
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": address}) is False


def test_a_vanished_socket_does_not_raise() -> None:
    """The daemon must outlive its supervisor's socket: a failed send is False, not an error."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        assert sdnotify.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": f"{d}/gone"}) is False


def test_children_do_not_inherit_the_notify_variables() -> None:
    env = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1234",
        "SPOTD_HOME": "/var/lib/spotd",
    }
    assert sdnotify.scrub_env(env) == {"PATH": "/usr/bin", "SPOTD_HOME": "/var/lib/spotd"}
