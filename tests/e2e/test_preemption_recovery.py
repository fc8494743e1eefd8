"""Jobs survive preemption: same result as an uninterrupted run, next-cheapest placement."""

from __future__ import annotations

import itertools
import time

from tests.e2e.helpers import digest_of, expected_digest, logs, train_yaml, wait_job, wait_log

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


async def _running_attempt(c, job_id: int, n: int) -> dict:
    return await wait_job(
        c,
        job_id,
        lambda j: len(j["attempts"]) >= n and j["status"] == "RUNNING",
        what=f"attempt {n} running",
    )


async def test_three_preemptions_finish_with_the_uninterrupted_digest(daemon):
    steps = 60
    async with daemon.client() as c:
        plan = await c.launch(train_yaml(steps=steps), filename="t.yaml", dry_run=True)
        job = await c.launch(train_yaml(steps=steps), filename="t.yaml")
        jid = job["id"]
        regions_by_price = []
        for cand in plan["candidates"]:
            if cand["region"] not in regions_by_price:
                regions_by_price.append(cand["region"])
        # 1: with a notice
        await _running_attempt(c, jid, 1)
        await wait_log(c, jid, "step 10 ", attempt=1)
        await c.chaos("preempt", target=str(jid), notice_seconds=3)
        job = await _running_attempt(c, jid, 2)
        # 2: without a notice
        await wait_log(c, jid, "(checkpoint)", attempt=2)
        await c.chaos("preempt", target=str(jid))
        job = await _running_attempt(c, jid, 3)
        # 3: the next region is stocked out
        await wait_log(c, jid, "(checkpoint)", attempt=3)
        used = {a["region"] for a in job["attempts"]}
        spare = [r for r in regions_by_price if r not in used]
        for r in spare:
            await c.chaos("stockout", target=r, seconds=60)
        await c.chaos("kill-instance", target=str(jid))
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=90)
        text = await logs(c, jid)
        events = await c.events(jid)
    assert job["status"] == "SUCCEEDED", job
    assert digest_of(text) == expected_digest(steps)
    assert job["preemptions"] == 3
    ends = [a["end_reason"] for a in job["attempts"]]
    assert ends.count("PREEMPTED") == 3 and ends[-1] == "SUCCEEDED"
    # each relaunch left the region that was just preempted
    real = [a for a in job["attempts"] if a["end_reason"] != "LAUNCH_FAILED"]
    for prev, nxt in itertools.pairwise(real):
        assert nxt["region"] != prev["region"], [(a["region"], a["end_reason"]) for a in real]
    # the first relaunch went to the cheapest region that was not blocked
    assert real[1]["region"] == next(r for r in regions_by_price if r != real[0]["region"])
    # resumed from checkpoints, not from scratch
    assert "resumed from step" in text
    kinds = {e["kind"] for e in events}
    assert "job.status" in kinds or any("RECOVERING" in e["message"] for e in events)
    assert any("notice" in e["message"].lower() for e in events)


async def test_notice_starts_replacement_before_the_deadline(daemon):
    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=400, step_seconds=0.05), filename="n.yaml")
        jid = job["id"]
        await _running_attempt(c, jid, 1)
        t0 = time.time()
        notice = 15.0
        await c.chaos("preempt", target=str(jid), notice_seconds=notice)
        job = await _running_attempt(c, jid, 2)
        replaced_at = time.time()
        first = job["attempts"][0]
        await c.cancel(jid)
    assert replaced_at - t0 < notice, "replacement must run before the notice deadline"
    assert first["end_reason"] == "PREEMPTED" and "notice" in first["end_detail"].lower()


async def test_partitioned_instance_is_not_replaced(daemon):
    """Heartbeats stop but the provider says the instance is alive: suspect, never torn down."""
    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=80, step_seconds=0.05), filename="p.yaml")
        jid = job["id"]
        await _running_attempt(c, jid, 1)
        await c.chaos("partition", target=str(jid), seconds=3)  # > suspect_after (1 s)
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=60)
        text = await logs(c, jid)
    assert job["status"] == "SUCCEEDED"
    assert len(job["attempts"]) == 1 and job["preemptions"] == 0
    assert digest_of(text) == expected_digest(80)


async def test_stockout_everywhere_waits_then_gives_up(daemon):
    yaml = train_yaml(steps=5).replace("job_recovery:\n", "job_recovery:\n  give_up_after: 3s\n")
    async with daemon.client() as c:
        plan = await c.launch(yaml, filename="g.yaml", dry_run=True)
        for r in {cand["region"] for cand in plan["candidates"]}:
            await c.chaos("stockout", target=r, seconds=120)
        job = await c.launch(yaml, filename="g.yaml")
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, timeout=60)
    assert job["status"] == "FAILED_NO_RESOURCE"
    assert all(a["end_reason"] == "LAUNCH_FAILED" for a in job["attempts"])
