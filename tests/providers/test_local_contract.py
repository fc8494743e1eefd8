"""The local provider passes the provider contract with real process groups."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spotd.catalog import default_local_catalog
from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.providers.local import LocalProvider
from spotd.types import AgentConfig, InstanceId, Market
from tests.providers.contract import ProviderContract

HOME_TAG = "contract-home"


class LocalHarness:
    supports_notice = True
    home_tag = HOME_TAG

    def __init__(self, root: Path) -> None:
        self.root = root
        self.catalog = default_local_catalog()
        self.provider = LocalProvider(root, self.catalog)

    def spec(self, key: str) -> InstanceSpec:
        e = next(e for e in self.catalog if e.instance_type == "cpu-1")
        agent = AgentConfig(
            instance_key=key, attempt_id=key.rsplit("-", 1)[0], job_id=1, task_id="t",
            attempt=1, node_rank=0, num_nodes=1, setup=None, run="sleep 600",
            daemon_url=f"unix:{self.root}/no-daemon.sock", token="x",
            checkpoint_store=str(self.root / "ckpt"),
        )
        return InstanceSpec(key=key, region=e.region, zone=e.zone, instance_type=e.instance_type,
                            market=Market.SPOT, tags={TAG_HOME: HOME_TAG, TAG_KEY: key},
                            agent=agent)

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


class TestLocalProviderContract(ProviderContract):
    pass


