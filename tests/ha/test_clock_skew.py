"""Daemons whose clocks differ still agree on which instances are alive.

Two real daemons (A and B) on one PostgreSQL and one fleet; B's clock runs 90 s behind
(Debian's libfaketime, preloaded into B alone; its monotonic clock is left alone). A's agents
are told B's agent address, so every heartbeat of the instances A launched is received by B,
while A — which submitted the jobs and runs them — judges them. Stamped with B's clock, each
heartbeat looked 90 s old to A: past ``lost_after`` (30 s here), so A declared healthy instances
lost and relaunched their jobs, again and again. With every daemon stamping the database's
clock (``spotd.clock``: the offset read at each lease renewal), the heartbeats are fresh on
the database's clock and no job is relaunched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from tests.conftest import ROOT
from tests.ha.conftest import Cluster, cluster
from tests.ha.test_fencing import TASK, jobs, launch_through, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ha, pytest.mark.postgres, pytest.mark.timeout(700)]

SKEW = 90  # seconds B's clock is behind
JOBS = 3
# lost after 30 s of silence (the HA tier's default is 60 s): a heartbeat judged 90 s old is
# lost at once, and the watch outlasts lost_after
ENV = {"SPOTD_SUSPECT_AFTER": "10", "SPOTD_LOST_AFTER": "30"}
WATCH = 40.0


def _faketime_lib() -> str:
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "faketime.sh")], capture_output=True, text=True, timeout=300
    )
    path = r.stdout.strip()
    if r.returncode != 0 or not path:
        what = f"Debian's libfaketime (scripts/faketime.sh: {r.stderr.strip()[-300:]})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: the clock-skew test needs {what}")
        pytest.skip(f"needs {what}")
    return path


def _attempts(c: Cluster, ids: list[int]) -> dict[int, int]:
    rows = c.rows(
        "SELECT job_id, count(*) AS n FROM attempt WHERE job_id = ANY(:ids) GROUP BY job_id",
        ids=ids,
    )
    return {r["job_id"]: int(r["n"]) for r in rows}


def _heartbeat_ages(c: Cluster, ids: list[int]) -> list[float]:
    """Seconds, on the database's clock, since each live instance of the jobs was heard."""
    now = c.db_now()
    rows = c.rows(
        "SELECT last_heartbeat_at FROM instance WHERE job_id = ANY(:ids) AND NOT terminated",
        ids=ids,
    )
    return [now - r["last_heartbeat_at"] for r in rows if r["last_heartbeat_at"] is not None]


async def test_heartbeats_received_by_a_daemon_whose_clock_is_behind_keep_instances_alive(
    pg_url: str,
) -> None:
    lib = _faketime_lib()
    fleet_config = {"launch_seconds": 0.5, "forget_seconds": 3600, "seed": 7}
    with cluster(pg_url, ["A", "B"], lease_seconds=5.0, fleet_config=fleet_config, env=ENV) as c:
        c.daemons["A"].env["SPOTD_AGENT_URL"] = f"http://127.0.0.1:{c.agent_ports['B']}"
        c.daemons["B"].env.update(
            LD_PRELOAD=lib, FAKETIME=f"-{SKEW}", FAKETIME_DONT_FAKE_MONOTONIC="1"
        )
        await asyncio.to_thread(c.start, "A")
        c.wait_schema()
        await asyncio.to_thread(c.start, "B")
        assert "differs from the database" in c.log("B")  # B says so, once
        ids = await launch_through(c, "A", JOBS, "skew", TASK)
        await wait_for(
            "every job to run, heard through B",
            lambda: (
                all(j["status"] == "RUNNING" for j in jobs(c, ids).values())
                and len(_heartbeat_ages(c, ids)) == JOBS
            ),
            120,
        )
        first = _attempts(c, ids)
        assert first == dict.fromkeys(ids, 1), first
        owners = {j["owner"] for j in jobs(c, ids).values()}
        assert "A" in owners, owners  # A judges at least one of them (B may take a share)
        until = time.monotonic() + WATCH
        worst = 0.0
        while time.monotonic() < until:
            ages = _heartbeat_ages(c, ids)
            worst = max([worst, *ages])
            assert _attempts(c, ids) == first, "a job was relaunched: an instance was lost"
            await asyncio.sleep(1.0)
        # the fleet's agents keep alive every 5 s; B flushes keep-alives every 0.5 s
        assert worst < 15.0, f"a heartbeat {worst:.0f} s old on the database's clock"
        assert all(j["status"] == "RUNNING" for j in jobs(c, ids).values())
        assert "lost" not in " ".join(
            r["message"]
            for r in c.rows("SELECT message FROM event WHERE job_id = ANY(:ids)", ids=ids)
        )
