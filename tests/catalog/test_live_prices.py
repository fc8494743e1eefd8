"""Live spot prices: the local provider's seeded walk, the refresh, and what placement reads.

The refresh asks every enabled provider that declares ``SpotPriceFeed``; its quotes replace
the catalog's spot prices while they are fresh and plausible. The AWS feed on moto is in
tests/aws/test_spot_price_feed.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest

from spotd.control.prices import PriceRefresher
from spotd.pricing.catalog import default_local_catalog
from spotd.pricing.live import LivePrices, Quote, price_walk
from spotd.providers.capabilities import FixedSpotPrices, SpotPriceFeed, SpotQuotes
from spotd.providers.local import LocalProvider
from spotd.types import CatalogEntry

LOCAL = [e for e in default_local_catalog() if e.spot_price is not None]
ENTRY = next(e for e in LOCAL if e.instance_type == "cpu-1" and e.zone == "local-east-a")


def _quote(price: float, at: float, entry: CatalogEntry = ENTRY) -> Quote:
    return Quote(entry.provider, entry.region, entry.zone, entry.instance_type, price, at)


@pytest.mark.parametrize(
    ("price", "at", "now", "used"),
    [
        (0.02, 1_000.0, 1_100.0, True),  # fresh and plausible
        (0.02, 1_000.0, 1_000.0 + 3_601.0, False),  # older than an hour: the catalog's
        (0.00001, 1_000.0, 1_100.0, False),  # moto's answer: implausible
        (ENTRY.ondemand_price * 1.5, 1_000.0, 1_100.0, False),  # dearer than on-demand
    ],
)
def test_a_quote_replaces_the_catalog_price_only_fresh_and_plausible(
    price: float, at: float, now: float, used: bool
) -> None:
    live = LivePrices()
    live.update([_quote(price, at)])
    (out,) = live.apply([ENTRY], now)
    assert out.spot_price == (price if used else ENTRY.spot_price)
    assert out.ondemand_price == ENTRY.ondemand_price


def test_the_newer_quote_wins_whatever_the_order() -> None:
    live = LivePrices()
    live.update([_quote(0.03, 200.0), _quote(0.02, 100.0)])
    assert live.quote(ENTRY, 250.0) == 0.03


def test_the_walk_is_a_function_of_the_seed_and_the_step() -> None:
    a = price_walk(LOCAL, now=10_000.0, seed=7)
    assert a == price_walk(LOCAL, now=10_100.0, seed=7)  # the same 300 s step
    assert a != price_walk(LOCAL, now=10_000.0, seed=8)
    later = price_walk(LOCAL, now=10_300.0, seed=7)
    assert later != a
    key = (ENTRY.region, ENTRY.zone, ENTRY.instance_type)
    assert ENTRY.spot_price is not None
    # a day of steps: it moves, around the catalog price, and stays a plausible spot price
    day = [price_walk([ENTRY], now=t * 300.0, seed=1)[key] for t in range(288)]
    assert len(set(day)) > 50  # cents of a cent: the catalog's four decimals
    assert 0.5 * ENTRY.spot_price < sum(day) / len(day) < 2.0 * ENTRY.spot_price
    assert all(0.02 * ENTRY.ondemand_price < p < ENTRY.ondemand_price for p in day)


async def test_the_refresh_lays_the_local_walk_over_the_catalog(tmp_path: Path) -> None:
    now = [50_000.0]
    local = LocalProvider(tmp_path, default_local_catalog(), clock=lambda: now[0], price_seed=3)
    assert isinstance(local, SpotPriceFeed)
    refresher = PriceRefresher(
        providers={"local": local}, stop=asyncio.Event(), clock=lambda: now[0]
    )
    before = refresher.live(list(local.catalog()))
    assert before == list(local.catalog())  # nothing refreshed yet: the catalog's prices
    assert await refresher.refresh_once() == len(LOCAL)
    after = refresher.live(list(local.catalog()))
    walk = price_walk(LOCAL, now=now[0], seed=3)
    for e in after:
        if e.spot_price is not None:
            assert e.spot_price == walk[(e.region, e.zone, e.instance_type)]
    # the spot order between zones follows the market of the moment, not the snapshot
    assert [e.spot_price for e in after] != [e.spot_price for e in before]


class _Feed(FixedSpotPrices):
    """A provider that quotes (the fake feed) and has a catalog."""

    name = "fake"

    def __init__(self, quotes: SpotQuotes, *, fail: bool = False) -> None:
        super().__init__(quotes)
        self.fail = fail

    def catalog(self) -> list[CatalogEntry]:
        return [dataclasses.replace(ENTRY, provider="fake")]

    async def spot_quotes(self, types_by_region: Mapping[str, set[str]]) -> SpotQuotes:
        if self.fail:
            raise ConnectionError("the price API is away")
        return await super().spot_quotes(types_by_region)


async def test_a_failing_feed_keeps_its_older_quotes_and_spares_the_others() -> None:
    key = (ENTRY.region, ENTRY.zone, ENTRY.instance_type)
    good, bad = _Feed({key: 0.011}), _Feed({key: 0.012})
    clock = [1_000.0]
    refresher = PriceRefresher(
        providers={"a": good, "b": bad},  # type: ignore[dict-item]
        stop=asyncio.Event(),
        clock=lambda: clock[0],
    )
    assert await refresher.refresh_once() == 2
    bad.fail, good.quotes[key], clock[0] = True, 0.013, 1_300.0
    assert await refresher.refresh_once() == 1
    assert refresher.prices.quote(dataclasses.replace(ENTRY, provider="a"), 1_300.0) == 0.013
    assert refresher.prices.quote(dataclasses.replace(ENTRY, provider="b"), 1_300.0) == 0.012
    assert (good.calls, bad.calls) == (2, 1)  # the failed ask raised before counting
