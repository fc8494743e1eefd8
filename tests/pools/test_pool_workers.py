"""A pool keeps its worker count: a worker whose job ended (cancelled here) is replaced in
the background; one that failed its setup is not (the next would fail the same way)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from spotd.sdk.client_pools import pool_apply, pool_down, pool_status

pytestmark = pytest.mark.slow

POOL_YAML = """
pool:
  workers: 2
resources:
  cpus: 1+
  use_spot: true
setup: {setup}
"""


async def _wait(c: Any, name: str, pred: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    pool: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pool = await pool_status(c, name)
        if pred(pool):
            return pool
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; pool is {pool}")


def _running(pool: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in pool["worker_jobs"] if w["status"] == "RUNNING"]


async def test_a_cancelled_worker_is_replaced(daemon: Any) -> None:
    async with daemon.client() as c:
        await pool_apply(c, "keep", POOL_YAML.format(setup="echo ok"), filename="p.yaml")
        pool = await _wait(c, "keep", lambda p: len(_running(p)) == 2, "two workers")
        gone = _running(pool)[0]
        await c.cancel(gone["job_id"])
        pool = await _wait(
            c,
            "keep",
            lambda p: (
                len(_running(p)) == 2 and gone["job_id"] not in {w["job_id"] for w in _running(p)}
            ),
            "a replacement worker",
        )
        await pool_down(c, "keep")
    slots = sorted(w["slot"] for w in _running(pool))
    assert slots == [0, 1]  # the replacement took the cancelled worker's slot
    assert len(pool["worker_jobs"]) == 3


async def test_a_worker_that_failed_its_setup_is_not_replaced_until_the_next_apply(
    daemon: Any,
) -> None:
    yaml = POOL_YAML.format(setup="exit 7")
    async with daemon.client() as c:
        await pool_apply(c, "bad", yaml, filename="p.yaml")
        failed = {"FAILED_SETUP"}
        pool = await _wait(
            c, "bad", lambda p: {w["status"] for w in p["worker_jobs"]} == failed, "setup failed"
        )
        await asyncio.sleep(3.0)  # several rounds of the pool's loop (every second here)
        again = await pool_status(c, "bad")
        assert len(again["worker_jobs"]) == len(pool["worker_jobs"]) == 2
        applied = await pool_apply(c, "bad", yaml, filename="p.yaml")
        assert len(applied["started"]) == 2  # an apply tries again
        await pool_down(c, "bad")
