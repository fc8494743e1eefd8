"""Placement's day of zone history: read once, then topped up with what is new."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spotd.control.zone_cache import ZoneHistoryCache
from spotd.store import AsyncStore, Store

DAY = 86_400.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    s = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    yield s
    await s.close()


async def add(store: AsyncStore, zone: str, at: float, kind: str = "LAUNCHED") -> None:
    await store.add_zone_event(
        provider="fleet", region="fleet-east", zone=zone, kind=kind, at=at, detail="spot"
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


async def test_it_returns_what_a_fresh_read_would_and_reads_only_new_rows(
    store: AsyncStore,
) -> None:
    counting = Counting(store)
    cache = ZoneHistoryCache(counting, window=DAY)  # type: ignore[arg-type]
    now = 10 * DAY
    await add(store, "a", now - DAY - 1)  # outside the window
    for n in range(50):
        await add(store, "a", now - 100 + n)
    assert len(await cache.read(now)) == 50
    await add(store, "b", now + 1, kind="PREEMPTED")
    second = await cache.read(now + 2)
    direct = await store.zone_events(since=now + 2 - DAY)
    assert [(e.zone.zone, str(e.kind), e.at) for e in second] == [
        (r.zone, r.kind, r.at) for r in direct
    ]
    assert counting.rows == [50, 1]  # the second read fetched the one new row only


async def test_events_leave_as_they_age_out_of_the_window(store: AsyncStore) -> None:
    cache = ZoneHistoryCache(store, window=100.0, full_every=1e9)
    await add(store, "a", 0.0)
    await add(store, "b", 50.0)
    assert [e.zone.zone for e in await cache.read(60.0)] == ["a", "b"]
    assert [e.zone.zone for e in await cache.read(120.0)] == ["b"]


async def test_placements_asking_at_once_hold_each_event_once(store: AsyncStore) -> None:
    import asyncio

    cache = ZoneHistoryCache(store, window=DAY)
    for n in range(5):
        await add(store, "a", 1000.0 + n)
    await cache.read(2000.0)
    await add(store, "b", 1500.0)
    got = await asyncio.gather(*(cache.read(2000.0) for _ in range(8)))
    assert all(len(g) == 6 for g in got)
    assert len(await cache.read(2001.0)) == 6


async def test_a_full_read_replaces_what_was_held(store: AsyncStore) -> None:
    cache = ZoneHistoryCache(store, window=DAY, full_every=10.0)
    await add(store, "a", 1000.0)
    assert len(await cache.read(1000.0)) == 1
    await add(store, "b", 1001.0)
    assert [e.zone.zone for e in await cache.read(1020.0)] == ["a", "b"]  # a full read
    assert [e.zone.zone for e in await cache.read(1021.0)] == ["a", "b"]
