"""A job through a real daemon whose only provider is Kubernetes (kmock), preempted once.

The test plays the kubelet honestly but minimally: when spotd creates a pod, the fake kubelet
reads the pod's Secret from the API server, writes its ``agent.json`` into a local directory
and starts ``python -m spotd.agent`` there as a process group, exactly what the pod's command
does in its container — then marks the pod Running. The agent reaches the daemon over its unix
socket (no ``daemon_url`` configured). A spot reclaim is staged the way a node shutdown shows:
the pod goes Failed/NodeShutdown and its processes die with the node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc
from tests.e2e.helpers import digest_of, expected_digest, logs, train_yaml, wait_job, wait_log
from tests.k8s.kmock_env import Cluster, FakeKubelet, kmock_cluster

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


class LocalKubelet(FakeKubelet):
    """Runs each new pod's agent as a local process group (what the container would run)."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        super().__init__(cluster, on_start=self._run)
        self.root = root
        self.pgids: dict[str, int] = {}
        self.stores: dict[str, Path] = {}  # each pod's checkpoint store (a shared directory)

    async def _run(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        secret = self.cluster.obj("secrets", meta["namespace"], meta["name"])
        assert secret is not None, "the pod's Secret must exist before the pod"
        cfg = json.loads(base64.b64decode(secret["data"]["agent.json"]))
        d = self.root / meta["name"]
        d.mkdir(parents=True, exist_ok=True)
        cfg["instance_dir"] = str(d)  # the container's emptyDir
        self.stores[meta["name"]] = Path(cfg["checkpoint_store"])
        (d / "agent.json").write_text(json.dumps(cfg))
        out = open(d / "agent.out", "ab")  # noqa: SIM115 - handed to the child
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "spotd.agent",
            str(d),
            stdout=out,
            stderr=out,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            cwd=d,
        )
        out.close()
        self.pgids[meta["name"]] = proc.pid

    def lose_node(self, pod: str) -> None:
        with contextlib.suppress(ProcessLookupError, KeyError):
            os.killpg(self.pgids[pod], signal.SIGKILL)

    def cleanup(self) -> None:
        for pgid in self.pgids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


def providers_json(url: str) -> str:
    types = [{"name": "cpu-1", "vcpus": 1, "memory_gb": 4, "ondemand": 0.05}]
    return json.dumps(
        {
            "local": {"enabled": False},
            "k8s": {
                "watch_seconds": 10,
                "regions": {
                    "k8s-east": {
                        "host": url,
                        "namespace": "east",
                        "spot": "karpenter",
                        "instance_types": [{**types[0], "spot": 0.02}],
                    },
                    "k8s-west": {
                        "host": url,
                        "namespace": "west",
                        "spot": "karpenter",
                        "instance_types": [{**types[0], "spot": 0.03}],
                    },
                },
            },
        }
    )


@pytest.fixture
async def k8s_daemon() -> AsyncIterator[tuple[DaemonProc, Cluster, LocalKubelet]]:
    home = Path(f"/tmp/spotd-k{os.getpid()}-{time.monotonic_ns() % 10**9}")
    async with kmock_cluster() as cluster:
        kubelet = LocalKubelet(cluster, home / "pods")
        kubelet.start()
        d = DaemonProc(home, {"SPOTD_PROVIDERS_JSON": providers_json(cluster.url)})
        try:
            await asyncio.to_thread(d.start)  # the loop keeps serving kmock meanwhile
            yield d, cluster, kubelet
        finally:
            await asyncio.to_thread(d.stop)
            await kubelet.stop()
            kubelet.cleanup()
            shutil.rmtree(home, ignore_errors=True)


async def test_job_runs_on_pods_and_survives_a_node_reclaim(
    k8s_daemon: tuple[DaemonProc, Cluster, LocalKubelet],
) -> None:
    daemon, cluster, kubelet = k8s_daemon
    steps = 40
    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=steps), filename="t.yaml")
        jid = job["id"]
        job = await wait_job(c, jid, lambda j: j["status"] == "RUNNING", what="running")
        first = job["attempts"][0]
        assert (first["provider"], first["region"]) == ("k8s", "k8s-east")  # cheapest spot
        await wait_log(c, jid, "(checkpoint)", attempt=1)
        pod = f"spotd-j{jid}-a1-n0"
        assert cluster.pod("east", pod) is not None
        # a reclaim without notice resumes from the last checkpoint *synced* off the node:
        # wait for the first to land (under load it may trail the job's log line)
        marker = kubelet.stores[pod] / ".spotd-attempt"
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "no checkpoint reached the store"
            await asyncio.sleep(0.05)
        # the node is reclaimed: the pod fails with NodeShutdown and its processes die
        kubelet.lose_node(pod)
        assert (
            await cluster.patch_pod_status(
                "east", pod, {"phase": "Failed", "reason": "NodeShutdown"}
            )
            == 200
        )
        job = await wait_job(
            c, jid, lambda j: j["status"] in TERMINAL, timeout=90, what="the job to finish"
        )
        text = await logs(c, jid)
    assert job["status"] == "SUCCEEDED", (job, daemon.log_tail())
    assert job["preemptions"] == 1
    assert [a["region"] for a in job["attempts"]] == ["k8s-east", "k8s-west"]
    assert digest_of(text) == expected_digest(steps)
    assert "resumed from step" in text
    # the ended attempt's pod is deleted by spotd's reaping
    deadline = time.monotonic() + 20
    # the cluster's state is polled: there is no event to wait on (hence ASYNC110)
    while cluster.pod("east", pod) is not None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    assert cluster.pod("east", pod) is None
