"""A service replica in a pod (kmock plays the API server; the test's kubelet runs the pod's
agent) restores its version's packages as a job's pod does."""

from __future__ import annotations

import pytest

from spotd.sdk.client_serve import serve_down, serve_status, serve_up, wait_service
from tests.k8s.test_k8s_e2e import k8s_daemon  # noqa: F401
from tests.services.shipping import (
    REMOTE_YAML,
    reaping,
    remove_sources,
    replica_log,
    write_sources,
)


@pytest.mark.k8s
@pytest.mark.slow
async def test_k8s_replica_restores_workdir_and_mount(k8s_daemon, tmp_path, monkeypatch):  # noqa: F811
    """A replica in a pod (kmock plays the API server, the test's kubelet runs the pod's
    agent) restores the version's packages as a job's pod does, not the client's folders."""
    d, _cluster, _kubelet = k8s_daemon
    monkeypatch.chdir(tmp_path)
    write_sources(tmp_path, "k8s")
    text = REMOTE_YAML.format(target=tmp_path / "restored").replace("accelerators: T4:1", "cpus: 1")
    async with reaping(tmp_path, d.home), d.client() as c:
        svc = await serve_up(c, text, filename="shipped.yaml")
        assert svc["upload"]["packages"] == 2, svc
        remove_sources(tmp_path)
        log = await replica_log(c, "served")
        status = await serve_status(c, "shipped")
        await serve_down(c, "shipped")
        await wait_service(c, "shipped", lambda s: s["status"] == "DOWN", timeout=30)
    assert "served code-k8s note-k8s" in log, (log, status)
    assert status["replicas"][0]["provider"] == "k8s"
