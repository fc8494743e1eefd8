"""The fleet's catalog: the local provider's shapes and prices, in regions of its own.

``fleet-east``, ``fleet-central`` and ``fleet-west`` (two zones each) mirror ``local-*`` price for
price, so a benchmark on the fleet places and fails over exactly as the embedded provider would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from spotd.pricing.catalog import default_local_catalog
from spotd.types import CatalogEntry

__all__ = ["PROVIDER_NAME", "fleet_catalog", "fleet_offers"]

PROVIDER_NAME = "fleet"


def _rename(name: str) -> str:
    return PROVIDER_NAME + name.removeprefix("local")


def fleet_catalog() -> list[CatalogEntry]:
    return [
        dataclasses.replace(
            e, provider=PROVIDER_NAME, region=_rename(e.region), zone=_rename(e.zone)
        )
        for e in default_local_catalog()
    ]


def fleet_offers() -> Mapping[tuple[str, str], frozenset[str]]:
    """(region, zone) -> the instance types sold there."""
    out: dict[tuple[str, str], set[str]] = {}
    for e in fleet_catalog():
        out.setdefault((e.region, e.zone), set()).add(e.instance_type)
    return {k: frozenset(v) for k, v in out.items()}
