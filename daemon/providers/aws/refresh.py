"""``spotctl catalog refresh``: live spot prices over the snapshot, written under the home."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spotd.pricing.catalog import parse_catalog
from spotd.providers.aws.catalog import (
    RefreshResult,
    apply_spot_quotes,
    refreshed_path,
    snapshot_path,
)
from spotd.providers.aws.config import PROVIDER_NAME, AwsConfig
from spotd.providers.aws.provider import AwsProvider, SpotQuotes, credentials_problem
from spotd.providers.base import ProviderUnavailable


async def fetch_spot_quotes(
    provider: AwsProvider, types_by_region: Mapping[str, set[str]]
) -> SpotQuotes:
    """The newest Linux spot price per (region, zone, type), one paginated call per region."""
    return await provider.spot_quotes(types_by_region)


async def refresh_catalog(settings: Any, raw: Mapping[str, Any]) -> RefreshResult:
    """Live spot prices over the snapshot, written to ``refreshed_path(home)``."""
    config = AwsConfig.from_mapping(raw)
    reason = credentials_problem(config.profile)
    if reason:
        raise ProviderUnavailable(reason)
    text = (
        Path(config.catalog).read_text(encoding="utf-8")
        if config.catalog
        else snapshot_path().read_text(encoding="utf-8")
    )
    entries = [e for e in parse_catalog(text) if e.provider == PROVIDER_NAME]
    provider = AwsProvider(config, entries)
    types: dict[str, set[str]] = {}
    for e in entries:
        if e.region in provider.regions and e.spot_price is not None:
            types.setdefault(e.region, set()).add(e.instance_type)
    try:
        quotes = await provider.spot_quotes(types)
    finally:
        await provider.close()
    result = apply_spot_quotes(text, quotes, now=time.time())
    out = refreshed_path(settings.home)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(result.text, encoding="utf-8")
    tmp.replace(out)
    result.lines.insert(
        0,
        f"wrote {out}: {result.updated} spot prices updated, {result.kept} kept from the snapshot",
    )
    return result
