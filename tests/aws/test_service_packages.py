"""A service replica on EC2 (moto) restores its version's packages from the S3 package store,
as a job's node does: the daemon stages them there before the launch."""

from __future__ import annotations

import json

import pytest

from spotd.sdk.client_serve import serve_down, serve_events, serve_up, wait_service
from tests.aws.motoserver import moto_server  # noqa: F401 - the aws_daemon's moto
from tests.aws.test_daemon_on_moto import AwsDaemon, aws_daemon  # noqa: F401
from tests.services.shipping import (
    REMOTE_YAML,
    reaping,
    remove_sources,
    replica_log,
    write_sources,
)


@pytest.mark.aws
@pytest.mark.slow
async def test_aws_replica_restores_workdir_and_mount_from_s3(
    aws_daemon: AwsDaemon,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """A replica on EC2 cannot read the daemon's disk: its packages go to the S3 package store
    and its agent restores them from there before the run (moto plays EC2 and S3; the
    instance's address is not reachable here, so the run reports through its log)."""
    d = aws_daemon
    monkeypatch.chdir(tmp_path)
    write_sources(tmp_path, "aws")
    text = REMOTE_YAML.format(target=tmp_path / "restored")
    async with reaping(tmp_path, d.proc.home), d.player(), d.proc.client() as c:
        svc = await serve_up(c, text, filename="shipped.yaml")
        assert svc["upload"]["packages"] == 2, svc
        remove_sources(tmp_path)
        log = await replica_log(c, "served")
        events = [e["message"] for e in await serve_events(c, "shipped")]
        await serve_down(c, "shipped")
        await wait_service(c, "shipped", lambda s: s["status"] == "DOWN", timeout=30)
    assert "served code-aws note-aws" in log, (log, events)
    cfg = json.loads((d.agents_root / "s1-r1" / "agent.json").read_text())
    assert cfg["blob_store"] == f"s3://{d.bucket}/ckpt/packages"
    assert cfg["workdir"].startswith("cas:")
    assert any("2 packages to s3://" in m for m in events), events
