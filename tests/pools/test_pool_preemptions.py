"""A 3-worker spot pool on the local provider runs 20 queued jobs through two worker
preemptions: every job succeeds, none runs twice at once, and workers are provisioned 5 times
(3 + the 2 replacements), never once per job."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from spotd.sdk.client_pools import (
    pool_apply,
    pool_down,
    pool_job_logs,
    pool_launch,
    pool_status,
)

pytestmark = pytest.mark.slow

JOBS = 20
POOL_YAML = """
name: tp
pool:
  workers: 3
resources:
  cpus: 1+
  use_spot: true
envs:
  MARKS: {marks}
setup: |
  echo "setup job=$SPOTD_JOB_ID attempt=$SPOTD_ATTEMPT" >> "$MARKS/setups"
"""
JOB_YAML = """
name: work
envs:
  MARKS: {marks}
run: |
  echo "rank $SKYPILOT_JOB_RANK of $SKYPILOT_NUM_JOBS (spotd $SPOTD_JOB_RANK/$SPOTD_NUM_JOBS)"
  sleep 2
  echo "$SKYPILOT_JOB_RANK $SKYPILOT_NUM_JOBS $SPOTD_JOB_RANK" > "$MARKS/done-$SKYPILOT_JOB_RANK"
"""


async def _wait(c: Any, pred: Any, what: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pool: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pool = await pool_status(c, "tp")
        if pred(pool):
            return pool
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; pool is {pool}")


def _busy_worker(pool: dict[str, Any], spare: set[int]) -> int | None:
    """The worker whose running job started last (the one surest to be still running it),
    not one already preempted."""
    started = {
        a["worker_job_id"]: a["started_at"]
        for j in pool["jobs"]
        for a in j["attempts"]
        if a["ended_at"] is None
    }
    busy = [
        int(w["job_id"])
        for w in pool["worker_jobs"]
        if w["running"] is not None and w["status"] == "RUNNING" and w["job_id"] not in spare
    ]
    return max(busy, key=lambda w: started.get(w, 0.0), default=None)


async def test_twenty_jobs_survive_two_worker_preemptions(daemon: Any, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    async with daemon.client() as c:
        applied = await pool_apply(c, "tp", POOL_YAML.format(marks=marks), filename="pool.yaml")
        assert len(applied["started"]) == 3
        queued = await pool_launch(
            c, "tp", JOB_YAML.format(marks=marks), filename="job.yaml", num_jobs=JOBS
        )
        assert sorted(j["rank"] for j in queued["jobs"]) == list(range(JOBS))
        preempted: set[int] = set()
        for notice in (None, 2.0):  # one without notice, one with a notice
            pool = await _wait(c, lambda p: _busy_worker(p, preempted) is not None, "a busy worker")
            victim = _busy_worker(pool, preempted)
            assert victim is not None
            body: dict[str, Any] = {"target": str(victim)}
            if notice:
                body["notice_seconds"] = notice
            await c.chaos("preempt", **body)
            preempted.add(victim)
            await _wait(
                c,
                lambda p, v=victim: any(
                    w["job_id"] == v and w["attempts"] == 2 and w["status"] == "RUNNING"
                    for w in p["worker_jobs"]
                ),
                f"worker {victim}'s replacement running",
            )
        pool = await _wait(
            c,
            lambda p: (
                p["job_counts"].get("SUCCEEDED", 0) + p["job_counts"].get("FAILED", 0) == JOBS
            ),
            "every job ended",
            timeout=180.0,
        )
        workers = [await c.job(w["job_id"]) for w in pool["worker_jobs"]]
        lost_job = next(j for j in pool["jobs"] if len(j["attempts"]) > 1)
        text = await pool_job_logs(c, "tp", lost_job["id"])
        down = await pool_down(c, "tp")
    jobs = pool["jobs"]
    assert [j["status"] for j in jobs] == ["SUCCEEDED"] * JOBS, jobs
    # the two preempted workers were running a job each: those went back to the queue
    lost = [a for j in jobs for a in j["attempts"] if a["end_reason"] == "PREEMPTED"]
    assert len(lost) >= 2, lost
    assert {a["worker_job_id"] for a in lost} == preempted
    # no job ran twice at once: each job's attempts, in order, do not overlap
    for j in jobs:
        spans = sorted((a["started_at"], a["ended_at"]) for a in j["attempts"])
        assert all(end is not None for _, end in spans), json.dumps(j, indent=1)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, j
    # workers provisioned 5 times: 3, then one replacement per preemption
    assert sorted(len(w["attempts"]) for w in workers) == [1, 2, 2]
    assert sum(len(w["attempts"]) for w in workers) == 5
    setups = (marks / "setups").read_text().splitlines()
    assert len(setups) == 5, setups  # setup once per worker instance, never per job
    # every rank ran to its end, with its rank and count in both spellings
    for rank in range(JOBS):
        assert (marks / f"done-{rank}").read_text().split() == [str(rank), str(JOBS), str(rank)]
    assert down["status"] == "DOWN"
    # its output, per attempt: the lost one cut short, the last one whole
    n = len(lost_job["attempts"])
    assert text.count(f"=== pool job {lost_job['id']} attempt ") == n, text
    assert f"rank {lost_job['rank']} of {JOBS} (spotd {lost_job['rank']}/{JOBS})" in text
    assert text.rstrip().endswith("exited with 0"), text


async def test_a_daemon_killed_mid_queue_loses_no_job_and_runs_none_twice(
    daemon: Any, tmp_path: Path
) -> None:
    """The queue, the claims and the exits live in the store; a worker whose daemon is away
    keeps running its job and reports the exit when the daemon is back."""
    marks = tmp_path / "marks"
    marks.mkdir()
    jobs = 6
    pool_yaml = POOL_YAML.format(marks=marks).replace("workers: 3", "workers: 2")
    async with daemon.client() as c:
        await pool_apply(c, "tp", pool_yaml, filename="pool.yaml")
        await pool_launch(c, "tp", JOB_YAML.format(marks=marks), filename="j.yaml", num_jobs=jobs)
        await _wait(c, lambda p: p["job_counts"].get("RUNNING", 0) == 2, "two jobs running")
    daemon.kill9()
    await asyncio.sleep(1.0)
    daemon.start()
    async with daemon.client() as c:
        pool = await _wait(
            c, lambda p: p["job_counts"].get("SUCCEEDED", 0) == jobs, "every job done", 120.0
        )
        await pool_down(c, "tp")
    for j in pool["jobs"]:
        spans = sorted((a["started_at"], a["ended_at"]) for a in j["attempts"])
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, json.dumps(j, indent=1)
    assert sorted(p.name for p in marks.glob("done-*")) == [f"done-{r}" for r in range(jobs)]
    assert len((marks / "setups").read_text().splitlines()) == 2  # no worker was replaced
