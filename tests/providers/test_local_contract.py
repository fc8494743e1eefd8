"""The local provider passes the provider contract with real process groups."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spotd.pricing.catalog import default_local_catalog
from spotd.providers.base import TAG_HOME, TAG_KEY, CapacityUnavailable, InstanceSpec
from spotd.providers.local import LocalProvider
from spotd.types import AgentConfig, InstanceId, Market
from tests.providers.contract import NoticeContract, ProviderContract

HOME_TAG = "contract-home"


class LocalHarness:
    home_tag = HOME_TAG

    def __init__(self, root: Path) -> None:
        self.root = root
        self.catalog = default_local_catalog()
        self.provider = LocalProvider(root, self.catalog)

    def spec(self, key: str) -> InstanceSpec:
        e = next(e for e in self.catalog if e.instance_type == "cpu-1")
        agent = AgentConfig(
            instance_key=key,
            attempt_id=key.rsplit("-", 1)[0],
            job_id=1,
            task_id="t",
            attempt=1,
            node_rank=0,
            num_nodes=1,
            setup=None,
            run="sleep 600",
            daemon_url=f"unix:{self.root}/no-daemon.sock",
            token="x",
            checkpoint_store=str(self.root / "ckpt"),
        )
        return InstanceSpec(
            key=key,
            region=e.region,
            zone=e.zone,
            instance_type=e.instance_type,
            market=Market.SPOT,
            tags={TAG_HOME: HOME_TAG, TAG_KEY: key},
            agent=agent,
        )

    async def preempt(self, instance_id: InstanceId) -> None:
        self.provider.preempt(instance_id)

    async def notice(self, instance_id: InstanceId, seconds: float) -> None:
        self.provider.preempt(instance_id, notice_seconds=seconds)

    async def new_provider(self) -> LocalProvider:
        return LocalProvider(self.root, self.catalog)

    async def make_stray(self, key: str) -> InstanceId:
        return await LocalProvider(self.root, self.catalog).launch(self.spec(key))

    def cleanup(self) -> None:
        for meta in (self.root / "instances").glob("*/meta.json"):
            try:
                os.killpg(json.loads(meta.read_text())["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError, KeyError):
                pass


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[LocalHarness]:
    h = LocalHarness(tmp_path)
    yield h
    h.cleanup()
    await h.provider.close()
    await asyncio.sleep(0)


class TestLocalProviderContract(ProviderContract, NoticeContract):
    pass


# -- the stockout control ----------------------------------------------------------------


def _in(h: LocalHarness, key: str, region: str, market: Market) -> InstanceSpec:
    e = next(e for e in h.catalog if e.instance_type == "cpu-1" and e.region == region)
    return dataclasses.replace(h.spec(key), region=region, zone=e.zone, market=market)


async def _launches(provider: LocalProvider, spec: InstanceSpec) -> bool:
    try:
        await provider.terminate(await provider.launch(spec))
    except CapacityUnavailable:
        return False
    return True


async def test_a_spot_stockout_refuses_spot_only_in_its_region_until_it_ends(
    harness: LocalHarness,
) -> None:
    now = [1000.0]
    p = LocalProvider(harness.root, harness.catalog, clock=lambda: now[0])
    p.stockout("local-east", seconds=60, market=Market.SPOT)
    with pytest.raises(CapacityUnavailable, match="no spot capacity in local-east"):
        await p.launch(_in(harness, "s-1-n0", "local-east", Market.SPOT))
    assert await _launches(p, _in(harness, "o-1-n0", "local-east", Market.ON_DEMAND))
    assert await _launches(p, _in(harness, "w-1-n0", "local-west", Market.SPOT))
    # another provider object over the same root (a restarted daemon) sees it too
    other = LocalProvider(harness.root, harness.catalog, clock=lambda: now[0])
    assert not await _launches(other, _in(harness, "s-2-n0", "local-east", Market.SPOT))
    now[0] += 61
    assert await _launches(p, _in(harness, "s-3-n0", "local-east", Market.SPOT))


async def test_seconds_zero_ends_a_stockout_of_that_market_only(harness: LocalHarness) -> None:
    p = harness.provider
    p.stockout("local-east", seconds=600, market=Market.SPOT)
    p.stockout("local-east", seconds=600, market=Market.ON_DEMAND)
    p.stockout("local-east", seconds=0, market=Market.SPOT)
    assert await _launches(p, _in(harness, "s-1-n0", "local-east", Market.SPOT))
    assert not await _launches(p, _in(harness, "o-1-n0", "local-east", Market.ON_DEMAND))


async def test_a_stockout_without_a_market_refuses_both_as_before(harness: LocalHarness) -> None:
    p = harness.provider
    p.stockout("local-east", seconds=600)
    for market in Market:
        with pytest.raises(CapacityUnavailable, match=f"no {market} capacity"):
            await p.launch(_in(harness, "b-1-n0", "local-east", market))
    # a one-market stockout ending does not lift the stockout of both
    p.stockout("local-east", seconds=0, market=Market.SPOT)
    assert not await _launches(p, _in(harness, "s-1-n0", "local-east", Market.SPOT))
    with pytest.raises(KeyError, match="mars"):
        p.stockout("mars", seconds=5, market=Market.SPOT)


async def test_a_stockouts_file_of_before_markets_still_refuses_both(
    harness: LocalHarness,
) -> None:
    """``{region: until}`` is what a daemon of before one-market stockouts wrote."""
    (harness.root / "stockouts.json").write_text(json.dumps({"local-west": time.time() + 600}))
    for market in Market:
        spec = _in(harness, "b-1-n0", "local-west", market)
        assert not await _launches(harness.provider, spec)
