"""Quotas hold: GPUs counted from the placement, caps on jobs and nodes, and no overshoot by
concurrent launches through several listeners or daemons.

Before: the quota counted only ``accelerators:``, so a project with a 1-GPU quota launched an
8-GPU instance by naming ``instance_type: sim-a100-8``; CPU jobs and ``num_nodes`` were
unlimited; and the check and the insert were made one step by an ``asyncio.Lock`` on each
aiohttp app, so two launches over two listeners (the unix socket and TCP), or two daemons on one
database, both passed. After: a job reserves the most GPUs any of its placements has × its
nodes; projects cap active jobs, nodes per job and live services; and the store checks the
limits and inserts in one transaction with the project's row locked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spotd.config import load_settings
from spotd.control import quota
from spotd.control.submit import (
    LaunchRequest,
    QuotaExceeded,
    plan_submission,
    submit,
)
from spotd.pricing.catalog import default_local_catalog
from spotd.store import AsyncStore, OverQuota, Store
from tests.ops.conftest import free_port, make_daemon  # noqa: F401 - the fixture
from tests.store.conftest import clock, db_url, open_store, pg_admin  # noqa: F401 - fixtures

CATALOG = default_local_catalog()
NOW = 1_700_000_000.0
EIGHT_GPUS = "resources: {instance_type: sim-a100-8}\nrun: sleep 60\n"
ONE_GPU = "resources: {accelerators: T4:1}\nrun: sleep 60\n"
CPU = "resources: {cpus: 1+}\nrun: sleep 60\n"


@dataclass(frozen=True)
class _Settings:
    home: Path
    home_tag: str = "t"

    @property
    def cas_dir(self) -> Path:
        return self.home / "cas"


async def _launch(store: AsyncStore, home: Path, yaml: str, project: str = "ml") -> Any:
    plan = await plan_submission(
        LaunchRequest(yaml=yaml, project=project),
        scope=None,
        catalog=CATALOG,
        providers={},
        store=store,
        now=NOW,
    )
    return await submit(plan, settings=_Settings(home), store=store, start=lambda _: None)


async def test_an_instance_type_counts_its_gpus(store: AsyncStore, tmp_path: Path) -> None:
    await store.create_project(name="ml", gpu_quota=1, token_hash="h", now=NOW)
    with pytest.raises(QuotaExceeded, match=r"GPU quota 1, 0 in use .* asks for 8"):
        await _launch(store, tmp_path, EIGHT_GPUS)
    with pytest.raises(QuotaExceeded, match="asks for 16"):
        await _launch(store, tmp_path, "num_nodes: 2\n" + EIGHT_GPUS)
    await _launch(store, tmp_path, ONE_GPU)
    assert [j.gpus for j in await store.list_jobs()] == [1]


async def test_cpu_jobs_and_nodes_are_capped(store: AsyncStore, tmp_path: Path) -> None:
    await store.create_project(
        name="ml", gpu_quota=0, token_hash="h", now=NOW, max_jobs=2, max_nodes_per_job=2
    )
    with pytest.raises(QuotaExceeded, match="at most 2 nodes per job; this job asks for 4"):
        await _launch(store, tmp_path, "num_nodes: 4\n" + CPU)
    await _launch(store, tmp_path, "num_nodes: 2\n" + CPU)
    await _launch(store, tmp_path, CPU)
    with pytest.raises(QuotaExceeded, match="at most 2 active jobs, 2 active"):
        await _launch(store, tmp_path, CPU)
    assert len(await store.list_jobs()) == 2


def test_racing_stores_never_overshoot(
    open_store: Callable[[], Store],  # noqa: F811 - the fixture
    clock: Any,  # noqa: F811 - the fixture
) -> None:
    """Twelve launches of one GPU each from twelve threads over two stores on one database (two
    daemons, or two listeners, each with its own connection): exactly the quota gets in."""
    a, b = open_store(), open_store()
    a.create_project(name="ml", gpu_quota=3, token_hash="h", now=clock())
    barrier = threading.Barrier(12, timeout=30)
    outcomes: list[str] = []
    lock = threading.Lock()

    def launch(s: Store) -> None:
        barrier.wait()
        try:
            s.create_job(
                admit=quota.job_admission(gpus=1, nodes=1),
                name="race",
                task_id_prefix="p-j",
                spec_json="{}",
                spec_redacted_json="{}",
                resources="1x T4",
                submitted_at=clock(),
                project="ml",
                gpus=1,
            )
            out = "in"
        except OverQuota:
            out = "refused"
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            out = f"error: {exc}"
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=launch, args=((a, b)[i % 2],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["in"] * 3 + ["refused"] * 9, outcomes
    assert a.project_usage("ml").gpus == 3


async def test_concurrent_launches_through_two_stores_never_overshoot(
    db_url: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The launch use case, as two listeners (or two daemons) would run it: each with its own
    AsyncStore on the one database, eight concurrent launches each, quota 2."""
    stores = [await AsyncStore.open(db_url), await AsyncStore.open(db_url)]
    try:
        await stores[0].create_project(name="ml", gpu_quota=2, token_hash="h", now=NOW)
        results = await asyncio.gather(
            *(_launch(stores[i % 2], tmp_path, ONE_GPU) for i in range(16)),
            return_exceptions=True,
        )
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, QuotaExceeded)]
        assert (len(admitted), len(refused)) == (2, 14), results
        assert len(await stores[1].list_jobs()) == 2
    finally:
        for s in stores:
            await s.close()


# -- through a real daemon ---------------------------------------------------------------


async def test_a_real_daemon_holds_the_quota_across_its_listeners(make_daemon) -> None:  # noqa: F811
    port = free_port()
    d = make_daemon(SPOTD_TCP=f"127.0.0.1:{port}", SPOTD_API_TOKEN="admin-s3cret")
    tcp = f"http://127.0.0.1:{port}"
    unix = aiohttp.UnixConnector(path=str(d.socket))
    auth = {"Authorization": "Bearer admin-s3cret"}
    async with (
        aiohttp.ClientSession(connector=unix) as over_unix,
        aiohttp.ClientSession(headers=auth) as over_tcp,
    ):

        async def launch(yaml: str, i: int) -> tuple[int, Any]:
            session, base = (over_unix, "http://spotd") if i % 2 else (over_tcp, tcp)
            body = {"yaml": yaml, "filename": f"j{i}.yaml", "project": "ml"}
            async with session.post(f"{base}/v1/jobs", json=body) as r:
                return r.status, await r.json()

        async with over_tcp.post(f"{tcp}/v1/projects", json={"name": "ml", "gpu_quota": 1}) as r:
            assert r.status == 201, await r.text()
        status, answer = await launch(EIGHT_GPUS, 0)  # names no accelerator: 8 GPUs all the same
        assert status == 403, answer
        assert "GPU quota 1, 0 in use by 0 active jobs; this job asks for 8" in answer["error"]
        got = await asyncio.gather(*(launch(ONE_GPU, i) for i in range(10)))
        assert sorted(s for s, _ in got) == [201] + [403] * 9, got
        # CPU jobs are capped too, once the admin says so (the store's own API: the flags of
        # `spotctl project update` are wired separately)
        settings = load_settings(d.home, env=d.env)
        admin = Store.open(settings.db_url)
        try:
            admin.update_project("ml", now=NOW, max_jobs=2, max_nodes_per_job=1)
        finally:
            admin.close()
        status, answer = await launch("num_nodes: 2\n" + CPU, 1)
        assert (status, answer["error"]) == (
            403,
            "project ml: at most 1 nodes per job; this job asks for 2",
        )
        statuses = [(await launch(CPU, i))[0] for i in range(3)]
        assert statuses == [201, 403, 403]
        async with over_tcp.get(f"{tcp}/v1/jobs") as r:
            jobs = await r.json()
        assert len(jobs) == 2
        for j in jobs:
            async with over_tcp.post(f"{tcp}/v1/jobs/{j['id']}/cancel") as r:
                assert r.status in (200, 202), await r.text()
