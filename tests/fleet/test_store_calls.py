"""What one submitted job costs the store: transactions counted from the launch request to
RUNNING, through the real API routes, the real job controller and a real SQLite store.

Every store call is one transaction on the daemon's one store thread, so under a burst of
submissions the store thread is the bottleneck (``bench/fleet.py``: most of the daemon's CPU
while ten thousand jobs are submitted). These tests count the transactions the database
receives (SQLAlchemy's ``begin`` event), per job and per phase — the launch request; the
placement, intent and launch; the agent's first report up to RUNNING — and hold each to a
budget, so a change that adds a round trip per job shows up here, not only in a benchmark;
and the SQL statements, which cost the store thread more than the transactions do.

The provider is a fake at our own seam (``Provider``): a launch is answered at once. No
listing loop runs (its calls are per tick, not per job); the agent's reports go through the
real heartbeat route.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event

from spotd.api.app import make_app
from spotd.config import load_settings
from spotd.control.jobs import Controller
from spotd.metrics import DaemonMetrics
from spotd.providers.base import InstanceSpec, ObservedInstance
from spotd.providers.fleet.catalog import PROVIDER_NAME, fleet_catalog
from spotd.store import AsyncStore, Store
from spotd.types import CatalogEntry, InstanceId, InstanceState, JobStatus

JOBS = 12
SETTLE = 0.5  # seconds: the workers are back asleep (their next periodic look is an hour away)
TASK = "name: count\nresources:\n  cpus: 1\n  use_spot: true\nrun: sleep infinity\n"

# budgets per job, in transactions (reads + writes) and writes. Before the merges a job cost
# 2 + 1 to be submitted, 10 + 3 to be placed and launched, about 4 + 5 from its agent's first
# report to RUNNING; now 1 + 1, 3 + 2, 3 + 2 (the heartbeat route's own two, the worker's
# one look: the job with its attempt and nodes)
SUBMIT_BUDGET, SUBMIT_WRITES = 2, 1
PLACE_BUDGET, PLACE_WRITES = 5, 2
RUN_BUDGET, RUN_WRITES = 5, 2
# and in SQL statements (each costs SQLAlchemy far more CPU than SQLite): 8, 20 and 28 before
# a status change became one UPDATE … RETURNING and the inserts returned their rows
SUBMIT_STATEMENTS, PLACE_STATEMENTS, RUN_STATEMENTS = 5, 12, 14


class AnsweringProvider:
    """A provider that answers every launch at once (the fleet's catalog)."""

    name = PROVIDER_NAME

    def __init__(self) -> None:
        self.launched: dict[str, ObservedInstance] = {}

    def catalog(self) -> Sequence[CatalogEntry]:
        return fleet_catalog()

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        iid = InstanceId(f"i-{spec.key}")
        self.launched[spec.key] = ObservedInstance(
            id=iid,
            key=spec.key,
            region=spec.region,
            zone=spec.zone,
            state=InstanceState.RUNNING,
            tags=dict(spec.tags),
        )
        return iid

    async def list_instances(self) -> Sequence[ObservedInstance]:
        return list(self.launched.values())

    async def terminate(self, instance_id: InstanceId) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclasses.dataclass
class Rig:
    store: Store
    ctl: Controller
    provider: AnsweringProvider
    client: TestClient[web.Request, web.Application]
    deferred: list[int]  # jobs launched whose workers are not started yet
    spawn: Callable[[int], None]  # starts one (the controller's own spawn_worker)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    # no periodic look at a job between events: what is counted is what each job costs
    settings = load_settings(tmp_path, env={"SPOTD_OBSERVE_INTERVAL": "3600"})
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    astore = AsyncStore(store)
    metrics = DaemonMetrics()
    provider = AnsweringProvider()
    ctl = Controller(
        settings=settings, store=astore, providers={provider.name: provider}, metrics=metrics
    )
    deferred: list[int] = []
    # the launch starts its job's worker; held back here so the request is counted alone
    spawn = ctl.spawn_worker
    ctl.spawn_worker = deferred.append  # type: ignore[method-assign]
    app = make_app(settings=settings, store=astore, controller=ctl, metrics_=metrics)
    try:
        async with TestClient(TestServer(app)) as client:
            yield Rig(store, ctl, provider, client, deferred, spawn)
    finally:
        ctl.spawn_worker = spawn  # type: ignore[method-assign]
        await ctl.shutdown()
        await astore.close()


@dataclasses.dataclass
class Count:
    reads: int = 0
    writes: int = 0
    statements: int = 0  # every SQL statement the store thread runs (BEGIN and COMMIT aside)

    @property
    def total(self) -> int:
        return self.reads + self.writes


@contextmanager
def transactions(store: Store) -> Iterator[Count]:
    seen = Count()

    def begin(conn: Any) -> None:
        if not threading.current_thread().name.startswith("spotd-store"):
            return  # the test's own look at the database
        if conn.get_execution_options().get("spotd_write", False):
            seen.writes += 1
        else:
            seen.reads += 1

    def statement(*_: Any) -> None:
        if threading.current_thread().name.startswith("spotd-store"):
            seen.statements += 1

    event.listen(store.engine, "begin", begin)
    event.listen(store.engine, "before_cursor_execute", statement)
    try:
        yield seen
    finally:
        event.remove(store.engine, "begin", begin)
        event.remove(store.engine, "before_cursor_execute", statement)


async def until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def statuses(store: Store) -> list[JobStatus]:
    return [j.status for j in store.list_jobs()]


async def test_a_job_costs_a_bounded_number_of_transactions(rig: Rig) -> None:
    with transactions(rig.store) as submit:
        for i in range(JOBS):
            r = await rig.client.post("/v1/jobs", json={"yaml": TASK, "name": f"c{i}"})
            assert r.status == 201, await r.text()
            body = await r.json()
            assert body["status"] == "PENDING" and body["attempts"] == []
    assert len(rig.deferred) == JOBS

    with transactions(rig.store) as place:
        for job_id in rig.deferred:
            rig.spawn(job_id)
        await until(
            lambda: (
                all(r.instance_id for r in rig.store.instances())
                and len(rig.provider.launched) == JOBS
            ),
            "every launch answered and recorded",
        )
        await asyncio.sleep(SETTLE)  # what the workers do next is counted with the placement

    rows = rig.store.instances()
    with transactions(rig.store) as run:
        for r in rows:
            hb = {"key": r.key, "phase": "run", "log_offset": 0}
            resp = await rig.client.post(
                "/agent/v1/heartbeat", json=hb, headers={"Authorization": f"Bearer {r.token}"}
            )
            assert resp.status == 200, await resp.text()
        await until(lambda: statuses(rig.store) == [JobStatus.RUNNING] * JOBS, "every job RUNNING")
        await asyncio.sleep(SETTLE)
    print(f"{JOBS} jobs: submit {submit}, place {place}, run {run}")
    for phase, seen, budget, writes, statements in (
        ("the launch request", submit, SUBMIT_BUDGET, SUBMIT_WRITES, SUBMIT_STATEMENTS),
        ("placement and launch", place, PLACE_BUDGET, PLACE_WRITES, PLACE_STATEMENTS),
        ("first report to RUNNING", run, RUN_BUDGET, RUN_WRITES, RUN_STATEMENTS),
    ):
        assert seen.writes <= writes * JOBS, f"{phase}: {seen.writes / JOBS:.1f} writes a job"
        assert seen.total <= budget * JOBS, f"{phase}: {seen.total / JOBS:.1f} transactions a job"
        per_job = seen.statements / JOBS
        assert seen.statements <= statements * JOBS, f"{phase}: {per_job:.1f} statements a job"
