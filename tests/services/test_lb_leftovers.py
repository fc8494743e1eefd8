"""Load balancers a daemon leaves behind are ended, never left to route for nobody.

A service's LB is a process of its own, so it outlives its daemon (a restart adopts it). When
the service moved on meanwhile — another daemon took it over and started its own LB, or it
went DOWN — the old LB must not keep running: it would route to a replica set nobody updates
and hold the port the service's next LB needs. And a clean stop with several daemons ends the
LBs of the services it hands over. Real LB processes (``python -m spotd.lb``), a real store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import aiohttp
import pytest

from spotd.config import load_settings
from spotd.control.lbkeeper import LbKeeper, alive, is_leftover
from spotd.control.serve_config import ServeSettings
from spotd.spec import load_task
from spotd.store import AsyncStore, ServiceRow, ServiceStatus
from tests.lb.conftest import free_port

from .conftest import stub_yaml

T0 = 1_700_000_000.0


class Daemon:
    """The LB-keeping part of one daemon (its home, its store)."""

    def __init__(self, home: Path, store: AsyncStore) -> None:
        self.stop = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.store = store
        self.lbs = LbKeeper(
            settings=load_settings(home, env={"SPOTD_HOME": str(home)}),
            serve=ServeSettings(),
            store=store,
            session=self._session,
            stop=self.stop,
            clock=lambda: T0,
        )

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        return self.session

    async def start_lb(self, service_id: int) -> ServiceRow:
        svc = await self.store.get_service(service_id)
        assert svc is not None
        task = load_task("s.yaml", text=stub_yaml(name=svc.name))
        assert task.service is not None
        await self.lbs.ensure(svc, task.service)
        row = await self.store.get_service(service_id)
        assert row is not None and alive(row.lb_pid, row.lb_start_ticks)
        await self.lbs.get(row, "/-/health")  # it answers
        return row

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


async def _service(store: AsyncStore, name: str) -> ServiceRow:
    spec = json.dumps(load_task("s.yaml", text=stub_yaml(name=name)).model_dump(mode="json"))
    return await store.create_service(
        name=name,
        spec_json=spec,
        spec_redacted_json=spec,
        lb_port=free_port(),
        lb_control_port=free_port(),
        lb_token="t",
        target=1,
        now=T0,
    )


async def _wait_gone(pid: int | None, ticks: int | None) -> bool:
    for _ in range(100):
        if not alive(pid, ticks):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_restarted_daemon_ends_its_lbs_whose_services_moved_on(
    tmp_path: Path, store: AsyncStore
) -> None:
    first = Daemon(tmp_path / "home", store)
    kept, moved, down = [await _service(store, n) for n in ("kept", "moved", "down")]
    rows = {}
    try:
        for svc in (kept, moved, down):
            rows[svc.name] = await first.start_lb(svc.id)
    finally:
        await first.close()  # the daemon goes (kill -9): its LBs run on
    # while it was away: another daemon took "moved" over and started its own LB there
    # (its pid is not a process of this host), and "down" was taken down
    await store.update_service_fields(moved.id, now=T0, lb_pid=2**22 + 7, lb_start_ticks=1)
    await store.transition_service(
        down.id, from_=[ServiceStatus.STARTING], to=ServiceStatus.DOWN, reason="test", now=T0
    )
    again = Daemon(tmp_path / "home", store)
    try:
        assert await again.lbs.reap_leftovers() == 2
        for name in ("moved", "down"):
            assert await _wait_gone(rows[name].lb_pid, rows[name].lb_start_ticks), name
        # the LB still its service's is adopted, not ended
        k = rows["kept"]
        assert alive(k.lb_pid, k.lb_start_ticks)
        assert await again.start_lb(kept.id) == k  # adopted: same pid
        assert await again.lbs.reap_leftovers() == 0  # nothing more to end
        # a clean stop of a daemon among several ends the LBs of the services it ran
        await again.lbs.hand_over(owner=None)
        assert await _wait_gone(k.lb_pid, k.lb_start_ticks)
        assert not list((tmp_path / "home" / "lbs").iterdir())
    finally:
        await again.close()
        for r in rows.values():
            if alive(r.lb_pid, r.lb_start_ticks):
                await again.lbs.stop(r)


async def test_records_of_nothing_are_dropped(tmp_path: Path, store: AsyncStore) -> None:
    d = Daemon(tmp_path / "home", store)
    records = tmp_path / "home" / "lbs"
    records.mkdir(parents=True)
    (records / "4.tmp").write_text("1 2")  # a record being written: left alone
    (records / "12").write_text("1 2 3")
    (records / "13").write_text(f"{2**22 + 9} 5\n")  # no such service, no such process
    try:
        assert await d.lbs.reap_leftovers() == 0
        assert [p.name for p in records.iterdir()] == ["4.tmp"]
    finally:
        await d.close()


@pytest.mark.parametrize(
    ("status", "lb_pid", "ticks", "leftover"),
    [
        (ServiceStatus.READY, 10, 7, False),  # still the service's LB (here, or adopted)
        (ServiceStatus.READY, 11, 7, True),  # another daemon started its own
        (ServiceStatus.READY, 10, 8, True),  # the pid reused by another process
        (ServiceStatus.READY, None, None, True),  # the row names none
        (ServiceStatus.DOWN, 10, 7, True),  # the service went
        (None, None, None, True),  # no such service
    ],
)
async def test_is_leftover(
    store: AsyncStore,
    status: ServiceStatus | None,
    lb_pid: int | None,
    ticks: int | None,
    leftover: bool,
) -> None:
    svc = None
    if status is not None:
        row = await _service(store, "s")
        svc = dataclasses.replace(row, status=status, lb_pid=lb_pid, lb_start_ticks=ticks)
    assert is_leftover(svc, 10, 7) is leftover
