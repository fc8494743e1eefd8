"""A replica under a preemption notice keeps serving until its replacement is READY, then
drains and ends as PREEMPTED, well before its deadline (``control/draining.py``). Real daemon,
local provider, stub replicas, load from a separate process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from spotd.control.draining import Drainer
from spotd.control.serve_config import ServeSettings
from spotd.sdk.client_serve import serve_up, wait_service
from spotd.serve.hedge import NOTICE_HANDOFF_SECONDS
from spotd.serve.replica_state import ReplicaStatus as S
from spotd.store import AsyncStore, ReplicaRow, ServiceRow
from spotd.types import ZoneEventKind

from .conftest import ready, stub_yaml

NOTICE_SECONDS = 60  # long enough that only the replacement being READY can end the wait


async def test_a_noticed_replica_serves_until_its_replacement_is_ready_then_drains(
    serve_daemon, load
):
    async with serve_daemon.client() as c:
        await serve_up(c, stub_yaml(latency_ms=20), filename="svc.yaml")
        svc = await wait_service(c, "svc", ready(3), timeout=40, what="3 READY")
        victim = svc["replicas"][1]
        vid = victim["id"]
        ld = load(
            svc["endpoint"], "--concurrency", "6", "--max-requests", "6000", "--max-seconds", "60"
        )
        await ld.wait_done(60)
        r = await c.chaos("preempt", target=victim["instance_id"], notice_seconds=NOTICE_SECONDS)
        assert r["preempted"] == [victim["instance_id"]]
        noticed_at = time.time()

        # every poll until the victim leaves READY: (its status, whether the daemon has acted
        # on the notice, whether a replacement is READY, the requests it has served)
        polls: list[tuple[str, bool, bool, int]] = []

        def leaves_ready(s: dict[str, Any]) -> bool:
            mine = next((x for x in s["replicas"] if x["id"] == vid), None)
            status = mine["status"] if mine else "GONE"
            acted = mine is not None and "serving until its replacement" in (mine["message"] or "")
            replaced = any(x["id"] > 3 and x["status"] == "READY" for x in s["replicas"])
            served = ld.progress().get("by_replica", {}).get(f"r{vid}", 0)
            polls.append((status, acted, replaced, served))
            return status != "READY"

        await wait_service(c, "svc", leaves_ready, timeout=45, poll=0.05, what="victim drained")
        # then the victim ends, long before the 60 s deadline
        after = await wait_service(
            c,
            "svc",
            lambda s: any(x["id"] == vid and x["status"] == "PREEMPTED" for x in s["replicas"]),
            timeout=20,
            poll=0.1,
            what="victim PREEMPTED",
            all_replicas=True,
        )
        svc = await wait_service(c, "svc", ready(3), timeout=20, what="3 READY again")
        await ld.wait_done(ld.progress()["done"] + 60)
        result = ld.finish()
    # the daemon acted on the notice (a replacement launched in that step) and left the
    # victim READY while the replacement started ...
    waiting = [p for p in polls if p[0] == "READY" and p[1] and not p[2]]
    assert waiting, polls
    # ... and the LB kept sending it requests after that
    assert max(p[3] for p in polls) > waiting[0][3], (waiting[0], polls[-1])
    # it left READY only once its replacement was READY
    status, _, replaced, _ = polls[-1]
    assert status in ("DRAINING", "PREEMPTED", "GONE") and replaced, polls[-3:]
    gone = next(x for x in after["replicas"] if x["id"] == vid)
    assert gone["ended_at"] - noticed_at < NOTICE_SECONDS - 15, gone
    new = [x for x in svc["replicas"] if x["id"] > 3]
    assert len(new) == 1 and new[0]["zone"] != victim["zone"], new
    assert result["failed"] == 0, result["errors"]


# -- the drainer alone, on a real store ----------------------------------------------------


class FakeLbs:
    """The LB as the drainer reads it: nothing in flight on any replica."""

    async def in_flight(self, svc: ServiceRow) -> dict[str, int]:
        return {}


class Owner:
    """The service controller's side: records what the drainer asks of it."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store
        self.zone_events: list[tuple[str, ZoneEventKind]] = []
        self.pushes = 0
        self.drainer: Drainer | None = None

    async def end(self, row: ReplicaRow, to: S, reason: str, now: float) -> None:
        await self.store.transition_replica(
            row.key, from_=[row.status], to=to, reason=reason, now=now
        )
        if self.drainer is not None:
            self.drainer.forget(row.key)  # as the controller's end() does

    async def push(self, svc: ServiceRow) -> None:
        self.pushes += 1

    async def zone_event(self, row: ReplicaRow, kind: ZoneEventKind, now: float) -> None:
        self.zone_events.append((row.key, kind))


async def test_drainer_keeps_a_noticed_replica_ready_and_drains_it_near_its_deadline(
    tmp_path: Path,
) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 's.db'}")
    try:
        await _drain_near_deadline(store)
    finally:
        await store.close()


async def _ready_replica(store: AsyncStore) -> tuple[ServiceRow, ReplicaRow]:
    svc = await store.create_service(
        name="svc",
        spec_json="{}",
        spec_redacted_json="{}",
        lb_port=20001,
        lb_control_port=20002,
        lb_token="t",
        target=1,
        now=1.0,
    )
    row = await store.create_replica(
        service_id=svc.id,
        version=1,
        provider="local",
        region="r",
        zone="z",
        instance_type="cpu-1",
        market="spot",
        price_per_hour=0.01,
        port=20010,
        token="a",
        now=2.0,
    )
    for to in (S.STARTING, S.READY):
        row = await store.transition_replica(row.key, from_=[row.status], to=to, reason="", now=3.0)
    return svc, row


async def _drain_near_deadline(store: AsyncStore) -> None:
    svc, row = await _ready_replica(store)
    owner = Owner(store)
    drainer = Drainer(serve=ServeSettings(), store=store, lbs=FakeLbs(), owner=owner)  # type: ignore[arg-type]
    owner.drainer = drainer
    deadline = 100.0
    for now in (40.0, 41.0, 42.0):  # the notice is read again at every step while it lasts
        fresh = await store.get_replica(row.key)
        assert fresh is not None
        await drainer.notice(fresh, deadline, now)
        await drainer.finish(svc, now)
    fresh = await store.get_replica(row.key)
    assert fresh is not None
    assert fresh.status == S.READY and fresh.notice_deadline == deadline
    assert "serving until its replacement is READY" in (fresh.message or "")
    assert owner.zone_events == [(row.key, ZoneEventKind.PREEMPTED)]  # recorded once
    # NOTICE_HANDOFF_SECONDS before the deadline it drains (the planner retires those it
    # sees earlier, once their replacement is READY), and ends PREEMPTED when idle
    await drainer.finish(svc, deadline - NOTICE_HANDOFF_SECONDS - 1)
    fresh = await store.get_replica(row.key)
    assert fresh is not None and fresh.status == S.READY
    await drainer.finish(svc, deadline - NOTICE_HANDOFF_SECONDS)
    fresh = await store.get_replica(row.key)
    assert fresh is not None and fresh.status == S.PREEMPTED
    assert owner.pushes >= 1
    assert drainer.size() == 0  # nothing kept about a replica that ended


class _FailingOnce(Owner):
    """A controller whose first write of the zone's preemption fails (a locked database)."""

    def __init__(self, store: AsyncStore) -> None:
        super().__init__(store)
        self.failed = False

    async def zone_event(self, row: ReplicaRow, kind: ZoneEventKind, now: float) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("database is locked")
        await super().zone_event(row, kind, now)


async def test_a_notice_whose_writes_failed_is_acted_on_at_the_next_step(tmp_path: Path) -> None:
    """Before, the notice was remembered as acted on before its writes: after one failed (the
    supervised worker restarts the step), the zone's preemption was never recorded."""
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 's.db'}")
    try:
        _, row = await _ready_replica(store)
        owner = _FailingOnce(store)
        drainer = Drainer(serve=ServeSettings(), store=store, lbs=FakeLbs(), owner=owner)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="locked"):
            await drainer.notice(row, 100.0, 40.0)
        for now in (41.0, 42.0):
            fresh = await store.get_replica(row.key)
            assert fresh is not None
            await drainer.notice(fresh, 100.0, now)
        assert owner.zone_events == [(row.key, ZoneEventKind.PREEMPTED)]
    finally:
        await store.close()
