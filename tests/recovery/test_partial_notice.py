"""A notice on one node of a gang: replaced at once, the restart waits for its final sync.

The daemon's side (``spotd.control.node_replace``) against a real store: the noticed node is
not terminated when its replacement is written (make-before-break); no node is told ``go``
until the noticed node has reported its final checkpoint synced (``preempted``) or its
deadline passed; it is terminated once drained; and a kept node that never stops for the
restart makes the whole job move after ``restart_timeout``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spotd.config import load_settings
from spotd.control.jobs import Controller
from spotd.control.node_keys import current_nodes
from spotd.metrics import DaemonMetrics
from spotd.providers.local import LocalProvider
from spotd.recovery.detection import Verdict, VerdictKind
from spotd.recovery.watch import NodeReport
from spotd.store import AsyncStore, Store
from spotd.types import AttemptStatus, JobStatus
from tests.recovery.test_partial_restart_orders import NOW, _running_gang

DEADLINE = NOW + 30


class Clock:
    def __init__(self) -> None:
        self.now = NOW + 1

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Controller, Clock]]:
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    clock = Clock()
    ctl = Controller(
        settings=load_settings(tmp_path, env={}),
        store=store,
        providers={"local": LocalProvider(tmp_path / "local", [])},
        metrics=DaemonMetrics(),
        clock=clock,
    )
    yield ctl, clock
    await store.close()


def _reports(aid: str, noticed: int, nodes: int) -> list[NodeReport]:
    def verdict(r: int) -> Verdict:
        if r == noticed:
            return Verdict(VerdictKind.NOTICE, "spot interruption notice", notice_deadline=DEADLINE)
        return Verdict(VerdictKind.HEALTHY, "heartbeats")

    return [
        NodeReport(key=f"{aid}-n{r}", node_rank=r, phase="run", reported=True, verdict=verdict(r))
        for r in range(nodes)
    ]


async def _noticed_gang(ctl: Controller) -> tuple[int, str]:
    jid, aid = await _running_gang(ctl, 3)
    job, attempt = await ctl.store.require_job(jid), await ctl.store.require_attempt(aid)
    assert await ctl.losses.replace(job, attempt, _reports(aid, 1, 3), NOW + 1)
    return jid, aid


async def _order(ctl: Controller, key: str, generation: int, phase: str) -> object:
    await ctl.store.record_heartbeat(
        key, now=ctl.clock(), phase=phase, exit_code=None, notice_deadline=None
    )
    return await ctl.losses.order_for(await ctl.store.require_instance(key), generation, phase)


async def _settle(ctl: Controller, aid: str) -> None:
    attempt = await ctl.store.require_attempt(aid)
    await ctl.losses.settle(attempt, await ctl.store.instances(attempt_id=aid), ctl.clock())


async def test_the_noticed_node_drains_and_the_go_waits_for_its_final_sync(rig) -> None:
    ctl, _ = rig
    jid, aid = await _noticed_gang(ctl)
    store = ctl.store
    events = await store.events(job_id=jid)
    replaced = [e for e in events if e.kind == "node.replaced"]
    assert len(replaced) == 1 and f"{aid}-n1" in replaced[0].message
    assert "interruption notice" in replaced[0].message
    # make-before-break: the replacement is written, the noticed node keeps running
    assert (await store.require_instance(f"{aid}-n1-g1")).instance_id is None
    assert not (await store.require_instance(f"{aid}-n1")).terminated
    # the noticed node hears no restart order: it is syncing its final checkpoint
    assert await _order(ctl, f"{aid}-n1", 0, "run") is None
    # every current node is waiting, but the noticed node has not synced yet: no go
    for key in (f"{aid}-n0", f"{aid}-n2", f"{aid}-n1-g1"):
        order = await _order(ctl, key, 1, "waiting")
        assert isinstance(order, dict) and order["go"] is False, (key, order)
    await _settle(ctl, aid)
    assert not (await store.require_instance(f"{aid}-n1")).terminated
    # its final checkpoint is in (it says ``preempted``): go, and it is terminated
    assert await _order(ctl, f"{aid}-n1", 0, "preempted") is None
    order = await _order(ctl, f"{aid}-n0", 1, "waiting")
    assert isinstance(order, dict) and order["go"] is True
    await _settle(ctl, aid)
    assert (await store.require_instance(f"{aid}-n1")).terminated


async def test_a_noticed_node_that_never_reports_holds_the_go_until_its_deadline(rig) -> None:
    ctl, clock = rig
    _, aid = await _noticed_gang(ctl)
    for key in (f"{aid}-n0", f"{aid}-n2", f"{aid}-n1-g1"):
        await _order(ctl, key, 1, "waiting")
    order = await _order(ctl, f"{aid}-n0", 1, "waiting")
    assert isinstance(order, dict) and order["go"] is False
    clock.now = DEADLINE + 1  # the provider has reclaimed it by now: nothing more will come
    order = await _order(ctl, f"{aid}-n0", 1, "waiting")
    assert isinstance(order, dict) and order["go"] is True
    await _settle(ctl, aid)
    assert (await ctl.store.require_instance(f"{aid}-n1")).terminated


async def test_a_kept_node_that_never_stops_makes_the_whole_job_move(rig) -> None:
    ctl, clock = rig
    jid, aid = await _noticed_gang(ctl)
    ctl.losses.restart_timeout = 60.0
    store = ctl.store
    await _order(ctl, f"{aid}-n0", 1, "waiting")
    await _order(ctl, f"{aid}-n2", 0, "run")  # an agent that ignores the order: restarting

    async def overdue() -> bool:
        job, attempt = await store.require_job(jid), await store.require_attempt(aid)
        rows = await store.instances(attempt_id=aid)
        return await ctl.losses.overdue(job, attempt, current_nodes(rows), clock.now)

    clock.now = NOW + 30
    assert not await overdue()  # still within the timeout
    clock.now = NOW + 62
    assert await overdue()
    job = await store.require_job(jid)
    assert job.status == JobStatus.RECOVERING
    assert (await store.require_attempt(aid)).status == AttemptStatus.ENDED
    said = [e.message for e in await store.events(job_id=jid) if e.kind == "nodes.restart_timeout"]
    assert (
        len(said) == 1 and f"node 2 ({aid}-n2)" in said[0] and "relaunching every node" in said[0]
    )
