"""Fixtures for the operator features: daemons with extra environment, a fake NVML file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, kill_instance_groups

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gpu_yaml(*, gpus: str = "T4:1", run: str = "sleep 60", nodes: int = 1) -> str:
    return f"name: gpu-job\nnum_nodes: {nodes}\nresources: {{accelerators: '{gpus}'}}\nrun: {run}\n"


def write_nvml(path: Path, data: dict[str, Any]) -> None:
    """What the fake NVML of every agent reports from now on (spotd.telemetry.gpu.FakeNvml)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., DaemonProc]]:
    made: list[DaemonProc] = []

    def make(**env: str) -> DaemonProc:
        home = Path(f"/tmp/spotd-o{os.getpid()}-{time.monotonic_ns() % 10**9}")
        d = DaemonProc(home, env)
        made.append(d)
        d.start()
        return d

    yield make
    for d in made:
        d.stop()
        kill_instance_groups(d.home)
        shutil.rmtree(d.home, ignore_errors=True)
