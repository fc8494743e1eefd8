"""Fixtures shared by every tier: a real daemon process on a temporary SPOTD_HOME."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAST_ENV = {
    "SPOTD_OBSERVE_INTERVAL": "0.2",
    "SPOTD_HEARTBEAT_SECONDS": "0.2",
    "SPOTD_SUSPECT_AFTER": "1.0",
    "SPOTD_LOST_AFTER": "30",
    "SPOTD_CHECKPOINT_SYNC_SECONDS": "0.2",
    "SPOTD_TERM_GRACE_SECONDS": "3",
}


def kill_instance_groups(home: Path) -> None:
    """Kill everything a test's daemon left running under ``home`` (test hygiene): every local
    instance's process group, and any other process that names the home in its command line
    or environment: the services' load balancers (they outlive the daemon by design) and jobs
    that left their agent's process group."""
    for meta in [
        *(home / "local" / "instances").glob("*/meta.json"),
        *(home / "local" / "state").glob("*/meta.json"),
    ]:
        with contextlib.suppress(Exception):
            os.killpg(json.loads(meta.read_text())["pid"], signal.SIGKILL)
    # the home itself or a path inside it (not another home that merely starts the same way)
    needles = (str(home).encode() + b"/", str(home).encode() + b"\0")
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            seen = (proc / "cmdline").read_bytes() + b"\0" + (proc / "environ").read_bytes()
            if any(n in seen for n in needles):
                os.kill(int(proc.name), signal.SIGKILL)


class DaemonProc:
    """A real `spotd` process; start, SIGKILL, restart, talk to it."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = {**os.environ, "SPOTD_HOME": str(home), **FAST_ENV, **(extra_env or {})}
        self.env.pop("SPOTD_URL", None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.home / "spotd.sock"

    def start(self, timeout: float = 20.0) -> None:
        from spotd.sdk.local import started_daemon_answers

        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "spotd.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spotd.main", "--json-logs"],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spotd exited {self.proc.returncode}:\n{self.log_tail()}")
            if started_daemon_answers(self.home / "spotd.pid", self.socket, self.proc.pid):
                return
            time.sleep(0.05)
        self.proc.kill()  # a daemon that did not come up must not outlive the test
        self.proc.wait(10)
        raise RuntimeError(f"spotd did not start in {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        p = self.home / "spotd.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def client(self):
        from spotd.config import load_settings
        from spotd.sdk.client import Client

        return Client.connect(settings=load_settings(self.home, env=self.env), autostart=False)

    def spotctl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "spotd.cli.main", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    # unix socket paths are limited to ~107 bytes: keep the home short
    home = Path(f"/tmp/spotd-t{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(home)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        kill_instance_groups(home)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


PG_ENV = "SPOTD_TEST_PG_URL"
PG_HOWTO = f"export {PG_ENV}=$(bash scripts/pg.sh start)"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL, dropped (connections and all) at the end. No
    server: skipped, but under CI=true a failure (the postgres tier must run)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {PG_ENV} is not: the postgres tests must run ({PG_HOWTO})")
        pytest.skip(f"PostgreSQL not configured: {PG_HOWTO} to run these")
    name = f"spotd_t_{secrets.token_hex(5)}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Any]:
    """A real store (``AsyncStore``) on a SQLite file of its own, closed after the test.
    (``tests/store`` has its own ``store``: the synchronous one, on SQLite and PostgreSQL.)"""
    from spotd.store import AsyncStore

    s = await AsyncStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        yield s
    finally:
        await s.close()
