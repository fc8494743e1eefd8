"""The Kubernetes provider passes the provider contract against kmock on loopback.

kmock is the API server (create/list/watch/patch/delete over HTTP, through unmodified
kubernetes_asyncio); a fake kubelet marks new pods Running; preemption and notice are staged
the way a cluster reports them: phase Failed with reason NodeShutdown, and a DisruptionTarget
condition on a running pod. See tests/k8s/kmock_env.py for what kmock does not do.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.providers.kubernetes import KubernetesProvider, parse_config
from spotd.types import AgentConfig, InstanceId, Market
from tests.k8s.kmock_env import Cluster, FakeKubelet, kmock_cluster
from tests.providers.contract import NoticeContract, ProviderContract

pytestmark = pytest.mark.k8s

HOME_TAG = "contract-home"
NAMESPACE = "spotd-contract"


def k8s_config(url: str, **extra: object) -> dict[str, object]:
    return {
        "regions": {
            "kmock-a": {
                "host": url,
                "namespace": NAMESPACE,
                "spot": "karpenter",
                "instance_types": [
                    {"name": "cpu-1", "vcpus": 1, "memory_gb": 4, "ondemand": 0.05, "spot": 0.02}
                ],
            }
        },
        "daemon_url": "http://127.0.0.1:1",
        "watch_seconds": 5,
        **extra,
    }


def spec_for(
    key: str,
    *,
    instance_type: str = "cpu-1",
    market: Market = Market.SPOT,
    region: str = "kmock-a",
    home: str = HOME_TAG,
) -> InstanceSpec:
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
        daemon_url="http://127.0.0.1:1",
        token="secret-token",
        checkpoint_store="/tmp/ckpt/t",
    )
    return InstanceSpec(
        key=key,
        region=region,
        zone=region,
        instance_type=instance_type,
        market=market,
        tags={TAG_HOME: home, TAG_KEY: key},
        agent=agent,
    )


class K8sHarness:
    home_tag = HOME_TAG

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cfg = k8s_config(cluster.url)
        self.provider = KubernetesProvider(parse_config(self.cfg), home_tag=HOME_TAG)
        self.others: list[KubernetesProvider] = []

    def spec(self, key: str) -> InstanceSpec:
        return spec_for(key)

    async def preempt(self, instance_id: InstanceId) -> None:
        name = instance_id.split("/", 1)[1]
        status = {
            "phase": "Failed",
            "reason": "NodeShutdown",
            "message": "Pod was terminated in response to imminent node shutdown.",
        }
        assert await self.cluster.patch_pod_status(NAMESPACE, name, status) == 200

    async def notice(self, instance_id: InstanceId, seconds: float) -> None:
        """A DisruptionTarget condition on a still-running pod."""
        # the kubelet's graceful node shutdown (a spot reclaim) marks the pod first; the
        # deadline is the condition's time plus the pod's grace period (30 s here)
        name = instance_id.split("/", 1)[1]
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        status = {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "TerminationByKubelet",
                    "lastTransitionTime": now,
                },
            ],
        }
        assert await self.cluster.patch_pod_status(NAMESPACE, name, status) == 200

    async def new_provider(self) -> KubernetesProvider:
        p = KubernetesProvider(parse_config(self.cfg), home_tag=HOME_TAG)
        self.others.append(p)
        return p

    async def make_stray(self, key: str) -> InstanceId:
        behind = await self.new_provider()  # another process creating a tagged pod
        return await behind.launch(self.spec(key))

    async def close(self) -> None:
        for p in [self.provider, *self.others]:
            await p.close()


@pytest.fixture
async def harness() -> AsyncIterator[K8sHarness]:
    async with kmock_cluster() as cluster:
        kubelet = FakeKubelet(cluster)
        kubelet.start()
        h = K8sHarness(cluster)
        try:
            yield h
        finally:
            await h.close()
            await kubelet.stop()


class TestK8sProviderContract(ProviderContract, NoticeContract):
    async def test_notice_deadline_is_the_grace_period(self, harness: K8sHarness) -> None:
        """Beyond the contract: the NOTICE deadline is the condition time + grace (30 s)."""
        from spotd.types import InstanceState
        from tests.providers.contract import eventually, finder

        spec = harness.spec("c8-a1-n0")
        iid = await harness.provider.launch(spec)
        await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is not None and o.state == InstanceState.RUNNING,
        )
        t0 = time.time()
        await harness.notice(iid, 30)
        obs = await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is not None and o.state == InstanceState.NOTICE,
        )
        assert obs is not None and obs.notice_deadline is not None
        assert t0 + 28 <= obs.notice_deadline <= time.time() + 31
