"""One zone-event vocabulary: what the replica executor writes, the job controller reads, and
the other way round, through the store's zone-event table (whose rows keep their spelling)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.control.zone_history import ReplicaZoneHistory, from_row
from spotd.recovery import history
from spotd.serve import hedge
from spotd.serve.replica_state import ReplicaStatus
from spotd.store import AsyncStore, ReplicaRow, ZoneEventRow
from spotd.types import Market, ZoneEventKind, ZoneKey

NOW = 1_700_000_000.0
ZONE = ZoneKey("local", "r", "r-a")


@pytest.mark.parametrize(
    ("kind", "stored"),
    [
        (ZoneEventKind.PREEMPTED, "PREEMPTED"),
        (ZoneEventKind.LAUNCH_FAILED, "STOCKOUT"),  # the spelling of the first schema
        (ZoneEventKind.LAUNCHED, "LAUNCHED"),
        (ZoneEventKind.RAN, "RAN"),
    ],
)
def test_each_kind_keeps_its_stored_spelling(kind: ZoneEventKind, stored: str) -> None:
    assert kind.value == stored
    assert ZoneEventKind(stored) is kind


def _row(kind: str, detail: str = "", at: float = NOW) -> ZoneEventRow:
    return ZoneEventRow(
        id=1, provider="local", region="r", zone="r-a", kind=kind, at=at, detail=detail
    )


@pytest.mark.parametrize(
    ("row", "want"),
    [
        # written by the job controller (detail: evidence, or the attempt's market)
        (_row("PREEMPTED", "notice"), hedge.ZoneEvent(ZONE, ZoneEventKind.PREEMPTED, NOW)),
        (
            _row("STOCKOUT", "CapacityError: none"),
            hedge.ZoneEvent(ZONE, ZoneEventKind.LAUNCH_FAILED, NOW),
        ),
        (
            _row("LAUNCHED", "on-demand"),
            hedge.ZoneEvent(ZONE, ZoneEventKind.LAUNCHED, NOW, Market.ON_DEMAND),
        ),
        (_row("RAN", "30.0 seconds on spot"), None),  # a survival time: not the planner's
        # written by the replica executor: the market leads the detail
        (
            _row("STOCKOUT", "on-demand replica s1-r3"),
            hedge.ZoneEvent(ZONE, ZoneEventKind.LAUNCH_FAILED, NOW, Market.ON_DEMAND),
        ),
        (
            _row("LAUNCHED", "spot replica s1-r2"),
            hedge.ZoneEvent(ZONE, ZoneEventKind.LAUNCHED, NOW, Market.SPOT),
        ),
        (_row("EXPLODED"), None),  # a kind no version wrote: skipped, as before
    ],
)
def test_replica_planner_reads_stored_rows(row: ZoneEventRow, want: hedge.ZoneEvent | None) -> None:
    assert from_row(row) == want


def _replica(market: Market) -> ReplicaRow:
    return ReplicaRow(
        key="s1-r3",
        service_id=1,
        replica_id=3,
        version=1,
        status=ReplicaStatus.PROVISIONING,
        provider="local",
        region="r",
        zone="r-a",
        instance_type="cpu.small",
        market=market,
        price_per_hour=0.01,
        port=8000,
        instance_id=None,
        url="",
        token="t",
        created_at=NOW,
        started_at=None,
        ready_at=None,
        ended_at=None,
        message="",
        last_heartbeat_at=None,
        phase=None,
        exit_code=None,
        notice_deadline=None,
        log_offset=0,
    )


async def test_both_controllers_read_what_the_replica_executor_wrote(tmp_path: Path) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        zones = ReplicaZoneHistory(store)
        await zones.record(_replica(Market.SPOT), ZoneEventKind.LAUNCH_FAILED, NOW)
        await zones.record(_replica(Market.ON_DEMAND), ZoneEventKind.LAUNCHED, NOW + 1)
        await store.add_zone_event(  # the job controller's survival time
            provider="local", region="r", zone="r-a", kind="RAN", at=NOW + 2, detail="9.0 s"
        )
        rows = await store.zone_events(since=NOW - 1)
        assert [r.kind for r in rows] == ["STOCKOUT", "LAUNCHED", "RAN"]
        # the job controller's placement reads every row
        assert [history.ZoneEvent.from_row(r).kind for r in rows] == [
            ZoneEventKind.LAUNCH_FAILED,
            ZoneEventKind.LAUNCHED,
            ZoneEventKind.RAN,
        ]
        # a restarted daemon's planner reads back what it had in memory
        restarted = ReplicaZoneHistory(store)
        await restarted.load(NOW + 3)
        assert list(restarted.events(1)) == list(zones.events(1))
        assert [(e.kind, e.market) for e in restarted.events(1)] == [
            (ZoneEventKind.LAUNCH_FAILED, Market.SPOT),
            (ZoneEventKind.LAUNCHED, Market.ON_DEMAND),
        ]
    finally:
        await store.close()


def _of(service: int, rid: int, market: Market = Market.SPOT, **fields: object) -> ReplicaRow:
    import dataclasses

    row = _replica(market)
    return dataclasses.replace(
        row, key=f"s{service}-r{rid}", service_id=service, replica_id=rid, **fields
    )


async def _kinds(store: AsyncStore) -> list[tuple[str, str]]:
    return [(r.kind, r.detail) for r in await store.zone_events(since=0.0)]


async def test_calm_mode_sees_every_preemption_of_its_two_hours(tmp_path: Path) -> None:
    """Calm mode (no overprovisioned replica) wants no preemption in 2 h. The planner's
    history keeps a preemption that long, though other events come and go (and reads it back
    after a restart): an hour and a bit after one, the spare spot replica stays."""
    from spotd.serve.autoscaler import AutoscalePolicy
    from spotd.serve.replica_state import ReplicaId

    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        zones = ReplicaZoneHistory(store)
        await zones.record(_of(1, 9, instance_id="i-9"), ZoneEventKind.PREEMPTED, NOW)
        await zones.record(_of(1, 10), ZoneEventKind.LAUNCHED, NOW + 3_700.0)
        restarted = ReplicaZoneHistory(store)
        await restarted.load(NOW + 3_800.0)
        policy = AutoscalePolicy(
            min_replicas=3, max_replicas=3, num_overprovision=1, dynamic_ondemand_fallback=True
        )
        ready = [
            hedge.ReplicaView(ReplicaId(i), ZONE, Market.SPOT, ReplicaStatus.READY, NOW - 9_000)
            for i in range(4)
        ]
        for history_of in (zones, restarted):
            plan = hedge.plan_replicas(
                3,
                zones=[hedge.ZoneOption(ZONE, spot_price=1.0, ondemand_price=3.0)],
                current=ready,
                zone_history=history_of.events(1),
                policy=policy,
                now=NOW + 4_000.0,
            )
            assert plan.terminate == () and "calm" not in plan.reason, plan.reason
        await zones.record(_of(1, 11), ZoneEventKind.LAUNCHED, NOW + 7_300.0)
        assert [e.kind for e in zones.events(1)] == [ZoneEventKind.LAUNCHED] * 2
    finally:
        await store.close()


async def test_each_service_plans_with_its_own_zone_history(tmp_path: Path) -> None:
    """Service 2's preemption and stockout in a zone are not service 1's (another instance
    type, often another pool), and the job controller's rows are no service's; the store
    holds them all, and a restarted daemon gives each service back its own."""
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        zones = ReplicaZoneHistory(store)
        await zones.record(_of(1, 1), ZoneEventKind.LAUNCHED, NOW)
        await zones.record(_of(2, 1, instance_id="i-1"), ZoneEventKind.PREEMPTED, NOW + 1)
        await zones.record(_of(2, 2), ZoneEventKind.LAUNCH_FAILED, NOW + 2)
        await store.add_zone_event(  # the job controller's
            provider="local", region="r", zone="r-a", kind="PREEMPTED", at=NOW + 3, detail="x"
        )
        restarted = ReplicaZoneHistory(store)
        await restarted.load(NOW + 4)
        for h in (zones, restarted):
            assert [e.kind for e in h.events(1)] == [ZoneEventKind.LAUNCHED]
            assert [e.kind for e in h.events(2)] == [
                ZoneEventKind.PREEMPTED,
                ZoneEventKind.LAUNCH_FAILED,
            ]
            assert h.risk(1, NOW + 4) == {} and ZONE in h.risk(2, NOW + 4)
    finally:
        await store.close()


async def test_a_replica_is_lost_once_and_leaves_its_run_time(tmp_path: Path) -> None:
    """A spot replica under notice is recorded preempted at the notice, with how long it ran;
    found gone later, or its notice read again by a restarted daemon, it is not recorded
    again (which would start the bad-zone hour, the shaky-zone cover and calm mode's two
    hours over). A spot replica retired without a loss leaves its run time only; an
    on-demand one, and a launch that failed, none."""
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        zones = ReplicaZoneHistory(store)
        noticed = _of(1, 1, instance_id="i-1")
        await zones.record(noticed, ZoneEventKind.PREEMPTED, NOW + 600)
        await zones.ended(noticed, ZoneEventKind.PREEMPTED, NOW + 700)
        restarted = ReplicaZoneHistory(store)
        await restarted.load(NOW + 800)
        await restarted.record(noticed, ZoneEventKind.PREEMPTED, NOW + 800)
        await restarted.ended(_of(1, 2, instance_id="i-2"), None, NOW + 900)
        await restarted.ended(_of(1, 3, Market.ON_DEMAND, instance_id="i-3"), None, NOW + 900)
        await restarted.ended(_of(1, 4), ZoneEventKind.LAUNCH_FAILED, NOW + 900)
        assert await _kinds(store) == [
            ("PREEMPTED", "spot replica s1-r1"),
            ("RAN", "600.0 seconds on spot replica s1-r1"),
            ("RAN", "900.0 seconds on spot replica s1-r2"),
            ("STOCKOUT", "spot replica s1-r4"),
        ]
        assert [e.kind for e in restarted.events(1)] == [
            ZoneEventKind.PREEMPTED,
            ZoneEventKind.LAUNCH_FAILED,
        ]
        # the survival times are what the learned risk reads: 600 s + 900 s in the zone
        rows = await store.zone_events(since=0.0)
        assert [history.ZoneEvent.from_row(r).seconds for r in rows if r.kind == "RAN"] == [
            600.0,
            900.0,
        ]
    finally:
        await store.close()


async def test_a_service_taken_over_reads_what_its_last_daemon_recorded(tmp_path: Path) -> None:
    """Several daemons: B started before A recorded a preemption of service 1's, then takes
    the service over; its first plan reads A's events from the store (once: what B records
    itself is not doubled), and reads them again if it gives the service up and takes it
    back."""
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        a, b = ReplicaZoneHistory(store), ReplicaZoneHistory(store)
        await b.load(NOW)
        await a.record(_of(1, 1, instance_id="i-1"), ZoneEventKind.PREEMPTED, NOW + 10)
        await b.record(_of(1, 2), ZoneEventKind.LAUNCHED, NOW + 20)
        await b.ensure(1, NOW + 30)
        await b.ensure(1, NOW + 40)
        # B's first look reads the notice A recorded: the loss is not recorded again
        await b.record(_of(1, 1, instance_id="i-1"), ZoneEventKind.PREEMPTED, NOW + 45)
        kinds = [ZoneEventKind.PREEMPTED, ZoneEventKind.LAUNCHED]
        assert [e.kind for e in b.events(1)] == kinds
        assert [k for k, _ in await _kinds(store)] == ["PREEMPTED", "RAN", "LAUNCHED"]
        assert ZONE in b.risk(1, NOW + 40)
        b.forget_service(1)
        assert list(b.events(1)) == []
        await b.ensure(1, NOW + 50)
        assert [e.kind for e in b.events(1)] == kinds
    finally:
        await store.close()
