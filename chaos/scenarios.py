"""Chaos scenarios against a live daemon (the one ``$SPOTD_HOME`` or ``$SPOTD_URL`` points at).

Each scenario uses only the daemon's public chaos API (what ``spotctl chaos`` calls), so it runs
the same against a demo daemon, a test daemon or a staging one. Every scenario is bounded: a
fixed number of injections, each waiting at most ``--timeout`` seconds for the job to recover.

  python chaos/scenarios.py preempt-storm JOB [--count 5] [--seed 1]
      random mix of notice / no-notice preemptions and instance kills; after each, waits until
      the job runs again and prints where it went
  python chaos/scenarios.py stockout-cascade JOB
      stocks out every region but the most expensive, then preempts: the job must land there
  python chaos/scenarios.py partition JOB [--seconds 10]
      blocks the job's heartbeats; the job must NOT be replaced (the instance is alive)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from typing import Any

from spotd.sdk.client import Client


async def _wait(c: Client, jid: int, pred: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = await c.job(jid)
        if pred(job):
            return job
        await asyncio.sleep(0.1)
    raise SystemExit(f"FAIL: job {jid} did not recover within {timeout}s (it is {job['status']})")


async def preempt_storm(c: Client, jid: int, count: int, seed: int, timeout: float) -> None:
    rng = random.Random(seed)
    for i in range(count):
        job = await _wait(c, jid, lambda j: j["status"] == "RUNNING", timeout)
        n = len(job["attempts"])
        kind = rng.choice(["notice", "preempt", "kill"])
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        t0 = time.monotonic()
        if kind == "notice":
            await c.chaos("preempt", target=str(jid), notice_seconds=rng.choice([3, 10, 30]))
        elif kind == "preempt":
            await c.chaos("preempt", target=str(jid))
        else:
            await c.chaos("kill-instance", target=str(jid))
        job = await _wait(
            c,
            jid,
            lambda j, n=n: (
                j["status"] in ("SUCCEEDED",)
                or (len(j["attempts"]) > n and j["status"] == "RUNNING")
            ),
            timeout,
        )
        print(
            f"[{i + 1}/{count}] {kind:8s} {job['attempts'][n - 1]['region']} -> "
            f"{job['region']} ({job['status']}) in {time.monotonic() - t0:.1f}s"
        )
        if job["status"] == "SUCCEEDED":
            break


async def stockout_cascade(c: Client, jid: int, timeout: float) -> None:
    job = await _wait(c, jid, lambda j: j["status"] == "RUNNING", timeout)
    plan = await c.launch(_yaml_of(job), filename="chaos", dry_run=True)
    regions: list[str] = []
    for cand in plan["candidates"]:
        if cand["region"] not in regions:
            regions.append(cand["region"])
    target = regions[-1]
    for r in regions[:-1]:
        await c.chaos("stockout", target=r, seconds=120)
    n = len(job["attempts"])
    await c.chaos("preempt", target=str(jid))
    job = await _wait(
        c, jid, lambda j: len(j["attempts"]) > n and j["status"] == "RUNNING", timeout
    )
    ok = job["region"] == target
    print(
        f"stocked out {regions[:-1]}; job landed in {job['region']} (expected {target}): "
        f"{'OK' if ok else 'FAIL'}"
    )
    if not ok:
        raise SystemExit(1)


def _yaml_of(job: dict[str, Any]) -> str:
    return "resources: {cpus: 1+, use_spot: true}\nrun: 'true'\n"


async def partition(c: Client, jid: int, seconds: float, timeout: float) -> None:
    job = await _wait(c, jid, lambda j: j["status"] == "RUNNING", timeout)
    n = len(job["attempts"])
    await c.chaos("partition", target=str(jid), seconds=seconds)
    await asyncio.sleep(seconds + 2)
    job = await c.job(jid)
    ok = len(job["attempts"]) == n
    print(
        f"partitioned {seconds:g}s: attempts {n} -> {len(job['attempts'])}: "
        f"{'OK (not replaced)' if ok else 'FAIL (replaced a live instance)'}"
    )
    if not ok:
        raise SystemExit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", choices=["preempt-storm", "stockout-cascade", "partition"])
    ap.add_argument("job", type=int)
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()

    async def go() -> None:
        async with Client.connect(autostart=False) as c:
            if a.scenario == "preempt-storm":
                await preempt_storm(c, a.job, a.count, a.seed, a.timeout)
            elif a.scenario == "stockout-cascade":
                await stockout_cascade(c, a.job, a.timeout)
            else:
                await partition(c, a.job, a.seconds, a.timeout)

    asyncio.run(go())
    sys.exit(0)


if __name__ == "__main__":
    main()
