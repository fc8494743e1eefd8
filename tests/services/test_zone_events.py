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
        assert list(restarted.events) == list(zones.events)
        assert [(e.kind, e.market) for e in restarted.events] == [
            (ZoneEventKind.LAUNCH_FAILED, Market.SPOT),
            (ZoneEventKind.LAUNCHED, Market.ON_DEMAND),
        ]
    finally:
        await store.close()
