"""The daemon's spot price refresh: every provider that quotes its market, every few minutes.

``PriceRefresher.start`` refreshes once as the job controller starts, then ``run`` (a supervised
task) every ``refresh_seconds``; each refresh asks each enabled provider that
declares ``SpotPriceFeed`` for the spot types its catalog sells, region by region, and keeps the
answers in a :class:`spotd.pricing.live.LivePrices`, which the controller lays over the catalog
it places with. A provider that fails a refresh keeps its older quotes until they go stale
(``LivePrices.max_age_seconds``); the catalog's prices stand after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import structlog

from spotd.aiokit import Supervisor, sleep
from spotd.pricing.live import LivePrices, Quote
from spotd.providers.base import Provider
from spotd.providers.capabilities import Disableable, SpotPriceFeed
from spotd.types import CatalogEntry

__all__ = ["PriceRefresher"]

log = structlog.get_logger("spotd.control.prices")


class PriceRefresher:
    def __init__(
        self,
        *,
        providers: Mapping[str, Provider],
        stop: asyncio.Event,
        clock: Callable[[], float],
        prices: LivePrices | None = None,
        refresh_seconds: float = 300.0,
    ) -> None:
        self.providers = providers
        self.prices = prices or LivePrices()
        self.stop = stop
        self.clock = clock
        self.refresh_seconds = refresh_seconds

    def live(self, entries: Sequence[CatalogEntry]) -> list[CatalogEntry]:
        """``entries`` at the live spot prices where a fresh quote exists."""
        return self.prices.apply(entries, self.clock())

    async def refresh_once(self) -> int:
        """Ask every quoting provider once; the number of quotes kept."""
        kept = 0
        for name, provider in self.providers.items():
            if not isinstance(provider, SpotPriceFeed):
                continue
            if isinstance(provider, Disableable) and provider.disabled_reason:
                continue
            types: dict[str, set[str]] = {}
            for e in provider.catalog():
                if e.spot_price is not None:
                    types.setdefault(e.region, set()).add(e.instance_type)
            if not types:
                continue
            try:
                quotes = await provider.spot_quotes(types)
            except Exception as exc:  # noqa: BLE001 - one provider's outage must not stop the rest
                log.warning("spot price refresh failed", provider=name, error=str(exc))
                continue
            now = self.clock()
            kept += self.prices.update(
                Quote(name, region, zone, itype, price, now)
                for (region, zone, itype), price in quotes.items()
            )
        return kept

    async def start(self, sup: Supervisor, *, first_within: float = 5.0) -> None:
        """Refresh once before the daemon places anything (a dry run and the launch that
        follows must see the same prices), waiting ``first_within`` seconds at most; then
        every ``refresh_seconds`` in the supervised task ``prices``."""
        try:
            await asyncio.wait_for(self.refresh_once(), first_within)
        except TimeoutError:
            log.warning("spot prices: the first refresh is slow; placing at catalog prices")
        sup.spawn("prices", self.run)

    async def run(self) -> None:
        while not self.stop.is_set():
            await sleep(self.refresh_seconds, self.stop)
            await self.refresh_once()
