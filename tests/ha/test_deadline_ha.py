"""A DEADLINE job that changes daemons still returns from on-demand to spot, though its agent
reports its checkpoints to the other daemon.

Two real daemons (A and B) on one PostgreSQL and one fleet, as in ``test_rebalance``. A's agents
are told A's own agent address (not the balancer's), so every heartbeat of the instances A
launched reaches A, whoever runs their job: what a ``daemon_url`` naming one daemon does. Spot
is stocked out in every region; A starts four DEADLINE jobs, which go to on-demand, and tries
spot beside them at their checkpoints (refused). B joins and takes two of them over, and tries
spot beside one of them (refused: B's tries come from checkpoints it only reads on the row;
zones are held 1 s after a refusal, so the other jobs' refusals do not keep B from trying).
Then the stockout
ends. Every job must go back to spot, those B runs by B's hand-over: B hears their
checkpoints only from the job's row, where A records them (``Store.record_checkpoint``). Before
the row held them, a job that changed daemons never returned.

The fleet's agents checkpoint because the run names ``spotd-progress``
(``spotd.providers.fleet.model``): each heartbeat carries the newest sync and the fraction of
the run's ``sleep`` done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.ha.conftest import Cluster, cluster
from tests.ha.test_fencing import a_runs_jobs, jobs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ha, pytest.mark.postgres, pytest.mark.timeout(400)]

SEEN = "checkpoint_attempt, checkpoint_synced_at, checkpoint_received_at, work_done_seconds"
REGIONS = ("fleet-east", "fleet-central", "fleet-west")
# 600 s of work due in 20 min (the line: 0.5 s of work a second), a declared restart of 5 s:
# refused spot everywhere, a job goes on-demand once it trails the line by a restart (about
# t = 10 s), and is within a restart of it again a few seconds later, trying spot at each
# checkpoint its heartbeats carry
TASK = """
name: paced
resources:
  cpus: 1
  use_spot: true
job_recovery:
  strategy: DEADLINE
  expected_duration: 600s
  deadline: 20m
  restart_overhead: 5s
  safety_margin: 2s
run: |
  sleep 600  # the fleet's stand-in for a run that writes spotd-progress with each checkpoint
"""
# refused returns back off 5 s (not 10 min): the return comes soon after the stockout ends;
# a refused zone is held 1 s (not 30): with the default, the first job to try after a hold
# refreshes it for every other job, and in CI A's two jobs did so for all of two minutes
JOBS = 4  # B takes two over: a daemon hands over only a surplus of two or more
ENV = {
    "SPOTD_RETURN_BACKOFF_SECONDS": "5",
    "SPOTD_RETURN_BACKOFF_CAP_SECONDS": "5",
    "SPOTD_ZONE_HOLD_SECONDS": "1",
}


def _current(c: Cluster, job_id: int) -> dict[str, object]:
    (row,) = c.rows(
        "SELECT a.market, a.status, j.status AS job_status, j.owner FROM job j "
        "LEFT JOIN attempt a ON a.job_id = j.id AND a.attempt = j.current_attempt WHERE j.id = :j",
        j=job_id,
    )
    return row


def _refused_by(c: Cluster, daemon: str, ids: list[int]) -> int:
    """Returns ``daemon`` tried beside on-demand for jobs ``ids`` and found refused."""
    return int(
        c.scalar(
            "SELECT count(*) FROM event WHERE job_id = ANY(:i) AND daemon = :d AND message "
            "LIKE 'deadline: spot refused%'",
            i=ids,
            d=daemon,
        )
    )


async def _until(c: Cluster, ids: list[int], what: str, check: Callable[[], bool]) -> None:
    """``wait_for`` (two minutes); on a timeout, print what the jobs' rows and events say."""
    try:
        await wait_for(what, check, 120)
    except AssertionError:
        for j in ids:
            print(f"job {j}:", _current(c, j), c.rows(f"SELECT {SEEN} FROM job WHERE id = :j", j=j))
            for e in c.rows("SELECT at, daemon, message FROM event WHERE job_id = :j", j=j):
                print("   ", e)
        raise


async def _stockout(c: Cluster, seconds: float) -> None:
    for region in REGIONS:
        await c.fleet_call(
            "POST", "/v1/stockout", {"region": region, "seconds": seconds, "market": "spot"}
        )


async def test_a_deadline_job_that_changed_daemons_returns_to_spot(pg_url: str) -> None:
    fleet_config = {"launch_seconds": 0.5, "forget_seconds": 3600, "seed": 31}
    with cluster(pg_url, ["A", "B"], lease_seconds=5.0, fleet_config=fleet_config, env=ENV) as c:
        c.daemons["A"].env["SPOTD_AGENT_URL"] = f"http://127.0.0.1:{c.agent_ports['A']}"
        await _stockout(c, 3600)
        ids = await a_runs_jobs(c, JOBS, "paced", TASK)
        assert all(_current(c, j)["market"] == "on-demand" for j in ids)
        c.install_audit()
        await asyncio.to_thread(c.start, "B")
        await wait_for(
            "B to run half of the jobs",
            lambda: sum(j["owner"] == "B" for j in jobs(c, ids).values()) == JOBS // 2,
            90,
        )
        moved = sorted(i for i, j in jobs(c, ids).items() if j["owner"] == "B")
        took_over = c.db_now()
        await _until(
            c,
            ids,
            "B to try spot beside on-demand while spot is out (refused)",
            lambda: _refused_by(c, "B", moved) > 0,
        )
        assert all(_current(c, j)["market"] == "on-demand" for j in ids)
        lifted = time.monotonic()
        await _stockout(c, 0)  # the stockout ends
        await _until(
            c,
            ids,
            "every job to run on spot again",
            lambda: all(
                _current(c, j)["market"] == "spot" and _current(c, j)["job_status"] == "RUNNING"
                for j in ids
            ),
        )
        back = time.monotonic() - lifted
        for j in ids:
            tries = c.rows(
                "SELECT attempt, market, end_reason FROM attempt WHERE job_id = :j "
                "ORDER BY attempt",
                j=j,
            )
            (od,) = [t for t in tries if t["market"] == "on-demand"]
            assert od["end_reason"] == "MIGRATED", tries  # made before it broke
            beside = [t for t in tries if t["attempt"] > od["attempt"]]
            # refused beside on-demand while spot was out (or never tried: A's two may have
            # been kept from trying by B's refusals), then accepted once it was back
            assert [t["end_reason"] for t in beside[:-1]] == ["LAUNCH_FAILED"] * (len(beside) - 1)
            assert beside[-1]["market"] == "spot" and beside[-1]["end_reason"] is None, tries
        for j in moved:
            # a moved job went back to spot by B's hand-over ...
            handed = c.rows(
                "SELECT DISTINCT daemon FROM event WHERE job_id = :j AND message LIKE "
                "'%spot launched beside on-demand attempt%'",
                j=j,
            )
            assert handed == [{"daemon": "B"}], handed
            # ... from checkpoints that reached A only: A wrote them to its row after B ran it
            recorded = c.scalar(
                "SELECT count(*) FROM ha_audit WHERE tbl = 'job' AND op = 'UPDATE' AND app = 'A' "
                "AND row_key = :j AND at > :t",
                j=str(j),
                t=took_over,
            )
            assert recorded > 0, j
        for j in ids:
            async with c.client("B") as api:
                await api.cancel(j)
        print(
            f"\ndeadline HA: jobs {moved}, run by B, and the two A kept returned to spot "
            f"within {back:.1f}s after the stockout ended; A recorded their checkpoints"
        )
