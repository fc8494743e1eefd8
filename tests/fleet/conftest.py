"""A fleet process started in a session of its own, stopped when the test ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


class FleetProc:
    """``python -m spotd.providers.fleet`` on a unix socket under ``root``."""

    def __init__(self, root: Path, config: dict[str, Any] | None = None) -> None:
        self.root = root
        self.socket = root / "fleet.sock"
        self.config = config or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "fleet.log", "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "spotd.providers.fleet",
                    "--socket",
                    str(self.socket),
                    "--config",
                    json.dumps(self.config),
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "fleet.log").read_text()[-2000:])
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def fleet_proc() -> Iterator[FleetProc]:
    root = Path(f"/tmp/spotd-fleet-{os.getpid()}-{time.monotonic_ns() % 10**9}")
    f = FleetProc(root)
    f.start()
    try:
        yield f
    finally:
        f.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
