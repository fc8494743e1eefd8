"""Against a real daemon: one pool job cancelled while it runs (its worker stops it, SIGTERM
first, and runs the next job; its followed output ends by itself), and failed runs restarted
up to ``max_restarts_on_errors``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from spotd.sdk.client_pools import (
    pool_apply,
    pool_down,
    pool_job_follow,
    pool_launch,
    pool_status,
)

pytestmark = pytest.mark.slow

POOL_YAML = """
pool:
  workers: 1
resources:
  cpus: 1+
  use_spot: true
"""
LONG_JOB = """
name: long
envs:
  M: {marks}
run: |
  trap 'echo long-got-sigterm; exit 143' TERM
  echo long-started
  touch "$M/long-started"
  sleep 300 &
  wait
  echo long-was-not-stopped
"""
NEXT_JOB = """
name: next
envs:
  M: {marks}
run: echo next-ran > "$M/next"
"""
FLAKY_JOB = """
name: flaky
envs:
  M: {marks}
job_recovery:
  max_restarts_on_errors: 1
run: |
  if [ -e "$M/tried-$SKYPILOT_JOB_RANK" ]; then echo second-try-ok; exit 0; fi
  touch "$M/tried-$SKYPILOT_JOB_RANK"
  echo first-try-fails
  exit 3
"""
BROKEN_JOB = """
name: broken
job_recovery:
  max_restarts_on_errors: 1
run: exit 4
"""


async def _wait(c: Any, name: str, pred: Any, what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    pool: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pool = await pool_status(c, name)
        if pred(pool):
            return pool
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; pool is {pool}")


def _job(pool: dict[str, Any], job_id: int) -> dict[str, Any]:
    return next(j for j in pool["jobs"] if j["id"] == job_id)


async def _collect(c: Any, name: str, job_id: int) -> str:
    return b"".join([chunk async for chunk in pool_job_follow(c, name, job_id)]).decode()


async def test_a_running_job_cancelled_frees_its_worker_for_the_next(
    daemon: Any, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    async with daemon.client() as c:
        await pool_apply(c, "cx", POOL_YAML, filename="pool.yaml")
        [long] = (await pool_launch(c, "cx", LONG_JOB.format(marks=marks)))["jobs"]
        [nxt] = (await pool_launch(c, "cx", NEXT_JOB.format(marks=marks)))["jobs"]
        following = asyncio.create_task(_collect(c, "cx", long["id"]))
        for _ in range(450):  # 90 s at most
            if (marks / "long-started").exists():
                break
            await asyncio.sleep(0.2)
        assert (marks / "long-started").exists(), await pool_status(c, "cx")
        assert not following.done()  # the job runs: following it does not end
        r = await asyncio.to_thread(daemon.spotctl, "jobs", "pool", "cancel", "cx", str(long["id"]))
        assert r.returncode == 0 and f"pool job {long['id']}: CANCELLED" in r.stdout, r
        text = await asyncio.wait_for(following, 60)
        pool = await _wait(
            c, "cx", lambda p: _job(p, nxt["id"])["status"] == "SUCCEEDED", "the next job"
        )
        again = await asyncio.to_thread(
            daemon.spotctl, "jobs", "pool", "cancel", "cx", str(long["id"])
        )
        await pool_down(c, "cx")
    assert "long-started" in text and "long-got-sigterm" in text, text
    assert "long-was-not-stopped" not in text
    assert text.rstrip().endswith("cancelled (exit 143)"), text
    cancelled = _job(pool, long["id"])
    assert cancelled["status"] == "CANCELLED"
    assert [a["end_reason"] for a in cancelled["attempts"]] == ["CANCELLED"]
    # the same worker (no new one provisioned) ran the next job, once
    [worker] = pool["worker_jobs"]
    assert worker["attempts"] == 1
    ran = _job(pool, nxt["id"])["attempts"]
    assert [a["worker_job_id"] for a in ran] == [worker["job_id"]]
    assert (marks / "next").read_text() == "next-ran\n"
    assert again.returncode == 1 and "ended already" in again.stdout + again.stderr


async def test_failed_runs_are_restarted_up_to_max_restarts_on_errors(
    daemon: Any, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    async with daemon.client() as c:
        await pool_apply(c, "rt", POOL_YAML, filename="pool.yaml")
        [flaky] = (await pool_launch(c, "rt", FLAKY_JOB.format(marks=marks)))["jobs"]
        [broken] = (await pool_launch(c, "rt", BROKEN_JOB))["jobs"]
        [plain] = (await pool_launch(c, "rt", "run: exit 5\n"))["jobs"]
        pool = await _wait(
            c,
            "rt",
            lambda p: all(
                _job(p, j["id"])["status"] in ("SUCCEEDED", "FAILED")
                for j in (flaky, broken, plain)
            ),
            "every job ended",
        )
        r = await asyncio.to_thread(
            daemon.spotctl, "jobs", "pool", "logs", "rt", str(flaky["id"]), "--follow"
        )
        text = r.stdout
        await pool_down(c, "rt")
    ok = _job(pool, flaky["id"])
    assert ok["status"] == "SUCCEEDED", ok
    assert [(a["end_reason"], a["exit_code"]) for a in ok["attempts"]] == [
        ("FAILED", 3),
        ("SUCCEEDED", 0),
    ]
    assert "first-try-fails" in text and "second-try-ok" in text, text
    bad = _job(pool, broken["id"])
    assert bad["status"] == "FAILED" and bad["exit_code"] == 4
    assert len(bad["attempts"]) == 2 and "after 1 restarts" in bad["message"], bad
    once = _job(pool, plain["id"])  # no job_recovery: no restart
    assert once["status"] == "FAILED" and len(once["attempts"]) == 1, once
