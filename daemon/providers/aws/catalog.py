"""The EC2 catalog: which file prices come from, and how live spot quotes are folded into it.

A configured file wins; else the copy ``spotctl catalog refresh`` wrote under the daemon's home;
else the snapshot packaged with spotd. Refreshing keeps the snapshot's price wherever a live
quote is missing or implausible (``apply_spot_quotes``, pure).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml

from spotd.pricing.catalog import load_catalog, parse_catalog
from spotd.providers.aws.config import PROVIDER_NAME, AwsConfig
from spotd.types import CatalogEntry


def snapshot_path() -> Traversable:
    """The catalog snapshot packaged with spotd."""
    return importlib.resources.files("spotd").joinpath("data/aws_catalog.yaml")


def refreshed_path(home: Path) -> Path:
    """Where ``spotctl catalog refresh`` writes the catalog with live spot prices."""
    return home / "catalogs" / "aws.yaml"


def load_aws_catalog(config: AwsConfig, home: Path | None) -> list[CatalogEntry]:
    """The configured file, else a refreshed copy under the home, else the packaged snapshot;
    restricted to the configured regions."""
    if config.catalog:
        entries = load_catalog(config.catalog)
    elif home is not None and refreshed_path(home).exists():
        entries = load_catalog(refreshed_path(home))
    else:
        entries = parse_catalog(
            snapshot_path().read_text(encoding="utf-8"), source="spotd:data/aws_catalog.yaml"
        )
    entries = [e for e in entries if e.provider == PROVIDER_NAME]
    if config.regions:
        entries = [e for e in entries if e.region in config.regions]
    return entries


@dataclass
class RefreshResult:
    text: str  # the refreshed catalog, in the catalog format
    updated: int = 0  # zone prices replaced by a live quote
    kept: int = 0  # zone prices kept from the snapshot (no quote, or an implausible one)
    lines: list[str] = field(default_factory=list)


PLAUSIBLE_SPOT = (0.02, 1.0)  # a live spot quote is used only within these fractions of on-demand


def apply_spot_quotes(
    snapshot_text: str, quotes: Mapping[tuple[str, str, str], float], *, now: float
) -> RefreshResult:
    """The snapshot with per-zone spot overrides from ``quotes`` ((region, zone, type) -> $/h).

    A quote outside ``PLAUSIBLE_SPOT`` times on-demand is ignored and the snapshot's price kept:
    moto answers 0.00001 for everything, and a real market never sells a GPU for nothing.
    """
    entries = parse_catalog(snapshot_text, source="aws catalog")
    doc = yaml.safe_load(snapshot_text)
    by_type = {t["name"]: t for t in doc["instance_types"]}
    result = RefreshResult(text="")
    implausible = 0
    for e in entries:
        if e.provider != PROVIDER_NAME or e.spot_price is None:
            continue
        quote = quotes.get((e.region, e.zone, e.instance_type))
        lo, hi = PLAUSIBLE_SPOT
        if quote is None or not lo * e.ondemand_price <= quote <= hi * e.ondemand_price:
            result.kept += 1
            implausible += quote is not None
            continue
        prices = by_type[e.instance_type]["prices"][e.region]
        prices.setdefault("zones", {}).setdefault(e.zone, {})["spot"] = round(quote, 4)
        result.updated += 1
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# EC2 catalog with spot prices refreshed from DescribeSpotPriceHistory at {stamp}\n"
        f"# ({result.updated} zone prices live, {result.kept} kept from the snapshot).\n"
    )
    result.text = header + yaml.safe_dump(doc, sort_keys=False)
    parse_catalog(result.text, source="refreshed aws catalog")  # never write a broken catalog
    if implausible:
        result.lines.append(
            f"{implausible} quotes were implausible (outside {lo:g}-{hi:g}x on-demand, e.g. "
            f"moto's 0.00001): kept the snapshot's prices for them"
        )
    return result
