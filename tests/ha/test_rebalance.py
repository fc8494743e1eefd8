"""A daemon that joins a running cluster takes its share of the long-running jobs, not only new
submissions: the daemon holding them hands its surplus over, each job between two steps of its
worker, and the newcomer runs them on — the same attempt, the same instances, nothing
relaunched — and recovers one of them when it is preempted. After the hand-over the old owner
writes nothing about those jobs.

Two real daemons (A and B) on one PostgreSQL and one fleet, as in ``test_fencing``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.ha.conftest import Cluster, cluster
from tests.ha.test_fencing import a_runs_jobs, jobs, preempt_until_next_attempt, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.ha, pytest.mark.postgres, pytest.mark.timeout(400)]

JOBS = 8


def _live_instances(c: Cluster, ids: list[int]) -> set[str]:
    sql = "SELECT key FROM instance WHERE NOT terminated AND job_id = ANY(:i)"
    return {r["key"] for r in c.rows(sql, i=ids)}


async def test_a_daemon_that_joins_takes_its_share_of_running_jobs(pg_url: str) -> None:
    fleet_config = {"launch_seconds": 0.5, "forget_seconds": 3600, "seed": 23}
    with cluster(pg_url, ["A", "B"], lease_seconds=5.0, fleet_config=fleet_config) as c:
        ids = await a_runs_jobs(c, JOBS, "share")
        instances = _live_instances(c, ids)
        assert len(instances) == JOBS

        joined = time.monotonic()
        await asyncio.to_thread(c.start, "B")
        await wait_for(
            "B to run half of the jobs",
            lambda: sum(j["owner"] == "B" for j in jobs(c, ids).values()) == JOBS // 2,
            90,
        )
        took = time.monotonic() - joined
        now = jobs(c, ids)
        moved = sorted(i for i in ids if now[i]["owner"] == "B")
        # run on, not relaunched: the same attempt on the same instances, still RUNNING
        assert all(now[i]["status"] == "RUNNING" and now[i]["current_attempt"] == 1 for i in ids)
        assert _live_instances(c, ids) == instances
        # each moved job: A said it handed it over, B that it runs it, and A nothing after
        for j in moved:
            said = c.rows(
                "SELECT id, daemon, message FROM event WHERE job_id = :j AND kind = 'job.owner' "
                "ORDER BY id",
                j=j,
            )
            assert [e["daemon"] for e in said] == ["A", "B"], said
            assert said[0]["message"].startswith("released by daemon A: evening the load"), said
            after = c.scalar(
                "SELECT count(*) FROM event WHERE job_id = :j AND daemon = 'A' AND id > :e",
                j=j,
                e=said[0]["id"],
            )
            assert after == 0, f"A wrote about job {j} after handing it over"

        # B recovers a moved job when its instance is preempted
        victim = moved[0]
        await preempt_until_next_attempt(c, victim)
        assert jobs(c, [victim])[victim]["owner"] == "B"
        # and the load stays even: nothing goes back and forth once it is
        await asyncio.sleep(12)  # longer than a look at the shares
        owners = {i: j["owner"] for i, j in jobs(c, ids).items()}
        assert sorted(i for i in ids if owners[i] == "B") == moved
        print(
            f"\nrebalance: B ran {len(moved)} of {JOBS} jobs {took:.1f}s after it joined, "
            f"every one on its first attempt; B recovered job {victim} when it was preempted"
        )
