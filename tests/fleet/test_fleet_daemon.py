"""A real daemon on the fleet provider: hundreds of jobs, spot reclaims, every job ends right.

The daemon (``python -m spotd.main``) and the fleet process are real processes; the fleet
reclaims spot instances at random (a rate), and its agents report over the daemon's agent
socket. At the end every job must be in the status its ``run`` script calls for, each job's
``run`` must have completed exactly once (no attempt ran it twice), every instance the fleet
launched must be one the daemon recorded, and none may be left running.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DaemonProc, kill_instance_groups
from tests.fleet.conftest import FleetProc

pytestmark = pytest.mark.slow

JOBS = 240
OK_TASK = "name: ok\nresources:\n  cpus: 1\n  use_spot: true\nrun: sleep 4\n"
BAD_TASK = "name: bad\nresources:\n  cpus: 1\n  use_spot: true\nrun: sleep 1; exit 3\n"


@pytest.fixture
def rig() -> Iterator[tuple[DaemonProc, FleetProc]]:
    home = Path(f"/tmp/spotd-fd{os.getpid()}-{time.monotonic_ns() % 10**8}")
    # mean spot life 12 s: about a quarter of the 4-second runs are reclaimed at least once
    fleet = FleetProc(
        home / "fleet",
        {"launch_seconds": 0.3, "preempt_rate_per_hour": 300, "seed": 7, "concurrency": 32},
    )
    fleet.start()
    env = {
        "SPOTD_PROVIDERS_JSON": json.dumps(
            {"local": {"enabled": False}, "fleet": {"url": fleet.url}}
        ),
        # agents report on change and keep alive every 5 s: hundreds of them stay cheap
        "SPOTD_HEARTBEAT_SECONDS": "5",
        "SPOTD_SUSPECT_AFTER": "15",
        "SPOTD_LOST_AFTER": "60",
        "SPOTD_OBSERVE_INTERVAL": "0.5",
    }
    daemon = DaemonProc(home, env)
    try:
        daemon.start()
        yield daemon, fleet
    finally:
        daemon.stop()
        fleet.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


async def submit(daemon: DaemonProc) -> dict[int, str]:
    want: dict[int, str] = {}
    async with daemon.client() as c:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            task = BAD_TASK if i % 10 == 0 else OK_TASK
            async with sem:
                job = await c.launch(task, filename=f"t{i}.yaml", name=f"t{i}")
            want[job["id"]] = "FAILED" if task is BAD_TASK else "SUCCEEDED"

        await asyncio.gather(*(one(i) for i in range(JOBS)))
    return want


def db(daemon: DaemonProc) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{daemon.home / 'state.db'}?mode=ro", uri=True, timeout=30)


async def fleet_get(fleet: FleetProc, path: str) -> object:
    conn = aiohttp.UnixConnector(path=str(fleet.socket))
    async with aiohttp.ClientSession(connector=conn) as s, s.get(f"http://fleet{path}") as r:
        return await r.json()


async def test_hundreds_of_jobs_with_reclaims_all_end_right_and_run_once(
    rig: tuple[DaemonProc, FleetProc],
) -> None:
    daemon, fleet = rig
    want = await submit(daemon)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        with db(daemon) as c:
            open_jobs = c.execute(
                "select count(*) from job where status not in "
                "('SUCCEEDED','FAILED','FAILED_SETUP','FAILED_NO_RESOURCE','CANCELLED')"
            ).fetchone()[0]
        if open_jobs == 0:
            break
        await asyncio.sleep(2)
    with db(daemon) as c:
        status = dict(c.execute("select id, status from job").fetchall())
        preemptions = c.execute("select sum(preemptions) from job").fetchone()[0]
        runs_done = dict(
            c.execute(
                "select job_id, count(*) from instance where phase = 'exited' group by job_id"
            ).fetchall()
        )
        recorded = {
            k for (k,) in c.execute("select key from instance where instance_id is not null")
        }
    assert status == want, {j: s for j, s in status.items() if want.get(j) != s}
    assert preemptions > JOBS // 10, "the fleet should have reclaimed many instances"
    # every job's run completed exactly once: a recovery never ran it twice at once
    assert runs_done == dict.fromkeys(want, 1)
    stats = await fleet_get(fleet, "/v1/stats")
    assert isinstance(stats, dict)
    assert stats["launches"] == len(recorded)  # nothing launched behind the store's back
    # nothing left running: the daemon terminated every instance of every ended job
    end = time.monotonic() + 30
    while time.monotonic() < end:
        listed = []
        for region in ("fleet-east", "fleet-central", "fleet-west"):
            got = await fleet_get(fleet, f"/v1/regions/{region}/instances")
            assert isinstance(got, list)
            listed += [i for i in got if i["state"] in ("PENDING", "RUNNING", "NOTICE")]
        if not listed:
            break
        await asyncio.sleep(1)
    assert listed == []
