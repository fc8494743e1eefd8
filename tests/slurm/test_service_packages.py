"""A service replica on a Slurm node restores its version's packages as a job's node does."""

from __future__ import annotations

import pytest

from spotd.sdk.client_serve import serve_down, serve_status, serve_up, wait_service
from tests.services.shipping import (
    REMOTE_YAML,
    reaping,
    remove_sources,
    replica_log,
    write_sources,
)


@pytest.mark.slurm
@pytest.mark.slow
async def test_slurm_replica_restores_workdir_and_mount(slurm_daemon, tmp_path, monkeypatch):
    d = slurm_daemon
    monkeypatch.chdir(tmp_path)
    write_sources(tmp_path, "slurm")
    text = REMOTE_YAML.format(target=tmp_path / "restored").replace(
        "accelerators: T4:1", "cpus: 1\n  infra: slurm"
    )
    async with reaping(tmp_path, d.home), d.client() as c:
        svc = await serve_up(c, text, filename="shipped.yaml")
        assert svc["upload"]["packages"] == 2, svc
        remove_sources(tmp_path)
        log = await replica_log(c, "served", timeout=90)
        status = await serve_status(c, "shipped")
        await serve_down(c, "shipped")
        await wait_service(c, "shipped", lambda s: s["status"] == "DOWN", timeout=30)
    assert "served code-slurm note-slurm" in log, (log, status)
    assert status["replicas"][0]["provider"] == "slurm"
