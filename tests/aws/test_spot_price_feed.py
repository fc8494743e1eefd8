"""The daemon's spot price refresh against EC2's ``DescribeSpotPriceHistory`` on moto.

moto quotes 0.00001 for every type and zone: the refresh must fetch a quote per zone and type
the catalog sells (what a live market answers, over the wire) and the catalog must keep its
own price for a quote that implausible (``spotd.pricing.live.PLAUSIBLE``).
"""

from __future__ import annotations

import asyncio

import pytest

from spotd.control.prices import PriceRefresher
from spotd.providers.aws import AwsConfig, AwsProvider, load_aws_catalog
from spotd.providers.capabilities import SpotPriceFeed
from tests.aws.motoserver import AMI, Moto, moto_server  # noqa: F401

pytestmark = pytest.mark.aws


async def test_the_refresh_fetches_live_quotes_and_keeps_implausible_ones_out(
    moto_server: Moto,  # noqa: F811
) -> None:
    config = AwsConfig.from_mapping(
        {"regions": ["us-east-1"], "endpoint_url": moto_server.url, "image_id": AMI}
    )
    provider = AwsProvider(config, load_aws_catalog(config, None))
    assert isinstance(provider, SpotPriceFeed)
    refresher = PriceRefresher(providers={"aws": provider}, stop=asyncio.Event(), clock=lambda: 0.0)
    try:
        kept = await refresher.refresh_once()
    finally:
        await provider.close()
    sold = {(e.region, e.instance_type) for e in provider.catalog() if e.spot_price is not None}
    assert kept > 0 and len(refresher.prices) == kept
    quoted = {(q.region, q.instance_type) for q in refresher.prices.quotes()}
    assert quoted & sold  # quotes for the types the catalog sells, in its region
    catalog = list(provider.catalog())
    assert refresher.live(catalog) == catalog  # 0.00001/h is not a price: the catalog's stand
