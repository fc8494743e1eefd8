"""The Kubernetes provider against kmock: pod shape, batched listing, watch, errors, quotas."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from spotd.providers.base import (
    TAG_HOME,
    InvalidRequest,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.providers.kubernetes import KubernetesProvider, parse_config
from spotd.types import InstanceState, Market
from tests.k8s.kmock_env import Cluster, FakeKubelet, kmock
from tests.providers.contract import eventually, finder
from tests.providers.test_k8s_contract import HOME_TAG, spec_for

pytestmark = pytest.mark.k8s


def config(url: str, *, regions: tuple[str, ...] = ("east",), **extra: Any) -> dict[str, Any]:
    return {
        "regions": {
            r: {
                "host": url,
                "namespace": f"ns-{r}",
                "spot": "gke" if r == "east" else "karpenter",
                "instance_types": [
                    {"name": "cpu-1", "vcpus": 1, "memory_gb": 4, "ondemand": 0.05, "spot": 0.02}
                ],
                "gpu_types": {
                    "A100": {
                        "counts": [1, 2],
                        "ondemand_per_gpu": 3.0,
                        "spot_per_gpu": 1.0,
                        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
                    }
                },
            }
            for r in regions
        },
        "daemon_url": "http://10.0.0.1:8080",
        "watch_seconds": 5,
        **extra,
    }


@pytest.fixture
async def providers() -> AsyncIterator[list[KubernetesProvider]]:
    made: list[KubernetesProvider] = []
    yield made
    for p in made:
        await p.close()


def make(
    providers: list[KubernetesProvider], cfg: dict[str, Any], home: str = HOME_TAG
) -> KubernetesProvider:
    p = KubernetesProvider(parse_config(cfg), home_tag=home)
    providers.append(p)
    return p


async def test_gpu_spot_pod_shape(cluster: Cluster, providers: list[KubernetesProvider]) -> None:
    p = make(providers, config(cluster.url))
    iid = await p.launch(spec_for("j1-a1-n0", instance_type="a100-2", region="east"))
    assert iid == "east/spotd-j1-a1-n0"
    pod = cluster.pod("ns-east", "spotd-j1-a1-n0")
    assert pod is not None
    c = pod["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-spot": "true",
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
    }
    assert {
        "key": "cloud.google.com/gke-spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod["spec"]["tolerations"]
    assert pod["metadata"]["labels"][TAG_HOME] == HOME_TAG
    assert json.loads(pod["metadata"]["annotations"]["spotd.dev/tags"])["spotd-key"] == "j1-a1-n0"
    assert "-m spotd.agent" in c["command"][-1]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30
    # the agent's config (token, task secrets) is in a Secret, never in the pod spec
    assert "secret-token" not in json.dumps(pod)
    secret = cluster.obj("secrets", "ns-east", "spotd-j1-a1-n0")
    assert secret is not None
    agent = json.loads(base64.b64decode(secret["data"]["agent.json"]))
    assert agent["token"] == "secret-token" and agent["instance_dir"] == "/var/lib/spotd/instance"
    assert p.daemon_url == "http://10.0.0.1:8080"  # what the controller gives the agents


async def test_on_demand_pod_avoids_spot_nodes(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    p = make(providers, config(cluster.url, regions=("west",)))
    await p.launch(spec_for("j2-a1-n0", region="west", market=Market.ON_DEMAND))
    pod = cluster.pod("ns-west", "spotd-j2-a1-n0")
    assert pod is not None
    assert pod["spec"]["nodeSelector"] == {"karpenter.sh/capacity-type": "on-demand"}
    assert "tolerations" not in pod["spec"]
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["limits"]


async def test_region_without_spot_selector_sells_no_spot(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    cfg = config(cluster.url)
    del cfg["regions"]["east"]["spot"]
    p = make(providers, cfg)
    assert all(e.spot_price is None for e in p.catalog())
    with pytest.raises(InvalidRequest):
        await p.launch(spec_for("j3-a1-n0", region="east"))


async def test_listing_is_one_label_selected_list_per_region(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    p = make(providers, config(cluster.url, regions=("east", "west"), watch=False))
    for i, region in enumerate(("east", "west", "east")):
        await p.launch(spec_for(f"j{i}-a1-n0", region=region))
    before = len(cluster.lists())
    listed = await p.list_instances()
    assert sorted(o.key for o in listed) == ["j0-a1-n0", "j1-a1-n0", "j2-a1-n0"]
    calls = cluster.lists()[before:]
    assert sorted(r.namespace for r in calls) == ["ns-east", "ns-west"]
    assert all(r.params.get("labelSelector") == f"spotd-home={HOME_TAG}" for r in calls)
    assert not [r for r in cluster.requests() if r.action == kmock.action.FETCH]


async def test_watch_feeds_status_without_relisting(
    cluster: Cluster, kubelet: FakeKubelet, providers: list[KubernetesProvider]
) -> None:
    p = make(providers, config(cluster.url, watch_seconds=60))
    iid = await p.launch(spec_for("j4-a1-n0", region="east"))
    await eventually(
        finder(p, "j4-a1-n0"), lambda o: o is not None and o.state == InstanceState.RUNNING
    )
    lists = len(cluster.lists())
    for _ in range(20):
        await p.list_instances()
    assert len(cluster.lists()) == lists, "a live watch must serve listings from its cache"
    assert cluster.watches(), "the status came through a watch"
    name = iid.split("/")[1]
    await cluster.patch_pod_status(
        "ns-east",
        name,
        {
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
            ]
        },
    )
    obs = await eventually(
        finder(p, "j4-a1-n0"), lambda o: o is not None and o.state == InstanceState.NOTICE
    )
    assert obs is not None and obs.notice_deadline is not None
    assert len(cluster.lists()) == lists


@pytest.mark.parametrize("watch", [True, False], ids=["watch", "relist"])
async def test_pod_deleted_behind_our_back_is_preempted(
    cluster: Cluster, kubelet: FakeKubelet, providers: list[KubernetesProvider], watch: bool
) -> None:
    p = make(providers, config(cluster.url, watch=watch))
    iid = await p.launch(spec_for("j5-a1-n0", region="east"))
    await eventually(
        finder(p, "j5-a1-n0"), lambda o: o is not None and o.state == InstanceState.RUNNING
    )
    assert await cluster.delete_pod("ns-east", iid.split("/")[1]) == 200
    obs = await eventually(
        finder(p, "j5-a1-n0"), lambda o: o is not None and o.state == InstanceState.PREEMPTED
    )
    assert obs is not None and obs.reason == "pod deleted"


@pytest.mark.parametrize(
    ("status", "reason"),
    [("Failed", "Evicted"), ("Failed", "Preempted"), ("Failed", "Terminated")],
)
async def test_failed_pod_with_a_reclaim_reason_is_preempted(
    cluster: Cluster,
    kubelet: FakeKubelet,
    providers: list[KubernetesProvider],
    status: str,
    reason: str,
) -> None:
    p = make(providers, config(cluster.url))
    iid = await p.launch(spec_for("j6-a1-n0", region="east"))
    await eventually(
        finder(p, "j6-a1-n0"), lambda o: o is not None and o.state == InstanceState.RUNNING
    )
    await cluster.patch_pod_status(
        "ns-east", iid.split("/")[1], {"phase": status, "reason": reason}
    )
    obs = await eventually(
        finder(p, "j6-a1-n0"), lambda o: o is not None and o.state == InstanceState.PREEMPTED
    )
    assert obs is not None and obs.reason.startswith(reason)


async def test_terminate_deletes_pod_and_secret(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    p = make(providers, config(cluster.url))
    iid = await p.launch(spec_for("j7-a1-n0", region="east"))
    await p.terminate(iid)
    await p.terminate(iid)  # 404 on both: fine
    assert cluster.pod("ns-east", "spotd-j7-a1-n0") is None
    assert cluster.obj("secrets", "ns-east", "spotd-j7-a1-n0") is None
    assert [o for o in await p.list_instances() if o.key == "j7-a1-n0"] == []


async def test_other_daemons_pods_are_not_ours(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    ours = make(providers, config(cluster.url, watch=False))
    theirs = make(providers, config(cluster.url, watch=False), home="other-home")
    await theirs.launch(spec_for("j8-a1-n0", region="east", home="other-home"))
    assert [o.key for o in await ours.list_instances()] == []  # kmock ignores the selector
    with pytest.raises(InvalidRequest, match="belongs to"):  # same pod name, other daemon
        await ours.launch(spec_for("j8-a1-n0", region="east"))


async def test_relaunch_after_restart_finds_the_pod(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    cfg = config(cluster.url)
    first = await make(providers, cfg).launch(spec_for("j9-a1-n0", region="east"))
    again = await make(providers, cfg).launch(spec_for("j9-a1-n0", region="east"))
    assert first == again
    assert (
        len(
            [
                r
                for r in cluster.requests()
                if r.action == kmock.action.CREATE and r.resource.plural == "pods"
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (
            403,
            (
                'pods "spotd-j1-a1-n0" is forbidden: exceeded quota: spotd-gpu-quota, '
                "requested: requests.nvidia.com/gpu=2, used: requests.nvidia.com/gpu=8, "
                "limited: requests.nvidia.com/gpu=8"
            ),
            QuotaExceeded,
        ),
        (
            422,
            'Pod "spotd-j1-a1-n0" is invalid: spec.containers[0].image: Required value',
            InvalidRequest,
        ),
        (500, "etcdserver: request timed out", ProviderUnavailable),
    ],
    ids=["quota", "invalid", "server-error"],
)
async def test_launch_errors_are_classified(
    cluster: Cluster,
    providers: list[KubernetesProvider],
    status: int,
    message: str,
    error: type,
) -> None:
    (
        cluster.km[kmock.action.CREATE, kmock.resource("v1/pods")]
        << status
        << {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": status,
            "reason": "Forbidden" if status == 403 else "Invalid",
            "message": message,
        }
    )
    p = make(providers, config(cluster.url))
    with pytest.raises(error):
        await p.launch(spec_for("j1-a1-n0", region="east", instance_type="a100-2"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_api_server(providers: list[KubernetesProvider]) -> None:
    p = make(providers, config(f"http://127.0.0.1:{_closed_port()}", watch=False))
    with pytest.raises(ProviderUnavailable):
        await p.launch(spec_for("j1-a1-n0", region="east"))
    with pytest.raises(ProviderUnavailable):  # never listed: no partial answer
        await p.list_instances()


async def test_failing_region_serves_its_last_snapshot(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    p = make(providers, config(cluster.url, regions=("east", "west"), watch=False))
    await p.launch(spec_for("j1-a1-n0", region="east"))
    await p.launch(spec_for("j2-a1-n0", region="west"))
    assert len(await p.list_instances()) == 2
    cluster.km[kmock.action.LIST, kmock.namespace("ns-west")] << 503
    # unreachable is not dead: the west pod is still reported as last seen
    assert sorted(o.key for o in await p.list_instances()) == ["j1-a1-n0", "j2-a1-n0"]


async def test_tenant_namespace_gets_a_gpu_quota(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    p = make(providers, config(cluster.url))
    await p.ensure_namespace_quota("east", 8)
    await p.ensure_namespace_quota("east", 4)  # idempotent; updates the cap
    assert "ns-east" in cluster.km.__dict__["namespace_objects"]  # via the namespace shim
    quota = cluster.obj("resourcequotas", "ns-east", "spotd-gpu-quota")
    assert quota is not None
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "4"}
    with pytest.raises(InvalidRequest):
        await p.ensure_namespace_quota("nowhere", 1)


async def test_a_pod_deleted_again_after_it_was_gone_is_not_remembered_for_ever(
    cluster: Cluster, providers: list[KubernetesProvider]
) -> None:
    """A reclaimed node's pod is gone (a tombstone); the recovery then terminates it, a 404.
    Its name stayed among the pods being deleted for the daemon's life (no listing would
    ever show the deletion): one entry per preemption, for months."""
    now = [1_000.0]
    p = KubernetesProvider(
        parse_config(config(cluster.url, watch=False)),
        home_tag=HOME_TAG,
        clock=lambda: now[0],
        tombstone_seconds=60.0,
    )
    providers.append(p)
    iid = await p.launch(spec_for("j5-a1-n0", region="east"))
    await p.list_instances()
    await cluster.delete_pod("ns-east", iid.split("/")[1])  # the node went, with the pod
    [gone] = [o for o in await p.list_instances() if o.key == "j5-a1-n0"]
    assert gone.state == InstanceState.PREEMPTED  # a tombstone, as a reclaim should read
    await p.terminate(iid)  # the recovery's terminate: already gone
    assert p._caches["east"].deleting
    now[0] += 61.0
    await p.list_instances()
    assert p._caches["east"].deleting == {}
