"""The sweep that gives every job (or service) this daemon owns a worker: an object owned
with no worker (its worker never started after a failure between the ownership's commit and
the start) gets one within a sweep; one that has a worker is left alone."""

from __future__ import annotations

import asyncio

import pytest

from spotd.aiokit import Supervisor
from spotd.control import workers as workers_module
from spotd.control.workers import Workers


async def test_an_owned_object_without_a_worker_gets_one_and_the_others_are_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "SWEEP_SECONDS", 0.01)
    stop = asyncio.Event()
    sup = Supervisor(stop)
    jobs = Workers(sup, "job")
    release = asyncio.Event()

    async def running(wake: asyncio.Event) -> None:
        await release.wait()

    jobs.spawn(2, running)  # job 2 has its worker
    started: list[int] = []

    def spawn(oid: int) -> None:
        started.append(oid)
        jobs.spawn(oid, running)

    sweeps = 0
    third = asyncio.Event()

    async def owned() -> list[int]:
        nonlocal sweeps
        sweeps += 1
        if sweeps == 3:
            third.set()
        return [1, 2, 3]

    sweep = asyncio.create_task(jobs.sweep(owned, spawn, stop))
    try:
        await asyncio.wait_for(third.wait(), 10)  # two sweeps after the first: none restarts
    finally:
        stop.set()
        release.set()
        await sweep
        await sup.stop()
    assert sorted(started) == [1, 3]
