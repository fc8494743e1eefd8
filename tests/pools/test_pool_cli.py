"""``spotctl jobs pool apply|status|down`` and ``spotctl jobs launch --pool`` against a real
daemon: a one-worker pool runs two ranked copies of a job, one after the other."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

POOL_YAML = """
name: one
pool:
  workers: 1
resources:
  cpus: 1+
  use_spot: true
setup: echo pool-setup-done
"""
JOB_YAML = """
name: hello
envs:
  OUT: {out}
run: |
  echo "hello from rank $SKYPILOT_JOB_RANK"
  echo "rank $SKYPILOT_JOB_RANK/$SKYPILOT_NUM_JOBS" > "$OUT/r$SKYPILOT_JOB_RANK"
"""


def _ok(r: Any) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return str(r.stdout)


def test_the_cli_drives_a_pool(daemon: Any, tmp_path: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text(POOL_YAML)
    job = tmp_path / "job.yaml"
    out = tmp_path / "out"
    out.mkdir()
    job.write_text(JOB_YAML.format(out=out))
    # a pool's YAML is not a job
    r = daemon.spotctl("jobs", "launch", "-y", "-d", str(pool))
    assert r.returncode != 0 and "spotctl jobs pool apply" in r.stdout + r.stderr
    assert "Pool one: 1 workers" in _ok(daemon.spotctl("jobs", "pool", "apply", "-y", str(pool)))
    text = _ok(daemon.spotctl("jobs", "launch", "--pool", "one", "--num-jobs", "2", str(job)))
    assert "2 job(s) queued on pool one" in text
    r = daemon.spotctl("jobs", "launch", "--num-jobs", "2", "-y", str(job))
    assert r.returncode != 0 and "--num-jobs needs --pool" in r.stderr
    deadline = time.monotonic() + 90
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = json.loads(_ok(daemon.spotctl("jobs", "pool", "status", "one", "-o", "json")))
        if status["job_counts"].get("SUCCEEDED") == 2:
            break
        time.sleep(0.5)
    assert status["job_counts"] == {"SUCCEEDED": 2}, status
    assert (out / "r0").read_text() == "rank 0/2\n"
    assert (out / "r1").read_text() == "rank 1/2\n"
    # one worker ran both, one after the other
    [w] = status["worker_jobs"]
    spans = sorted(
        (j["attempts"][0]["started_at"], j["attempts"][0]["ended_at"]) for j in status["jobs"]
    )
    assert spans[1][0] >= spans[0][1]
    assert {j["attempts"][0]["worker_job_id"] for j in status["jobs"]} == {w["job_id"]}
    second = max(status["jobs"], key=lambda j: j["rank"])
    logs = _ok(daemon.spotctl("jobs", "pool", "logs", "one", str(second["id"])))
    assert "hello from rank 1" in logs and "hello from rank 0" not in logs, logs
    table = _ok(daemon.spotctl("jobs", "pool", "status", "one"))
    assert "one" in table and "SUCCEEDED" in table
    assert "pool one: DOWN" in _ok(daemon.spotctl("jobs", "pool", "down", "one"))
    r = daemon.spotctl("jobs", "pool", "status", "one")
    assert r.returncode != 0 and "no pool one" in r.stdout + r.stderr


async def test_a_plain_job_that_sets_spotd_pool_still_runs_its_run(daemon: Any) -> None:
    """``SPOTD_POOL`` in a job that is no pool's worker: the daemon says so and the agent
    runs the task's ``run`` as usual."""
    async with daemon.client() as c:
        job = await c.launch("name: plain\nenvs: {SPOTD_POOL: nope}\nrun: echo plain-run-ran\n")
        done = await c.wait(job["id"], timeout=60)
        text = b"".join([chunk async for chunk in c.logs(job["id"])]).decode()
    assert done["status"] == "SUCCEEDED", done
    assert "plain-run-ran" in text
    assert "not a pool worker" in text
