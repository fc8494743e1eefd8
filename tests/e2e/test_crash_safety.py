"""Killing the daemon loses no job and leaks no instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.helpers import digest_of, expected_digest, logs, train_yaml, wait_job, wait_log

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


async def test_kill9_daemon_readopts_running_jobs_and_reaps_unknown(daemon):
    steps = 60
    async with daemon.client() as c:
        ids = [(await c.launch(train_yaml(steps=steps), filename="k.yaml"))["id"] for _ in range(2)]
        for jid in ids:
            await wait_job(c, jid, lambda j: j["status"] == "RUNNING")
            await wait_log(c, jid, "step 5 ")
    pids_before = {
        json.loads(m.read_text())["key"]: json.loads(m.read_text())["pid"]
        for m in (daemon.home / "local" / "instances").glob("*/meta.json")
    }
    daemon.kill9()
    # a stray instance the store has never heard of, tagged as ours
    stray_dir = daemon.home / "local" / "instances" / "local-j999-a1-n0"
    stray_dir.mkdir(parents=True)
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    stat = Path(f"/proc/{stray.pid}/stat").read_text()
    ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    home_tag = (
        __import__("spotd.config", fromlist=["x"])
        .load_settings(daemon.home, env=daemon.env)
        .home_tag
    )
    (stray_dir / "meta.json").write_text(
        json.dumps(
            {
                "id": "local-j999-a1-n0",
                "key": "j999-a1-n0",
                "region": "x",
                "zone": "x",
                "instance_type": "cpu-1",
                "market": "spot",
                "tags": {"spotd-home": home_tag, "spotd-key": "j999-a1-n0"},
                "pid": stray.pid,
                "start_ticks": ticks,
                "created_at": time.time(),
            }
        )
    )
    time.sleep(1.0)  # the jobs keep running without the daemon
    for pid in pids_before.values():
        os.kill(pid, 0)  # still alive
    daemon.start()
    async with daemon.client() as c:
        jobs = [
            await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=60) for jid in ids
        ]
        texts = [await logs(c, jid) for jid in ids]
    for job, text in zip(jobs, texts, strict=True):
        assert job["status"] == "SUCCEEDED", job
        assert len(job["attempts"]) == 1, "re-adopted, not relaunched"
        assert digest_of(text) == expected_digest(steps)
    assert stray.wait(10) == -signal.SIGKILL, "the unknown instance was reaped"
    assert not stray_dir.exists()


async def test_job_submitted_then_daemon_killed_before_launch_still_runs(daemon):
    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=5), filename="q.yaml")
    daemon.kill9()
    daemon.start()
    async with daemon.client() as c:
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, timeout=60)
    assert job["status"] == "SUCCEEDED"
    # never two live attempts: attempts are strictly sequential
    ends = [a["ended_at"] for a in job["attempts"]]
    assert all(e is not None for e in ends)


async def test_intent_written_but_job_not_moved_is_adopted_after_a_restart(daemon):
    """A daemon killed between storing an attempt's intent and moving the job to STARTING:
    the next daemon adopts the intent instead of writing attempt n+1 again (which would
    collide with the stored one)."""
    from spotd.store import AttemptIntent, Store
    from spotd.types import JobStatus

    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=5), filename="i.yaml", dry_run=True)
    daemon.kill9()
    # stage the crash window by hand: a job in PENDING with the intent of attempt 1 stored
    store = Store.open(f"sqlite:///{daemon.home / 'state.db'}")
    try:
        import json as _json

        from spotd.spec import load_task

        task = load_task("i.yaml", text=train_yaml(steps=5))
        yaml_dir = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "examples")
        task = task.model_copy(update={"workdir": yaml_dir})
        row = store.create_job(
            name="intent",
            task_id_prefix="t-j",
            spec_json=task.model_dump_json(exclude_unset=True),
            spec_redacted_json=_json.dumps({}),
            resources="cpu",
            submitted_at=time.time(),
        )
        cand = job["candidates"][0]
        store.create_attempt(
            AttemptIntent(
                job_id=row.id,
                attempt=1,
                provider=cand["provider"],
                region=cand["region"],
                zone=cand["zone"],
                instance_type=cand["instance_type"],
                market=cand["market"],
                price_per_hour=cand["price_per_hour"],
                num_nodes=1,
                now=time.time(),
                instances=[{"key": f"j{row.id}-a1-n0", "node_rank": 0, "token": "tok"}],
            )
        )
        assert store.get_job(row.id).status == JobStatus.PENDING
    finally:
        store.close()
    daemon.start()
    async with daemon.client() as c:
        done = await wait_job(c, row.id, lambda j: j["status"] in TERMINAL, timeout=60)
    assert done["status"] == "SUCCEEDED"
    assert len(done["attempts"]) == 1 and done["attempts"][0]["zone"] == cand["zone"]
