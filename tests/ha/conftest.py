"""Several real daemons on one real PostgreSQL, one fleet process, and a balancer in front.

``Cluster`` starts each daemon (``tests.conftest.DaemonProc``, ``python -m spotd.main``) with
its own home, API port and agent port, and the same database, shared directory, admin token
and agent URL: the balancer's (``tests.ha.balancer``), what a Kubernetes Service is to the
daemons' pods. Every daemon connects to PostgreSQL with its own ``application_name`` (its id),
so a trigger can tell which daemon wrote a row (``install_audit``). The fleet process is the
cloud all of them share.

PostgreSQL comes from ``SPOTD_TEST_PG_URL`` (``export SPOTD_TEST_PG_URL=$(bash scripts/pg.sh
start)``); each test gets a database of its own, dropped at the end. Without the variable the
tests are skipped locally and fail in CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy
from sqlalchemy.engine import make_url

from tests.conftest import DaemonProc, kill_instance_groups
from tests.fleet.conftest import FleetProc
from tests.ha.balancer import Balancer, Target

LEASE_LOST_EXIT = 75  # EX_TEMPFAIL: a daemon whose lease lapsed exits with it
TERMINAL = ("SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED")
AUDITED = ("job", "attempt", "instance", "event", "service", "daemon")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """Daemons ``ids`` of one cluster: start, kill -9, pause, resume, restart any of them."""

    def __init__(
        self,
        root: Path,
        db_url: str,
        fleet: FleetProc,
        ids: Sequence[str],
        *,
        lease_seconds: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.db_url = db_url
        self.fleet = fleet
        self.ids = list(ids)
        self.lease_seconds = lease_seconds
        self.token = f"ha-admin-{secrets.token_hex(8)}"
        self.api_ports = {i: free_port() for i in self.ids}
        self.agent_ports = {i: free_port() for i in self.ids}
        self.balancer = Balancer(
            free_port(),
            [Target(self.agent_ports[i], self.api_ports[i]) for i in self.ids],
            self.token,
        )
        shared = root / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        self.daemons = {
            i: DaemonProc(root / i, {**self._env(i, shared), **(env or {})}) for i in self.ids
        }
        self.engine = sqlalchemy.create_engine(
            make_url(db_url).update_query_dict({"application_name": "ha-test"}),
            pool_pre_ping=True,
        )

    def _env(self, daemon_id: str, shared: Path) -> dict[str, str]:
        url = make_url(self.db_url).update_query_dict({"application_name": daemon_id})
        return {
            "SPOTD_HA": "1",
            "SPOTD_DAEMON_ID": daemon_id,
            "SPOTD_LEASE_SECONDS": str(self.lease_seconds),
            "SPOTD_DB_URL": url.render_as_string(hide_password=False),
            "SPOTD_SHARED_DIR": str(shared),
            "SPOTD_TCP": f"127.0.0.1:{self.api_ports[daemon_id]}",
            "SPOTD_API_TOKEN": self.token,
            "SPOTD_AGENT_TCP": f"127.0.0.1:{self.agent_ports[daemon_id]}",
            "SPOTD_AGENT_URL": f"http://127.0.0.1:{self.balancer.port}",
            "SPOTD_PROVIDERS_JSON": json.dumps(
                {"local": {"enabled": False}, "fleet": {"url": self.fleet.url}}
            ),
            # agents report on change and keep alive every 5 s: hundreds of them stay cheap
            "SPOTD_HEARTBEAT_SECONDS": "5",
            "SPOTD_SUSPECT_AFTER": "15",
            "SPOTD_LOST_AFTER": "60",
            "SPOTD_OBSERVE_INTERVAL": "0.5",
        }

    # -- the daemons' processes --------------------------------------------------------------

    def proc(self, daemon_id: str) -> subprocess.Popen[bytes]:
        proc = self.daemons[daemon_id].proc
        assert proc is not None, f"{daemon_id} never started"
        return proc

    def start(self, daemon_id: str, timeout: float = 90.0) -> None:
        """Start (or restart) it; returns once its socket answers."""
        self.daemons[daemon_id].start(timeout=timeout)

    def running(self, daemon_id: str) -> bool:
        proc = self.daemons[daemon_id].proc
        return proc is not None and proc.poll() is None

    def kill9(self, daemon_id: str) -> None:
        self.daemons[daemon_id].kill9()

    def signal(self, daemon_id: str, sig: signal.Signals) -> None:
        os.killpg(self.proc(daemon_id).pid, sig)

    def log(self, daemon_id: str) -> str:
        path = self.daemons[daemon_id].home / "spotd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api_url(self, daemon_id: str) -> str:
        return f"http://127.0.0.1:{self.api_ports[daemon_id]}"

    def client(self, daemon_id: str) -> Any:
        from spotd.sdk.client import Client

        return Client.connect(url=self.api_url(daemon_id), token=self.token, autostart=False)

    async def api_get(self, daemon_id: str, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(headers=headers, timeout=timeout) as s,
            s.get(self.api_url(daemon_id) + path) as r,
        ):
            assert r.status == 200, (path, r.status, await r.text())
            return await r.json()

    def stop_all(self) -> None:
        for d in self.daemons.values():
            if d.proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.proc.pid, signal.SIGCONT)  # a paused one cannot hear SIGTERM
            d.stop()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.proc.pid, signal.SIGKILL)

    # -- the database, read directly ---------------------------------------------------------

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sqlalchemy.text(sql), params)]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sqlalchemy.text(sql), params).scalar()

    def db_now(self) -> float:
        """The database's clock (leases are kept on it), now: not the transaction's start."""
        return float(self.scalar("SELECT extract(epoch FROM clock_timestamp())"))

    def install_audit(self) -> None:
        """Record who (``application_name``: the daemon's id) changed which row, and when (the
        database's clock), for every change to the tables a daemon writes from now on."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE IF NOT EXISTS ha_audit (seq bigserial PRIMARY KEY, tbl text, "
                "op text, app text, at double precision, row_key text)"
            )
            conn.exec_driver_sql(
                """
                CREATE OR REPLACE FUNCTION ha_audit() RETURNS trigger AS $$
                DECLARE
                  r jsonb := COALESCE(to_jsonb(NEW), to_jsonb(OLD));
                BEGIN
                  INSERT INTO ha_audit (tbl, op, app, at, row_key) VALUES (
                    TG_TABLE_NAME, TG_OP, current_setting('application_name'),
                    extract(epoch FROM clock_timestamp()), COALESCE(r->>'id', r->>'key'));
                  RETURN NULL;
                END $$ LANGUAGE plpgsql
                """
            )
            for table in AUDITED:
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS ha_audit_{table} ON {table}")
                conn.exec_driver_sql(
                    f"CREATE TRIGGER ha_audit_{table} AFTER INSERT OR UPDATE OR DELETE ON "
                    f"{table} FOR EACH ROW EXECUTE FUNCTION ha_audit()"
                )

    def wait_schema(self, timeout: float = 60.0) -> None:
        """Until the first daemon has created the tables."""
        deadline = time.monotonic() + timeout
        while self.scalar("SELECT to_regclass('daemon') IS NOT NULL") is not True:
            assert time.monotonic() < deadline, "no daemon created the schema"
            time.sleep(0.2)

    # -- the fleet ---------------------------------------------------------------------------

    async def fleet_call(self, method: str, path: str, body: Any = None) -> Any:
        conn = aiohttp.UnixConnector(path=str(self.fleet.socket))
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(connector=conn, timeout=timeout) as s,
            s.request(method, f"http://fleet{path}", json=body) as r,
        ):
            assert r.status == 200, (path, r.status, await r.text())
            return await r.json()


@contextlib.contextmanager
def cluster(
    pg_url: str,
    ids: Sequence[str],
    *,
    lease_seconds: float,
    fleet_config: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
) -> Iterator[Cluster]:
    """A fleet, a balancer and the (not yet started) daemons ``ids``; every process of them is
    gone when it exits."""
    root = Path(f"/tmp/spotd-ha{os.getpid()}-{time.monotonic_ns() % 10**8}")
    fleet = FleetProc(root / "fleet", dict(fleet_config))
    made: Cluster | None = None
    try:
        fleet.start()
        made = Cluster(root, pg_url, fleet, ids, lease_seconds=lease_seconds, env=env)
        with made.balancer:
            try:
                yield made
            finally:
                made.stop_all()
    finally:
        if made is not None:
            made.engine.dispose()
        fleet.stop()
        kill_instance_groups(root)
        shutil.rmtree(root, ignore_errors=True)
