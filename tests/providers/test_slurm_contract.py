"""The Slurm provider passes the provider contract against a real one-node cluster.

A preemption is staged the way a machine is lost on a real cluster: the node is taken DOWN
(Slurm ends the job as NODE_FAIL), and brought back once that has been seen, so that the next
test has a node to run on. Slurm gives a provider no advance notice (it does not declare
``AdvanceNotices``), so the notice contract is not part of this suite.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.providers.slurm import SlurmProvider, parse_partitions
from spotd.types import AgentConfig, InstanceId, InstanceState, Market
from tests.providers.contract import ProviderContract
from tests.slurm.cluster import PARTITIONS, SlurmCluster, slurm_cluster  # noqa: F401

pytestmark = pytest.mark.slurm


class SlurmHarness:
    def __init__(self, root: Path, cluster: SlurmCluster) -> None:
        self.root = root
        self.cluster = cluster
        self.home_tag = f"contract-{uuid.uuid4().hex[:8]}"
        self.provider = self._make()

    def _make(self) -> SlurmProvider:
        return SlurmProvider(
            root=self.root,
            partitions=parse_partitions(PARTITIONS),
            python=sys.executable,
            command_timeout=30,
        )

    def spec(self, key: str) -> InstanceSpec:
        e = next(e for e in self.provider.catalog() if e.region == "debug")
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
            tags={TAG_HOME: self.home_tag, TAG_KEY: key},
            agent=agent,
        )

    async def preempt(self, instance_id: InstanceId) -> None:
        """Node DOWN until Slurm reports the job lost, then the node comes back."""
        await asyncio.to_thread(self.cluster.node_down)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                mine = [o for o in await self.provider.list_instances() if o.id == instance_id]
                if not mine or mine[0].state == InstanceState.PREEMPTED:
                    return
                await asyncio.sleep(0.2)
            raise AssertionError(f"job {instance_id} was not ended by the node going DOWN")
        finally:
            await asyncio.to_thread(self.cluster.node_resume)

    async def new_provider(self) -> SlurmProvider:
        return self._make()

    async def make_stray(self, key: str) -> InstanceId:
        return await self._make().launch(self.spec(key))

    async def cleanup(self) -> None:
        for o in await self.provider.list_instances():
            if o.tags.get(TAG_HOME) == self.home_tag:
                await self.provider.terminate(o.id)


@pytest.fixture
async def harness(
    tmp_path: Path,
    slurm_cluster: SlurmCluster,  # noqa: F811
) -> AsyncIterator[SlurmHarness]:
    h = SlurmHarness(tmp_path, slurm_cluster)
    yield h
    await h.cleanup()
    await h.provider.close()


class TestSlurmProviderContract(ProviderContract):
    pass
