"""One real daemon per test module (starting one per test would dominate the run time)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spotd
from tests.conftest import DaemonProc, kill_instance_groups


@pytest.fixture(scope="module")
def sdk_daemon() -> Iterator[DaemonProc]:
    home = Path(f"/tmp/spotd-sdk{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(home)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def conn(sdk_daemon: DaemonProc) -> spotd.Connection:
    return spotd.Connection(home=sdk_daemon.home, autostart=False)


def short_home(tag: str) -> Path:
    """A SPOTD_HOME short enough for a unix socket path (~107 bytes)."""
    return Path(f"/tmp/spotd-{tag}{os.getpid()}-{time.monotonic_ns() % 10**9}")
