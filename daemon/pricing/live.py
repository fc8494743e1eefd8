"""Live spot prices over the static catalog: what placement and the DEADLINE policy read.

A provider that can quote its spot market (``spotd.providers.capabilities.SpotPriceFeed``:
EC2's ``DescribeSpotPriceHistory``, the local provider's seeded price walk) is asked every
``refresh_seconds`` by the daemon (``spotd.control.prices``); the quotes land here, in
:class:`LivePrices`, and :meth:`LivePrices.apply` lays them over the provider's catalog entries,
so the controller places with the price of the moment instead of the snapshot's. That is the
data ``spotctl simulate jobs`` gives its policies (the trace's price at every tick).

A quote is used only while it is fresh (``max_age_seconds``) and plausible (within
``PLAUSIBLE`` fractions of the entry's on-demand price: moto quotes 0.00001 for everything, and
no real market sells a GPU for nothing); otherwise the catalog's price stands.

:func:`price_walk` is the local provider's market: a mean-reverting walk around the catalog's
spot price, one step every ``step_seconds``, seeded, so two daemons (or a test and its rerun)
with the same seed see the same prices at the same step.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spotd.types import CatalogEntry

__all__ = ["PLAUSIBLE", "LivePrices", "Quote", "price_walk"]

PLAUSIBLE = (0.02, 1.0)  # a live spot quote is used only within these fractions of on-demand


@dataclass(frozen=True, slots=True)
class Quote:
    provider: str
    region: str
    zone: str
    instance_type: str
    price: float  # USD/hour
    at: float  # epoch seconds it was fetched


class LivePrices:
    """The newest spot quote per (provider, region, zone, type)."""

    def __init__(self, *, max_age_seconds: float = 3600.0) -> None:
        self.max_age_seconds = max_age_seconds
        self._quotes: dict[tuple[str, str, str, str], Quote] = {}

    def update(self, quotes: Iterable[Quote]) -> int:
        """Keep the newer of each quote; the number kept."""
        n = 0
        for q in quotes:
            key = (q.provider, q.region, q.zone, q.instance_type)
            old = self._quotes.get(key)
            if old is None or q.at >= old.at:
                self._quotes[key] = q
                n += 1
        return n

    def quote(self, entry: CatalogEntry, now: float) -> float | None:
        """The live price for ``entry`` if fresh and plausible, else None."""
        q = self._quotes.get((entry.provider, entry.region, entry.zone, entry.instance_type))
        if q is None or now - q.at > self.max_age_seconds or entry.spot_price is None:
            return None
        lo, hi = PLAUSIBLE
        if not lo * entry.ondemand_price <= q.price <= hi * entry.ondemand_price:
            return None
        return q.price

    def apply(self, entries: Sequence[CatalogEntry], now: float) -> list[CatalogEntry]:
        """``entries`` with each spot price replaced by its live quote where there is one."""
        out = []
        for e in entries:
            price = self.quote(e, now)
            out.append(e if price is None else dataclasses.replace(e, spot_price=price))
        return out

    def quotes(self) -> list[Quote]:
        return list(self._quotes.values())

    def __len__(self) -> int:
        return len(self._quotes)


def price_walk(
    entries: Sequence[CatalogEntry],
    *,
    now: float,
    seed: int,
    step_seconds: float = 300.0,
    volatility: float = 0.08,
    reversion: float = 0.1,
) -> dict[tuple[str, str, str], float]:
    """Each spot entry's price at ``now``: ``base * exp(x)``, with ``x`` a mean-reverting walk
    (``x += -reversion * x + volatility * N(0, 1)`` every ``step_seconds``) whose steps are
    drawn from ``Random(f"{seed}:{region}:{zone}:{type}:{step}")``. The walk starts at 0 a day
    of steps before ``now``, so its value depends only on the seed and the step, not on when
    it was first asked."""
    step = math.floor(now / step_seconds)
    first = step - int(86400 / step_seconds)
    out: dict[tuple[str, str, str], float] = {}
    for e in entries:
        if e.spot_price is None:
            continue
        key = (e.region, e.zone, e.instance_type)
        x = 0.0
        for i in range(first, step + 1):
            x += -reversion * x + volatility * random.Random(f"{seed}:{':'.join(key)}:{i}").gauss()
        out[key] = round(e.spot_price * math.exp(x), 4)  # the catalog's precision
    return out
