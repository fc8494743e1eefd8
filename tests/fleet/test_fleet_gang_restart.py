"""A multi-node job on the fleet provider: its simulated agents follow restart orders.

A real daemon and a real fleet process: a 2-node job runs, the fleet reclaims node 1 (at once,
or after a notice). The daemon replaces node 1 alone; the simulated agents answer the restart
order as the real agent does (``restarting`` → ``waiting`` → ``run`` on the ``go``), the
replacement waits for the ``go`` too, and the job ends SUCCEEDED in its first attempt, having
launched three instances — where agents that ignored the orders left it STARTING for ever.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import wait_job
from tests.fleet.conftest import FleetProc

pytestmark = pytest.mark.slow

TASK = "name: gang\nnum_nodes: 2\nresources:\n  cpus: 1\n  use_spot: true\nrun: sleep 4\n"
TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


@pytest.fixture
def rig() -> Iterator[tuple[DaemonProc, FleetProc]]:
    home = Path(f"/tmp/spotd-fg{os.getpid()}-{time.monotonic_ns() % 10**8}")
    fleet = FleetProc(home / "fleet", {"launch_seconds": 0.3, "seed": 3})
    fleet.start()
    env = {
        "SPOTD_PROVIDERS_JSON": json.dumps(
            {"local": {"enabled": False}, "fleet": {"url": fleet.url}}
        ),
        "SPOTD_HEARTBEAT_SECONDS": "0.5",
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


async def fleet_call(fleet: FleetProc, method: str, path: str, body: object = None) -> object:
    conn = aiohttp.UnixConnector(path=str(fleet.socket))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.request(method, f"http://fleet{path}", json=body) as r,
    ):
        return await r.json()


@pytest.mark.parametrize("notice", [None, 20.0], ids=["reclaimed", "noticed"])
async def test_a_replaced_node_restarts_the_gang_on_the_fleet(
    rig: tuple[DaemonProc, FleetProc], notice: float | None
) -> None:
    daemon, fleet = rig
    async with daemon.client() as c:
        job = await c.launch(TASK, filename="gang.yaml")
        jid = job["id"]
        job = await wait_job(c, jid, lambda j: j["status"] == "RUNNING", what="2 nodes running")
        region = job["attempts"][0]["region"]
        listed = await fleet_call(fleet, "GET", f"/v1/regions/{region}/instances")
        assert isinstance(listed, list)
        node1 = next(i for i in listed if i["key"] == f"j{jid}-a1-n1")
        await fleet_call(
            fleet, "POST", "/v1/preempt", {"id": node1["id"], "notice_seconds": notice}
        )
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=60)
        events = await c.events(jid)
    said = [f"{e['kind']}: {e['message']}" for e in events]
    assert job["status"] == "SUCCEEDED", (job, said)
    assert len(job["attempts"]) == 1 and job["preemptions"] == 1, said
    replaced = [e for e in events if e["kind"] == "node.replaced"]
    assert len(replaced) == 1 and f"j{jid}-a1-n1" in replaced[0]["message"], said
    stats = await fleet_call(fleet, "GET", "/v1/stats")
    assert isinstance(stats, dict) and stats["launches"] == 3, stats
    # the job went back to STARTING for the restart, and RUNNING again once every node ran
    statuses = [e["message"] for e in events if e["kind"] == "job.status"]
    at = next(i for i, m in enumerate(statuses) if "STARTING" in m and "replacing node 1" in m)
    assert any("STARTING → RUNNING" in m for m in statuses[at + 1 :]), said
