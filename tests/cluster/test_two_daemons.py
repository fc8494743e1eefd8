"""Two real daemons on one real PostgreSQL, sharing a fleet: any daemon serves the API, and the
daemon that runs a job hears at once of a change made through the other (LISTEN/NOTIFY).

The job's owner would otherwise look at a healthy running job again only after its longest
sleep (``WATCH_CEILING``, a minute) or when its heartbeat could have gone stale
(``suspect_after``, two minutes here): a cancel through the other daemon that ends the job well
before that was carried by the wake-up. (Without the wake-up, measured: 50-60 s.)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from spotd.control.recheck import WATCH_CEILING
from tests.conftest import DaemonProc, kill_instance_groups
from tests.fleet.conftest import FleetProc

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SUSPECT_AFTER = 120.0
TASK = "name: long\nresources:\n  cpus: 1\n  use_spot: true\nrun: sleep 600\n"


@pytest.fixture
def pair(pg_url: str) -> Iterator[tuple[DaemonProc, DaemonProc, str]]:
    root = Path(f"/tmp/spotd-two{os.getpid()}-{time.monotonic_ns() % 10**8}")
    fleet = FleetProc(root / "fleet", {"launch_seconds": 0.3, "seed": 3})
    fleet.start()
    shared = root / "shared"
    shared.mkdir(parents=True)
    common = {
        "SPOTD_PROVIDERS_JSON": json.dumps(
            {"local": {"enabled": False}, "fleet": {"url": fleet.url}}
        ),
        "SPOTD_HA": "1",
        "SPOTD_DB_URL": pg_url,
        "SPOTD_SHARED_DIR": str(shared),
        "SPOTD_HEARTBEAT_SECONDS": "30",
        "SPOTD_SUSPECT_AFTER": str(SUSPECT_AFTER),
        "SPOTD_LOST_AFTER": "300",
    }
    a = DaemonProc(root / "a", {**common, "SPOTD_DAEMON_ID": "a"})
    b = DaemonProc(root / "b", {**common, "SPOTD_DAEMON_ID": "b"})
    try:
        a.start()
        b.start()
        yield a, b, pg_url
    finally:
        for d in (a, b):
            d.stop()
        fleet.stop()
        kill_instance_groups(root)
        shutil.rmtree(root, ignore_errors=True)


async def _until_status(d: DaemonProc, job_id: int, want: str, timeout: float) -> float:
    t0 = time.monotonic()
    async with d.client() as c:
        while time.monotonic() - t0 < timeout:
            if (await c.job(job_id))["status"] == want:
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} not {want} after {timeout} s")


async def test_a_cancel_through_the_other_daemon_reaches_the_owner_at_once(
    pair: tuple[DaemonProc, DaemonProc, str],
) -> None:
    a, b, url = pair
    async with a.client() as c:
        job = await c.launch(TASK, filename="long.yaml", name="long")
    await _until_status(a, job["id"], "RUNNING", timeout=60)
    await asyncio.sleep(3)  # the owner's worker is in its long sleep now
    async with b.client() as c:  # b serves the whole API, a's jobs included
        seen = await c.job(job["id"])
        assert seen["owner"] == "a" and seen["status"] == "RUNNING"
        await c.cancel(job["id"])
    took = await _until_status(b, job["id"], "CANCELLED", timeout=WATCH_CEILING)
    print(f"cancel through the other daemon took {took:.1f} s")
    assert took < WATCH_CEILING / 3  # well before a would have looked again by itself
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            writers = dict(
                conn.execute(
                    text(
                        "select data_json::json->>'to', daemon from event "
                        "where job_id = :j and kind = 'job.status'"
                    ),
                    {"j": job["id"]},
                ).all()
            )
    finally:
        engine.dispose()
    assert writers["CANCELLING"] == "b"  # the API call, on b
    assert writers["CANCELLED"] == "a"  # the teardown, by the owner, woken through PostgreSQL
    async with a.client() as c:
        daemons = {d["id"]: d for d in await c.request("GET", "/v1/daemons")}
    assert daemons["a"]["alive"] and daemons["b"]["alive"] and daemons["a"]["this"]
    assert daemons["a"]["ready"] and daemons["b"]["ready"]  # both watch their work
    shown = b.spotctl("daemon", "cluster")
    assert shown.returncode == 0, shown.stderr
    cells = [line.replace("│", " ").split() for line in shown.stdout.splitlines()]
    lines = {c[0]: " ".join(c) for c in cells if c and c[0] in ("a", "b")}
    assert "alive" in lines["a"] and "alive" in lines["b"] and "(this)" in lines["b"]
