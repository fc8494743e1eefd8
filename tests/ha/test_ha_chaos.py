"""Three daemons on one PostgreSQL under chaos: one is kill -9'ed every 20 s, spot instances are
reclaimed, and every job still ends right, ran once, on one instance at a time, leaking none.

The daemons, the fleet (the cloud and every agent) and PostgreSQL are real processes; the agents
reach the daemons through a balancer (a Kubernetes Service's part). Jobs (``sleep N``, N between
a fifth and three fifths of the chaos window; every tenth ends ``exit 3``) are submitted through
the three daemons' APIs in turn over the first half of the window. Through the whole window one
daemon is killed every ``SPOTD_HA_KILL_EVERY`` seconds (round robin) and restarted a few seconds
later, as a supervisor would; and spot instances whose run is on are reclaimed through the
fleet's controls (with and without a notice), spread evenly over the window, so about every
other job loses an instance. A daemon that exits by itself (75: its lease lapsed) is restarted
too. Then the test waits for every job to end, and checks:

- every job ended as its ``run`` calls for (SUCCEEDED, or FAILED for ``exit 3``), none stuck;
- the attempts of each job are numbered 1..n and never ran at once (the store's intervals), and
  the fleet's own record agrees: no two instances of a job ran at once, and each job's run
  completed exactly once;
- the fleet launched no key twice, and every instance it launched is one the store recorded;
- nothing is left running (the reaper has a bounded grace).

``SPOTD_HA_SECONDS`` (default 300) and ``SPOTD_HA_JOBS`` (default 300) size it; run with ``-s``
to see the totals (kills, takeovers, preemptions, attempts).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest

from tests.ha.conftest import LEASE_LOST_EXIT, TERMINAL, Cluster, cluster

SECONDS = float(os.environ.get("SPOTD_HA_SECONDS", "300"))
JOBS = int(os.environ.get("SPOTD_HA_JOBS", "300"))
KILL_EVERY = float(os.environ.get("SPOTD_HA_KILL_EVERY", "20"))
# a supervisor's restart delay, kill after kill: back before its lease lapsed (it takes its
# own work back), then down for two leases (the others must take its work over)
LEASE = 5.0
RESTART_AFTER = (3.0, 2 * LEASE)
IDS = ("d1", "d2", "d3")
LEAK_GRACE = 90.0  # the reapers' bound to terminate what ended jobs left
# the window, the longest job after the last preemption, recoveries, the reapers' grace
DRAIN = 0.6 * SECONDS + 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ha,
    pytest.mark.postgres,
    pytest.mark.timeout(int(SECONDS + DRAIN + LEAK_GRACE + 300)),
]


@dataclass
class Plan:
    name: str
    run: str
    want: str  # the status it must end in


def plans() -> list[Plan]:
    rng = random.Random(18)
    out = []
    for i in range(JOBS):
        seconds = max(5, round(rng.uniform(0.2, 0.6) * SECONDS))
        bad = i % 10 == 0
        out.append(
            Plan(
                name=f"ha{i}-{'bad' if bad else 'ok'}",
                run=f"sleep {seconds}; exit 3" if bad else f"sleep {seconds}",
                want="FAILED" if bad else "SUCCEEDED",
            )
        )
    return out


def task(plan: Plan) -> str:
    return f"name: {plan.name}\nresources:\n  cpus: 1\n  use_spot: true\nrun: {plan.run}\n"


@dataclass
class Kill:
    victim: str
    at: float  # time.monotonic()
    epoch: int
    jobs: set[int]  # what it owned, still active
    down: float  # seconds until it was started again
    settled_after: float | None = None  # until a live daemon holds each of them


@dataclass
class Chaos:
    """What the test did and saw, for the report."""

    submitted: dict[str, list[int]] = field(default_factory=dict)  # name -> job ids
    submit_retries: int = 0
    kills: list[Kill] = field(default_factory=list)
    exits: list[tuple[str, int | None]] = field(default_factory=list)  # not ours: (id, rc)
    preempted: int = 0
    owner_changes: int = 0
    owned: set[int] = field(default_factory=set)  # jobs seen active with an owner
    # held while a daemon is killed or restarted: by the killer or the supervisor, not both
    locks: dict[str, asyncio.Lock] = field(default_factory=lambda: {d: asyncio.Lock() for d in IDS})


async def submit_all(c: Cluster, chaos: Chaos, t0: float) -> None:
    """Every plan, paced over the first half of the window, through the daemons in turn; a
    daemon that fails the call (it may just have been killed) is passed over for the next."""
    sem = asyncio.Semaphore(8)
    pace = SECONDS / 2 / max(1, JOBS)

    async def one(i: int, plan: Plan) -> None:
        await asyncio.sleep(max(0.0, t0 + i * pace - time.monotonic()))
        async with sem:
            for n in range(60):
                daemon = IDS[(i + n) % len(IDS)]
                try:
                    async with c.client(daemon) as api:
                        job = await api.launch(task(plan), filename=f"{plan.name}.yaml")
                except Exception:  # noqa: BLE001 - any daemon may be down: the next is tried
                    chaos.submit_retries += 1
                    await asyncio.sleep(0.5)
                    continue
                chaos.submitted.setdefault(plan.name, []).append(job["id"])
                return
            raise AssertionError(f"no daemon accepted {plan.name}")

    await asyncio.gather(*(one(i, p) for i, p in enumerate(plans())))


async def kill_round_robin(c: Cluster, chaos: Chaos, t0: float) -> None:
    n = 0
    while (at := t0 + (n + 1) * KILL_EVERY) < t0 + SECONDS:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        victim = IDS[n % len(IDS)]
        n += 1
        async with chaos.locks[victim]:
            epoch = await asyncio.to_thread(
                c.scalar, "SELECT epoch FROM daemon WHERE id = :d", d=victim
            )
            owned = await asyncio.to_thread(
                c.rows,
                "SELECT id FROM job WHERE owner = :d AND status <> ALL(:t)",
                d=victim,
                t=list(TERMINAL),
            )
            if c.running(victim):
                c.kill9(victim)
            down = RESTART_AFTER[n % len(RESTART_AFTER)]
            chaos.kills.append(
                Kill(victim, time.monotonic(), int(epoch or 0), {r["id"] for r in owned}, down)
            )
            await asyncio.sleep(down)
            await asyncio.to_thread(c.start, victim)


async def preempt_spread(c: Cluster, chaos: Chaos, t0: float, rng: random.Random) -> None:
    """Reclaim an instance whose run is on, about JOBS / 2 times spread over the window; odd
    ones with a notice. A turn that finds none running tries again each second until the
    next turn is due."""
    every = SECONDS / max(1, JOBS // 2)
    n = 0
    while (at := t0 + (n + 1) * every) < t0 + SECONDS:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        n += 1
        while time.monotonic() < at + every:
            running = [
                i
                for i in await c.fleet_call("GET", "/v1/history")
                if i["state"] == "RUNNING" and i["phase"] == "run"
            ]
            if running:
                inst = rng.choice(running)
                notice = 5.0 if n % 2 else None
                body = {"id": inst["id"], "notice_seconds": notice}
                await c.fleet_call("POST", "/v1/preempt", body)
                chaos.preempted += 1
                break
            await asyncio.sleep(1.0)


async def supervise(c: Cluster, chaos: Chaos, stop: asyncio.Event) -> None:
    """Restart a daemon that exited by itself (not one the killer handles)."""
    while not stop.is_set():
        for d in IDS:
            if chaos.locks[d].locked() or c.running(d):
                continue
            async with chaos.locks[d]:
                chaos.exits.append((d, c.proc(d).returncode))
                await asyncio.to_thread(c.start, d)
        await asyncio.sleep(0.5)


async def watch_owners(c: Cluster, chaos: Chaos, stop: asyncio.Event) -> None:
    """Count owner changes, and how long after each kill its jobs were held by a live daemon
    again (another one, or the victim restarted with a newer epoch)."""
    owners: dict[int, str | None] = {}
    while not stop.is_set():
        jobs = await asyncio.to_thread(c.rows, "SELECT id, owner, status FROM job")
        alive = {
            r["id"]: r["epoch"]
            for r in await asyncio.to_thread(
                c.rows,
                "SELECT id, epoch FROM daemon "
                "WHERE expires_at > extract(epoch FROM clock_timestamp())",
            )
        }
        for j in jobs:
            before = owners.get(j["id"])
            if before is not None and j["owner"] not in (None, before):
                chaos.owner_changes += 1
            owners[j["id"]] = j["owner"]
            if j["owner"] is not None and j["status"] not in TERMINAL:
                chaos.owned.add(j["id"])
        now = time.monotonic()
        status = {j["id"]: (j["owner"], j["status"]) for j in jobs}
        for k in chaos.kills:
            if k.settled_after is not None:
                continue
            held = all(
                status[j][1] in TERMINAL
                or (
                    status[j][0] in alive
                    and (status[j][0] != k.victim or alive[status[j][0]] > k.epoch)
                )
                for j in k.jobs
            )
            if held:
                k.settled_after = now - k.at
        await asyncio.sleep(1.0)


async def wait_all_ended(c: Cluster, deadline: float) -> list[dict[str, Any]]:
    while True:
        jobs = await asyncio.to_thread(c.rows, "SELECT id, name, status, owner FROM job")
        open_jobs = [j for j in jobs if j["status"] not in TERMINAL]
        if not open_jobs or time.monotonic() > deadline:
            return jobs
        await asyncio.sleep(2.0)


def settle_summary(kills: list[Kill]) -> str:
    parts = []
    for down in RESTART_AFTER:
        took = [k.settled_after for k in kills if k.down == down and k.settled_after is not None]
        of = sum(1 for k in kills if k.down == down)
        parts.append(
            f"restarted after {down:.0f}s: "
            + (f"median {statistics.median(took):.1f}s, max {max(took):.1f}s" if took else "-")
            + f" ({len(took)}/{of} kills settled)"
        )
    return "; ".join(parts)


def overlaps(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The intervals (start, end) that begin before the one before them ended."""
    ordered = sorted(intervals)
    return [b for a, b in pairwise(ordered) if b[0] < a[1]]


async def test_three_daemons_under_kills_and_reclaims_lose_nothing_and_run_nothing_twice(
    pg_url: str,
) -> None:
    fleet_config = {"launch_seconds": 1.0, "forget_seconds": 86400, "seed": 18, "concurrency": 32}
    with cluster(pg_url, IDS, lease_seconds=LEASE, fleet_config=fleet_config) as c:
        for d in IDS:
            await asyncio.to_thread(c.start, d)
        chaos = Chaos()
        stop = asyncio.Event()
        t0 = time.monotonic()
        background = [
            asyncio.create_task(supervise(c, chaos, stop)),
            asyncio.create_task(watch_owners(c, chaos, stop)),
        ]
        try:
            async with asyncio.TaskGroup() as tg:  # one failing cancels the others
                tg.create_task(submit_all(c, chaos, t0))
                tg.create_task(kill_round_robin(c, chaos, t0))
                tg.create_task(preempt_spread(c, chaos, t0, random.Random(18)))
            window = time.monotonic() - t0
            jobs = await wait_all_ended(c, t0 + SECONDS + DRAIN)
            drained = time.monotonic() - t0
        finally:
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
        for t in background:
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

        attempts = c.rows(
            "SELECT job_id, attempt, status, started_at, ended_at, end_reason FROM attempt"
        )
        store_keys = {
            r["key"]: r for r in c.rows("SELECT key, job_id, instance_id, phase FROM instance")
        }
        totals = c.rows(
            "SELECT sum(preemptions) AS preemptions, sum(recoveries) AS recoveries, "
            "sum(infra_failures) AS infra_failures, "
            "count(*) FILTER (WHERE preemptions > 0) AS preempted_jobs FROM job"
        )[0]
        stats = await c.fleet_call("GET", "/v1/stats")
        history = await c.fleet_call("GET", "/v1/history")
        leaked = await wait_no_leaks(c)
        members = await c.api_get(IDS[0], "/v1/daemons")
        writers = {
            r["daemon"]: r["n"]
            for r in c.rows("SELECT daemon, count(*) AS n FROM event GROUP BY daemon")
        }

        plan_of = {p.name: p for p in plans()}
        print(
            f"\nHA chaos: {len(IDS)} daemons, lease {LEASE:.0f}s, window {window:.0f}s, all "
            f"ended {drained:.0f}s after the start\n"
            f"  jobs: {len(jobs)} ({JOBS} planned, {chaos.submit_retries} submit retries), "
            f"attempts {len(attempts)}\n"
            f"  kills: {len(chaos.kills)} (kill -9, then restarted); daemons that exited by "
            f"themselves: {chaos.exits}\n"
            f"  takeovers: {chaos.owner_changes} job owner changes; a killed daemon's jobs "
            f"held by a live daemon again after: {settle_summary(chaos.kills)}"
            f"\n  preemptions: {chaos.preempted} reclaims sent, {totals['preemptions']} "
            f"counted by the jobs ({totals['preempted_jobs']} jobs preempted at least once), "
            f"{totals['recoveries']} recoveries, "
            f"{totals['infra_failures']} infra failures\n"
            f"  fleet: {stats['launches']} launches, launched twice {stats['launched_twice']}, "
            f"left running {len(leaked)}; agent connections through the balancer: "
            f"{c.balancer.forwarded}\n  events written, by daemon: {writers}\n"
            f"  members: {members}"
        )

        # the agents reported through what is in front of the daemons (a Service's part), not
        # to the socket of the daemon that launched them (silent while it is down)
        assert c.balancer.forwarded > 0, "no agent report went through the balancer"

        # every job ended, as its run calls for; each planned job was submitted
        assert set(chaos.submitted) == set(plan_of)
        wrong = {
            j["id"]: (j["name"], j["status"])
            for j in jobs
            if j["status"] != plan_of[j["name"]].want
        }
        assert wrong == {}, f"{len(wrong)} jobs did not end as their run says: {wrong}"

        # the work was owned: every job by a daemon while it was active, every event's writer named
        assert chaos.owned == {j["id"] for j in jobs}, "jobs never seen with an owner"
        if any(k.jobs for k in chaos.kills if k.down > LEASE):
            assert chaos.owner_changes > 0, "no daemon took a dead one's jobs over"
        assert None not in writers, f"events with no writer: {writers}"

        # attempts: numbered 1..n, one at a time (a run ends before the next one starts)
        by_job: dict[int, list[dict[str, Any]]] = {}
        for a in attempts:
            by_job.setdefault(a["job_id"], []).append(a)
        numbering = {
            j: sorted(a["attempt"] for a in rows)
            for j, rows in by_job.items()
            if sorted(a["attempt"] for a in rows) != list(range(1, len(rows) + 1))
        }
        assert numbering == {}, f"attempt numbers not contiguous: {numbering}"
        assert set(by_job) == {j["id"] for j in jobs}
        twice = {
            j: overlaps(
                [
                    (a["started_at"], a["ended_at"] if a["ended_at"] is not None else 1e18)
                    for a in rows
                    if a["started_at"] is not None
                ]
            )
            for j, rows in by_job.items()
        }
        assert {j: o for j, o in twice.items() if o} == {}, "attempts of one job ran at once"

        # the fleet's record: no key launched twice, nothing behind the store's back, no two
        # instances of a job running at once, each job's run completed once
        assert stats["launched_twice"] == []
        assert stats["launches"] == len(history)
        unknown = [
            i["key"]
            for i in history
            if i["key"] not in store_keys or store_keys[i["key"]]["instance_id"] is None
        ]
        assert unknown == [], f"the fleet launched instances the store never recorded: {unknown}"
        runs: dict[int, list[tuple[float, float]]] = {}
        exited: dict[int, int] = {}
        for i in history:
            job_id = store_keys[i["key"]]["job_id"]
            if i["ran_at"] is not None:
                end = i["stopped_at"] if i["stopped_at"] is not None else 1e18
                runs.setdefault(job_id, []).append((i["ran_at"], end))
            if i["phase"] == "exited":
                exited[job_id] = exited.get(job_id, 0) + 1
        assert {j: overlaps(r) for j, r in runs.items() if overlaps(r)} == {}
        assert exited == {j["id"]: 1 for j in jobs}, "each job's run completes exactly once"

        assert leaked == [], f"left running {LEAK_GRACE:.0f}s after the end: {leaked}"
        assert all(rc == LEASE_LOST_EXIT for _, rc in chaos.exits), chaos.exits
        assert chaos.preempted > JOBS // 4, "the chaos should have reclaimed many instances"


async def wait_no_leaks(c: Cluster) -> list[dict[str, Any]]:
    deadline = time.monotonic() + LEAK_GRACE
    while True:
        alive = [
            i
            for i in await c.fleet_call("GET", "/v1/history")
            if i["state"] in ("PENDING", "RUNNING", "NOTICE")
        ]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(1.0)
