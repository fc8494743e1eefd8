"""A standalone LB never serves its control API (which repoints its traffic) to whoever reaches a
port: without a token it starts only with the control API on a separate loopback port.

Before: ``python -m spotd.lb --port P`` with no token started, and ``PUT /-/replicas`` on the
public proxy port replaced the replica set."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotd.lb.__main__ import control_refusal

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("token", "control_port", "control_host", "refused"),
    [
        ("", None, "127.0.0.1", "on the proxy port without a token"),
        ("", 9001, "0.0.0.0", "on 0.0.0.0 without a token"),
        ("", 9001, "10.0.0.5", "on 10.0.0.5 without a token"),
        ("", 9001, "lb.example", "on lb.example without a token"),
        ("", 9001, "127.0.0.1", None),  # the daemon's own LBs
        ("", 9001, "127.0.0.9", None),
        ("", 9001, "::1", None),
        ("", 9001, "localhost", None),
        ("secret", None, "127.0.0.1", None),
        ("secret", 9001, "0.0.0.0", None),
    ],
)
def test_control_refusal(
    token: str, control_port: int | None, control_host: str, refused: str | None
) -> None:
    why = control_refusal(token=token, control_port=control_port, control_host=control_host)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why and "--token" in why


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lb(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SPOTD_LB_TOKEN"}
    return subprocess.Popen(
        [sys.executable, "-m", "spotd.lb", "--port", str(_free_port()), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    "args",
    [(), ("--control-port", "0", "--control-host", "0.0.0.0")],
    ids=["control-on-proxy-port", "control-on-all-addresses"],
)
def test_lb_without_a_token_refuses_an_exposed_control_api(args: tuple[str, ...]) -> None:
    proc = _lb(*args)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2
    assert "refusing to serve the control API" in err and "Traceback" not in err


def test_lb_without_a_token_starts_with_a_loopback_control_port() -> None:
    cport = _free_port()
    proc = _lb("--control-port", str(cport))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", cport)) == 0:
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the LB's control port never opened")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
