"""Placement's day of zone history: read once, then topped up with what is new, held digested."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spotd.control.zone_cache import ZoneHistoryCache
from spotd.recovery import history
from spotd.store import AsyncStore, Store

DAY = 86_400.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    yield s
    await s.close()


async def add(
    store: AsyncStore, zone: str, at: float, kind: str = "LAUNCHED", detail: str = "spot"
) -> None:
    await store.add_zone_event(
        provider="fleet", region=f"fleet-{zone[0]}", zone=zone, kind=kind, at=at, detail=detail
    )


class Counting:
    """The store as the cache sees it, counting the rows each read hands back."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store
        self.rows: list[int] = []

    async def zone_events(self, **kw: Any) -> Any:
        got = await self.store.zone_events(**kw)
        self.rows.append(len(got))
        return got


def summaries(events: list[history.ZoneEvent], now: float) -> tuple[Any, ...]:
    return (
        history.zone_penalties(events, now),
        history.region_penalties(events, now),
        history.preemption_risk(events, now),
    )


async def test_it_summarises_as_a_fresh_read_would_and_reads_only_new_rows(
    store: AsyncStore,
) -> None:
    counting = Counting(store)
    cache = ZoneHistoryCache(counting, window=DAY)  # type: ignore[arg-type]
    now = 10 * DAY
    await add(store, "a1", now - DAY - 1, kind="PREEMPTED")  # outside the window
    for n in range(50):
        await add(store, "a1", now - 5000 + n)
        await add(store, "b1", now - 4000 + n, kind="RAN", detail=f"{600 + n} seconds on spot")
    await add(store, "a1", now - 100, kind="STOCKOUT")
    assert len(await cache.read(now)) == 3  # a1's latest launch and failure, b1's runs folded
    await add(store, "b1", now + 1, kind="PREEMPTED")
    second = await cache.read(now + 2)
    fresh = [history.ZoneEvent.from_row(r) for r in await store.zone_events(since=now + 2 - DAY)]
    assert len(fresh) == 102
    for at in (now + 2, now + 600, now + 7200):
        for got, want in zip(summaries(second, at), summaries(fresh, at), strict=True):
            assert got == pytest.approx(want)
    assert summaries(second, now + 2)[2]  # the preemption and the runs make a risk
    assert counting.rows == [101, 1]  # the second read fetched the one new row only


async def test_events_leave_as_they_age_out_of_the_window(store: AsyncStore) -> None:
    cache = ZoneHistoryCache(store, window=100.0, full_every=1e9)
    await add(store, "a1", 0.0, kind="PREEMPTED")
    await add(store, "b1", 50.0, kind="PREEMPTED")
    assert [e.zone.zone for e in await cache.read(60.0)] == ["a1", "b1"]
    assert [e.zone.zone for e in await cache.read(120.0)] == ["b1"]
    assert history.region_penalties(await cache.read(120.0), 120.0).keys() == {("fleet", "fleet-b")}


async def test_placements_asking_at_once_hold_each_event_once(store: AsyncStore) -> None:
    cache = ZoneHistoryCache(store, window=DAY)
    for n in range(5):
        await add(store, "a1", 1000.0 + n, kind="PREEMPTED")
    await cache.read(2000.0)
    await add(store, "b1", 1500.0, kind="PREEMPTED")
    got = await asyncio.gather(*(cache.read(2000.0) for _ in range(8)))
    assert all(len(g) == 6 for g in got)
    assert len(await cache.read(2001.0)) == 6


async def test_a_full_read_replaces_what_was_held(store: AsyncStore) -> None:
    cache = ZoneHistoryCache(store, window=DAY, full_every=10.0)
    await add(store, "a1", 1000.0)
    assert len(await cache.read(1000.0)) == 1
    await add(store, "b1", 1001.0)
    assert [e.zone.zone for e in await cache.read(1020.0)] == ["a1", "b1"]  # a full read
    assert [e.zone.zone for e in await cache.read(1021.0)] == ["a1", "b1"]


async def test_a_thousand_launches_in_a_zone_are_held_as_one(store: AsyncStore) -> None:
    cache = ZoneHistoryCache(store, window=DAY)
    for n in range(1000):
        await add(store, "a1", 1000.0 + n)
    got = await cache.read(3000.0)
    assert [(e.zone.zone, e.at) for e in got] == [("a1", 1999.0)]


async def test_rows_after_an_id_come_in_time_order_within_the_window(store: AsyncStore) -> None:
    await add(store, "a1", 100.0)
    (first,) = await store.zone_events(since=0.0)
    for zone, at in (("b1", 300.0), ("c1", 50.0), ("d1", 200.0), ("e1", 200.0)):
        await add(store, zone, at)
    got = await store.zone_events(since=90.0, after_id=first.id)
    assert [(r.zone, r.at) for r in got] == [("d1", 200.0), ("e1", 200.0), ("b1", 300.0)]
