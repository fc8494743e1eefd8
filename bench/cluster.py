"""Launches per second through the API: one daemon against several on one PostgreSQL.

    python bench/cluster.py [--daemons 1 --daemons 3] [--jobs 1500] [--clients 16] [--json]

Per row: a fresh PostgreSQL database (``SPOTD_TEST_PG_URL``, or ``scripts/pg.sh start``), a
fresh fleet process, N daemons with ``SPOTD_HA=1`` sharing it; ``--clients`` concurrent clients
spread over the daemons' sockets submit ``--jobs`` spot jobs (``sleep infinity``); then the
time until every job runs. The one-daemon row is the reference, measured in the same run on
the same database engine. Everything is torn down after each row; the run is bounded by the
job count and a timeout per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TASK = "name: b\nresources:\n  cpus: 1\n  use_spot: true\nrun: sleep infinity\n"
HEARTBEAT_SECONDS = 60.0


def pg_base() -> str:
    url = os.environ.get("SPOTD_TEST_PG_URL")
    if url:
        return url
    out = subprocess.run(
        ["bash", "scripts/pg.sh", "start"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


class Cluster:
    """A fleet process and ``n`` daemons on a fresh database, torn down by ``close``."""

    def __init__(self, n: int, base_url: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sfc-", dir="/tmp"))
        self.n = n
        self.dbname = f"spotd_bench_{secrets.token_hex(4)}"
        self.server = create_engine(base_url, isolation_level="AUTOCOMMIT")
        with self.server.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{self.dbname}"')
        self.url = (
            make_url(base_url).set(database=self.dbname).render_as_string(hide_password=False)
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            p = subprocess.Popen(
                argv, env=env, stdout=out, stderr=out, start_new_session=True, cwd=ROOT
            )
        self.procs.append(p)
        return p

    def start(self) -> None:
        fleet_sock = self.root / "fleet.sock"
        fleet_cfg = {"launch_seconds": 0.5, "concurrency": 64}
        self._spawn(
            [
                PY,
                "-m",
                "spotd.providers.fleet",
                "--socket",
                str(fleet_sock),
                "--config",
                json.dumps(fleet_cfg),
            ],
            dict(os.environ),
            self.root / "fleet.log",
        )
        shared = self.root / "shared"
        shared.mkdir()
        self.homes = [self.root / f"d{i}" for i in range(self.n)]
        for i, home in enumerate(self.homes):
            env = {
                **os.environ,
                "SPOTD_HOME": str(home),
                "SPOTD_HA": "1",
                "SPOTD_DAEMON_ID": f"d{i}",
                "SPOTD_DB_URL": self.url,
                "SPOTD_SHARED_DIR": str(shared),
                "SPOTD_PROVIDERS_JSON": json.dumps(
                    {"local": {"enabled": False}, "fleet": {"url": f"unix:{fleet_sock}"}}
                ),
                "SPOTD_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
                "SPOTD_SUSPECT_AFTER": str(2.5 * HEARTBEAT_SECONDS),
                "SPOTD_LOST_AFTER": str(5 * HEARTBEAT_SECONDS),
            }
            env.pop("SPOTD_URL", None)
            home.mkdir()
            self._spawn([PY, "-m", "spotd.main", "--json-logs"], env, home / "spotd.log")
        deadline = time.monotonic() + 60
        while not all((h / "spotd.sock").exists() for h in self.homes):
            if time.monotonic() > deadline:
                raise RuntimeError("daemons did not start: see " + str(self.root))
            time.sleep(0.1)

    def running(self) -> int:
        engine = create_engine(self.url)
        try:
            with engine.connect() as c:
                q = text("select count(*) from job where status = 'RUNNING'")
                return int(c.execute(q).scalar_one())
        finally:
            engine.dispose()

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        with self.server.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        self.server.dispose()
        shutil.rmtree(self.root, ignore_errors=True)


async def submit(cluster: Cluster, jobs: int, clients: int) -> float:
    counter = iter(range(jobs))
    errors: list[str] = []
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(h / "spotd.sock"), limit=64),
            timeout=aiohttp.ClientTimeout(total=600),
        )
        for h in cluster.homes
    ]

    async def client(s: aiohttp.ClientSession) -> None:
        for i in counter:
            body = {"yaml": TASK, "filename": "b.yaml", "name": f"b{i}"}
            async with s.post("http://spotd/v1/jobs", json=body) as r:
                if r.status != 201:
                    errors.append(f"{r.status} {await r.text()}")

    try:
        t0 = time.perf_counter()
        spread = itertools.cycle(sessions)
        await asyncio.gather(*(client(next(spread)) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    finally:
        for s in sessions:
            await s.close()
    if errors:
        raise RuntimeError(f"{len(errors)} launches failed, e.g. {errors[0]}")
    return jobs / elapsed


def row(n: int, jobs: int, clients: int, base: str) -> dict[str, Any]:
    cluster = Cluster(n, base)
    try:
        cluster.start()
        load = os.getloadavg()[0]
        rate = asyncio.run(submit(cluster, jobs, clients))
        t0 = time.monotonic()
        while cluster.running() < jobs:
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"not all {jobs} jobs RUNNING after 900 s")
            time.sleep(1.0)
        return {
            "daemons": n,
            "jobs": jobs,
            "load_1m": round(load, 2),
            "submit_per_s": round(rate, 1),
            "to_running_s": round(time.monotonic() - t0, 1),
        }
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--daemons", type=int, action="append", help="daemons (repeatable)")
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = pg_base()
    rows = [row(n, args.jobs, args.clients, base) for n in (args.daemons or [1, 3])]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    ref = rows[0]["submit_per_s"]
    print("| daemons | jobs | API submits/s | vs one daemon | submit → all running |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["submit_per_s"] / ref
        print(
            f"| {r['daemons']} | {r['jobs']} | {r['submit_per_s']} | {ratio:.2f}× | "
            f"{r['to_running_s']} s |"
        )


if __name__ == "__main__":
    main()
