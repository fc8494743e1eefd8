"""Fixtures of the slurm tier: the cluster, and a real daemon configured with only Slurm."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotd.providers.slurm import SlurmProvider, parse_partitions
from tests.conftest import DaemonProc
from tests.slurm.cluster import PARTITIONS, SlurmCluster, slurm_cluster  # noqa: F401


def slurm_providers_json(**extra: object) -> str:
    return json.dumps({"local": {"enabled": False}, "slurm": {"partitions": PARTITIONS, **extra}})


def cancel_jobs_of(root: Path, home_tag: str) -> None:
    """scancel every Slurm job tagged with ``home_tag`` (test hygiene)."""

    async def go() -> None:
        p = SlurmProvider(root=root, partitions=parse_partitions(PARTITIONS), command_timeout=30)
        for o in await p.list_instances():
            if o.tags.get("spotd-home") == home_tag:
                await p.terminate(o.id)
        await p.close()

    asyncio.run(go())


@pytest.fixture
def slurm_daemon(slurm_cluster: SlurmCluster) -> Iterator[DaemonProc]:  # noqa: F811
    # unix socket paths are limited to ~107 bytes: keep the home short
    home = Path(f"/tmp/spotd-s{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(home, extra_env={"SPOTD_PROVIDERS_JSON": slurm_providers_json()})
    d.start()
    try:
        yield d
    finally:
        d.stop()
        from spotd.config import load_settings

        cancel_jobs_of(home / "slurm", load_settings(home, env=d.env).home_tag)
        slurm_cluster.node_resume()
        shutil.rmtree(home, ignore_errors=True)
