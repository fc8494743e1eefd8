"""Failures the real Slurm commands produce arrive as the provider's error types."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from spotd.providers.base import (
    TAG_HOME,
    TAG_KEY,
    InstanceSpec,
    InvalidRequest,
    ProviderUnavailable,
)
from spotd.providers.slurm import SlurmProvider, parse_partitions
from spotd.types import AgentConfig, Market

pytestmark = pytest.mark.slurm


def _spec(root: Path, partition: str, instance_type: str) -> InstanceSpec:
    agent = AgentConfig(
        instance_key="e1-a1-n0",
        attempt_id="e1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run="true",
        daemon_url="unix:/nowhere",
        token="x",
        checkpoint_store=str(root / "ckpt"),
    )
    return InstanceSpec(
        key="e1-a1-n0",
        region=partition,
        zone=partition,
        instance_type=instance_type,
        market=Market.ON_DEMAND,
        tags={TAG_HOME: f"errors-{uuid.uuid4().hex[:8]}", TAG_KEY: "e1-a1-n0"},
        agent=agent,
    )


async def test_a_partition_slurm_does_not_know_is_an_invalid_request(tmp_path, slurm_cluster):
    p = SlurmProvider(
        root=tmp_path, partitions=parse_partitions({"nosuch": {"cpus": 1, "memory_gb": 0.25}})
    )
    with pytest.raises(InvalidRequest, match=r"(?i)invalid partition"):
        await p.launch(_spec(tmp_path, "nosuch", "nosuch-1cpu"))


async def test_more_memory_than_any_node_has_is_an_invalid_request(tmp_path, slurm_cluster):
    p = SlurmProvider(
        root=tmp_path, partitions=parse_partitions({"debug": {"cpus": 1, "memory_gb": 64}})
    )
    with pytest.raises(InvalidRequest):
        await p.launch(_spec(tmp_path, "debug", "debug-1cpu"))


async def test_an_unreachable_controller_is_provider_unavailable_within_the_timeout(
    tmp_path, slurm_cluster
):
    conf = Path("/etc/slurm/slurm.conf").read_text()
    bad = tmp_path / "slurm.conf"
    bad.write_text(conf.replace("SlurmctldPort=6817", "SlurmctldPort=6999"))
    p = SlurmProvider(
        root=tmp_path,
        partitions=parse_partitions({"debug": {"cpus": 1, "memory_gb": 0.25}}),
        slurm_conf=str(bad),
        command_timeout=2,
    )
    t0 = time.monotonic()
    with pytest.raises(ProviderUnavailable):
        await p.list_instances()
    with pytest.raises(ProviderUnavailable):
        await p.launch(_spec(tmp_path, "debug", "debug-1cpu"))
    assert time.monotonic() - t0 < 10
