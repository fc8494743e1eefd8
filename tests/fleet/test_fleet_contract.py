"""The fleet provider passes the provider contract against a real fleet process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.providers.fleet import FleetProvider, fleet_catalog
from spotd.types import AgentConfig, InstanceId, Market
from tests.fleet.conftest import FleetProc
from tests.providers.contract import NoticeContract, ProviderContract

HOME_TAG = "contract-home"


class FleetHarness:
    home_tag = HOME_TAG

    def __init__(self, fleet: FleetProc) -> None:
        self.fleet = fleet
        self.provider = FleetProvider(url=fleet.url)
        self.catalog = fleet_catalog()

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
            daemon_url="unix:/nonexistent/agent.sock",  # nobody listens: reports are retried
            token="x",
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

    async def control(self, action: str, **body: object) -> None:
        conn = aiohttp.UnixConnector(path=str(self.fleet.socket))
        async with (
            aiohttp.ClientSession(connector=conn) as s,
            s.post(f"http://fleet/v1/{action}", json=body) as r,
        ):
            assert r.status == 200, await r.text()

    async def preempt(self, instance_id: InstanceId) -> None:
        await self.control("preempt", id=instance_id)

    async def notice(self, instance_id: InstanceId, seconds: float) -> None:
        await self.control("preempt", id=instance_id, notice_seconds=seconds)

    async def new_provider(self) -> FleetProvider:
        return FleetProvider(url=self.fleet.url)

    async def make_stray(self, key: str) -> InstanceId:
        other = FleetProvider(url=self.fleet.url)
        try:
            return await other.launch(self.spec(key))
        finally:
            await other.close()


@pytest.fixture
async def harness(fleet_proc: FleetProc) -> AsyncIterator[FleetHarness]:
    h = FleetHarness(fleet_proc)
    yield h
    await h.provider.close()


class TestFleetProviderContract(ProviderContract, NoticeContract):
    pass
