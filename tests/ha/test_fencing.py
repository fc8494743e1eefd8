"""A daemon paused past its lease is fenced: the other takes its jobs over, and once resumed it
writes nothing and exits (75, "lease lost") for its supervisor to restart it.

Two real daemons (A and B) on one PostgreSQL and one fleet. A runs some jobs alone; B joins;
A is paused (SIGSTOP) for three leases; B must take A's jobs over (``job.owner``) and run them
on — one of them is preempted meanwhile, so B has to start its next attempt. Then A resumes
(SIGCONT). Whatever A's event loop had in hand when it stopped, the database must see no write
from it: a trigger records the ``application_name`` (each daemon's id) of every changed row of
the tables a daemon writes, on the database's clock. A must exit with 75, saying "lease lost",
and start again as a member like any other.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import pytest

from tests.ha.conftest import LEASE_LOST_EXIT, TERMINAL, Cluster, cluster

pytestmark = [pytest.mark.slow, pytest.mark.ha, pytest.mark.postgres, pytest.mark.timeout(600)]

LEASE = 5.0
JOBS = 4
TASK = "name: long\nresources:\n  cpus: 1\n  use_spot: true\nrun: sleep 900\n"


async def wait_for(what: str, check: object, timeout: float) -> None:
    """Poll ``check()`` (a callable returning truthy) every 0.5 s until it holds."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        await asyncio.sleep(0.5)


async def cancel_through(c: Cluster, daemon_id: str, job_id: int) -> str:
    try:
        async with c.client(daemon_id) as api:
            return f"answered {await asyncio.wait_for(api.cancel(job_id), 120)}"
    except Exception as exc:  # noqa: BLE001 - an error or a cut connection: a refusal
        return f"refused: {type(exc).__name__}: {exc}"


def jobs(c: Cluster, ids: list[int]) -> dict[int, dict[str, object]]:
    return {
        r["id"]: r
        for r in c.rows(
            "SELECT id, owner, status, current_attempt FROM job WHERE id = ANY(:ids)", ids=ids
        )
    }


async def launch_through(c: Cluster, daemon_id: str, n: int, name: str, task: str) -> list[int]:
    """Submit ``n`` jobs (``task``, named ``name0``...) through ``daemon_id``'s API; their ids."""
    async with c.client(daemon_id) as api:
        return [
            (await api.launch(task, filename=f"{name}{i}.yaml", name=f"{name}{i}"))["id"]
            for i in range(n)
        ]


async def a_runs_jobs(c: Cluster, n: int, name: str, task: str = TASK) -> list[int]:
    """Start daemon A alone, submit ``n`` jobs (``task``) through it, and wait until A runs them
    all."""
    await asyncio.to_thread(c.start, "A")
    c.wait_schema()
    ids = await launch_through(c, "A", n, name, task)
    await wait_for(
        "A to run every job",
        lambda: (
            len(jobs(c, ids)) == n
            and all(j["status"] == "RUNNING" and j["owner"] == "A" for j in jobs(c, ids).values())
        ),
        120,
    )
    return ids


async def preempt_until_next_attempt(c: Cluster, job_id: int) -> None:
    """Reclaim the job's (one) instance and wait until its second attempt runs."""
    (key,) = [
        r["key"]
        for r in c.rows("SELECT key FROM instance WHERE job_id = :j AND NOT terminated", j=job_id)
    ]
    await c.fleet_call("POST", "/v1/kill", {"id": key})
    await wait_for(
        f"job {job_id}'s next attempt to run",
        lambda: (
            jobs(c, [job_id])[job_id]["current_attempt"] == 2
            and jobs(c, [job_id])[job_id]["status"] == "RUNNING"
        ),
        120,
    )


async def test_a_paused_daemon_is_fenced_then_exits_and_rejoins(pg_url: str) -> None:
    fleet_config = {"launch_seconds": 0.5, "forget_seconds": 3600, "seed": 18}
    with cluster(pg_url, ["A", "B"], lease_seconds=LEASE, fleet_config=fleet_config) as c:
        ids = await a_runs_jobs(c, JOBS, "fence")
        c.install_audit()
        await asyncio.to_thread(c.start, "B")
        await wait_for(
            "B to hold a lease",
            lambda: bool(
                c.scalar(
                    "SELECT expires_at > extract(epoch FROM clock_timestamp()) FROM daemon "
                    "WHERE id = 'B'"
                )
            ),
            60,
        )
        a_epoch = c.scalar("SELECT epoch FROM daemon WHERE id = 'A'")

        c.signal("A", signal.SIGSTOP)
        paused_at = time.monotonic()
        await wait_for(
            "B to take A's jobs over",
            lambda: all(j["owner"] == "B" for j in jobs(c, ids).values()),
            LEASE * 3 + 60,
        )
        took = time.monotonic() - paused_at
        # B runs them on: one is preempted while A sleeps, and B starts its next attempt
        victim = ids[0]
        await preempt_until_next_attempt(c, victim)
        # a user's cancel reaches A while it sleeps: it sits in A's socket, and A must not act
        # on it when it wakes (its write would be fenced: the user must hear a refusal)
        cancel = asyncio.create_task(cancel_through(c, "A", ids[1]))
        # paused for three leases at least, so A's timers are all overdue when it wakes
        await asyncio.sleep(max(0.0, paused_at + 3 * LEASE - time.monotonic()))
        before = jobs(c, ids)
        a_events = c.scalar("SELECT count(*) FROM event WHERE daemon = 'A'")
        resumed_at = c.db_now()

        c.signal("A", signal.SIGCONT)
        try:
            rc: int | None = await asyncio.to_thread(c.proc("A").wait, 60)
        except subprocess.TimeoutExpired:
            rc = None  # still running a minute after it woke: asserted below, with its log
        log = c.log("A")
        cancelled = await cancel
        a_writes = c.rows(
            "SELECT tbl, op, row_key, at FROM ha_audit WHERE app = 'A' AND at >= :t ORDER BY seq",
            t=resumed_at,
        )
        writers = {
            r["app"]: r["n"] for r in c.rows("SELECT app, count(*) AS n FROM ha_audit GROUP BY app")
        }
        print(
            f"\nfencing: B took A's {JOBS} jobs {took:.1f}s after the pause (lease {LEASE:.0f}s);"
            f" A exited {rc} after SIGCONT; A's writes after it: {a_writes}; a cancel sent to A"
            f" while paused: {cancelled}; rows written "
            f"since the audit began, by daemon: {writers}"
        )
        # the audit tells the daemons apart (else "nothing from A" would prove nothing)
        assert writers.get("A", 0) > 0 and writers.get("B", 0) > 0, writers
        assert rc == LEASE_LOST_EXIT, log[-3000:]
        assert "lease lost" in log
        # not one row of jobs, attempts, instances, events or services from A after it woke
        assert [w for w in a_writes if w["tbl"] != "daemon"] == []
        assert c.scalar("SELECT count(*) FROM event WHERE daemon = 'A'") == a_events
        assert cancelled.startswith("refused"), cancelled
        after = jobs(c, ids)
        assert {i: after[i]["owner"] for i in ids} == dict.fromkeys(ids, "B")
        assert all(after[i]["status"] not in TERMINAL for i in ids), after
        assert after[victim]["current_attempt"] >= before[victim]["current_attempt"]
        # the API says so too; and the log A received (in the shared directory) B serves
        got = await c.api_get("B", f"/v1/jobs/{victim}")
        assert got["owner"] == "B"
        async with c.client("B") as api:
            text = b"".join([chunk async for chunk in api.logs(ids[2], attempt=1)]).decode()
        assert "simulated agent on" in text, text

        # restarted as a supervisor would: A joins again with a new epoch, and serves the API
        await asyncio.to_thread(c.start, "A")
        await wait_for(
            "A to hold a lease again",
            lambda: bool(
                c.scalar(
                    "SELECT expires_at > extract(epoch FROM clock_timestamp()) FROM daemon "
                    "WHERE id = 'A'"
                )
            ),
            60,
        )
        assert c.scalar("SELECT epoch FROM daemon WHERE id = 'A'") > a_epoch
        listed = await c.api_get("A", "/v1/daemons")
        members = listed["daemons"] if isinstance(listed, dict) else listed
        assert {d["id"]: d["alive"] for d in members} == {"A": True, "B": True}
        got = await c.api_get("A", f"/v1/jobs/{victim}")
        assert got["owner"] in ("A", "B") and got["status"] == "RUNNING"
