"""The manifests a launch creates, ownership, and the region cache: pure, no cluster.

One row per shape a region can be configured with; what the pod asks the scheduler for
(requests, node selector, tolerations, volumes) is what a user would see with ``kubectl``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

import tests.k8s.kmock_env  # noqa: F401 - skips (or fails under CI=1) without the k8s deps
from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec, InvalidRequest
from spotd.providers.kubernetes import parse_config
from spotd.providers.kubernetes.pods import (
    MANAGED_BY,
    build_manifests,
    is_ours,
    namespace_and_quota,
    owner_conflict,
    selector,
)
from spotd.providers.kubernetes.watch import RegionCache
from spotd.types import AgentConfig, Market

pytestmark = pytest.mark.k8s

TYPES = [
    {"name": "cpu-1", "vcpus": 1, "memory_gb": 4, "ondemand": 0.05, "spot": 0.02},
    {
        "name": "t4-1",
        "vcpus": 4,
        "memory_gb": 16,
        "accelerator": "T4",
        "accelerator_count": 1,
        "ondemand": 0.5,
        "spot": 0.2,
        "node_selector": {"gpu": "t4"},
    },
]


def region(**extra: Any) -> Any:
    raw = {"namespace": "ns", "instance_types": TYPES, **extra}
    return parse_config({"regions": {"east": raw}}).regions[0]


def spec(
    instance_type: str = "cpu-1", market: Market = Market.ON_DEMAND, key: str = "j1-a1-n0"
) -> InstanceSpec:
    agent = AgentConfig(
        instance_key=key,
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run="true",
        daemon_url="http://d:1",
        token="tok",
        checkpoint_store="/home/ckpt/t1",
    )
    return InstanceSpec(
        key=key,
        region="east",
        zone="east",
        instance_type=instance_type,
        market=market,
        tags={TAG_HOME: "h1", TAG_KEY: key},
        agent=agent,
    )


@pytest.mark.parametrize(
    ("extra", "instance_type", "market", "selector_", "tolerations", "gpus"),
    [
        ({}, "cpu-1", Market.ON_DEMAND, None, None, None),
        (
            {"spot": "karpenter"},
            "cpu-1",
            Market.SPOT,
            {"karpenter.sh/capacity-type": "spot"},
            None,
            None,
        ),
        (
            {"spot": "karpenter"},
            "cpu-1",
            Market.ON_DEMAND,
            {"karpenter.sh/capacity-type": "on-demand"},
            None,
            None,
        ),
        (
            {"spot": "gke"},
            "t4-1",
            Market.SPOT,
            {"gpu": "t4", "cloud.google.com/gke-spot": "true"},
            [
                {
                    "key": "cloud.google.com/gke-spot",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoSchedule",
                }
            ],
            "1",
        ),
        ({"gpu_resource": "amd.com/gpu"}, "t4-1", Market.ON_DEMAND, {"gpu": "t4"}, None, "1"),
    ],
)
def test_the_pod_asks_for_its_shape_and_market(
    extra: dict[str, Any],
    instance_type: str,
    market: Market,
    selector_: dict[str, str] | None,
    tolerations: list[dict[str, str]] | None,
    gpus: str | None,
) -> None:
    r = region(**extra)
    secret, pod = build_manifests(
        spec(instance_type, market), r, name_prefix="spotd-", home_tag="h1"
    )
    podspec = pod["spec"]
    assert podspec.get("nodeSelector") == selector_
    assert podspec.get("tolerations") == tolerations
    resources = podspec["containers"][0]["resources"]
    assert resources["requests"].get(r.gpu_resource) == gpus
    assert resources["limits"].get(r.gpu_resource) == gpus
    assert pod["metadata"]["name"] == secret["metadata"]["name"] == "spotd-j1-a1-n0"
    assert pod["metadata"]["labels"][MANAGED_BY[0]] == MANAGED_BY[1]


@pytest.mark.parametrize(
    ("pvc", "store_in_pod"), [(None, "/home/ckpt/t1"), ("ckpts", "/spotd-checkpoints/store")]
)
def test_the_agent_config_is_in_the_secret_never_in_the_pod(
    pvc: str | None, store_in_pod: str
) -> None:
    secret, pod = build_manifests(
        spec(), region(checkpoint_pvc=pvc), name_prefix="spotd-", home_tag="h1"
    )
    agent = json.loads(base64.b64decode(secret["data"]["agent.json"]))
    assert agent["token"] == "tok" and agent["checkpoint_store"] == store_in_pod
    assert "tok" not in json.dumps(pod)
    claims = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert [c["persistentVolumeClaim"]["claimName"] for c in claims] == ([pvc] if pvc else [])
    # the task's own directory of the volume, never the whole volume (every task's)
    mounts = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "checkpoints"]
    assert mounts == ([{"name": "checkpoints", "mountPath": "/spotd-checkpoints", "subPath": "t1"}]
                      if pvc else [])  # fmt: skip


@pytest.mark.parametrize(
    ("instance_type", "market", "words"),
    [("gpu-9", Market.ON_DEMAND, "not offered"), ("cpu-1", Market.SPOT, "no spot node selector")],
)
def test_what_a_region_does_not_sell_is_an_invalid_request(
    instance_type: str, market: Market, words: str
) -> None:
    with pytest.raises(InvalidRequest, match=words):
        build_manifests(spec(instance_type, market), region(), name_prefix="spotd-", home_tag=None)


def _pod(key: str | None, home: str | None) -> dict[str, Any]:
    labels = {MANAGED_BY[0]: MANAGED_BY[1]}
    if home is not None:
        labels[TAG_HOME] = home
    return {
        "metadata": {
            "name": "p",
            "labels": labels,
            "annotations": {"spotd.dev/key": key} if key else {},
        }
    }


@pytest.mark.parametrize(
    ("pod", "key", "home_tag", "ours", "conflict"),
    [
        (_pod("k1", "h1"), "k1", "h1", True, False),
        (_pod("k1", "h2"), "k1", "h1", False, True),  # another daemon's pod of the same name
        (_pod("k2", "h1"), "k1", "h1", True, True),  # ours, but another key's
        (_pod("k1", None), "k1", None, True, False),  # no home: any spotd pod
        (_pod("k1", "h2"), "k1", None, True, False),
    ],
)
def test_ownership_is_key_and_home(
    pod: dict[str, Any], key: str, home_tag: str | None, ours: bool, conflict: bool
) -> None:
    assert is_ours(pod, home_tag) == ours
    assert (owner_conflict(pod, key=key, home_tag=home_tag) is not None) == conflict


@pytest.mark.parametrize(
    ("home_tag", "expected"),
    [("h1", "spotd-home=h1"), (None, "app.kubernetes.io/managed-by=spotd")],
)
def test_one_label_selector_per_daemon(home_tag: str | None, expected: str) -> None:
    assert selector(home_tag) == expected


def test_a_tenant_namespace_is_capped_on_its_gpu_resource() -> None:
    ns, quota = namespace_and_quota(region(gpu_resource="amd.com/gpu"), 8)
    assert ns["metadata"]["name"] == quota["metadata"]["namespace"] == "ns"
    assert quota["spec"] == {"hard": {"requests.amd.com/gpu": "8"}}


# -- the region cache ---------------------------------------------------------------------


def _event(kind: str, name: str, home: str = "h1") -> dict[str, Any]:
    pod = _pod(name, home)
    pod["metadata"]["name"] = name
    return {"type": kind, "object": pod}


@pytest.mark.parametrize(
    ("events", "deleting", "pods", "tombstones"),
    [
        ([_event("ADDED", "a")], set(), {"a"}, set()),
        ([_event("ADDED", "a"), _event("DELETED", "a")], set(), set(), {"a"}),
        ([_event("ADDED", "a"), _event("DELETED", "a")], {"a"}, set(), set()),  # spotd's delete
        ([_event("ADDED", "a", home="other")], set(), set(), set()),  # not ours
        (
            [_event("ADDED", "a"), _event("DELETED", "a"), _event("ADDED", "a")],
            set(),
            {"a"},
            set(),
        ),  # came back (a retried launch): no longer a tombstone
    ],
)
def test_watch_events_feed_the_cache(
    events: list[dict[str, Any]], deleting: set[str], pods: set[str], tombstones: set[str]
) -> None:
    cache = RegionCache(deleting=dict.fromkeys(deleting, 0.0))
    for e in events:
        cache.apply(e, home_tag="h1", now=5.0)
    assert set(cache.pods) == pods and set(cache.tombstones) == tombstones


def test_a_snapshot_buries_what_it_no_longer_lists() -> None:
    cache = RegionCache()
    cache.replace({"a": {}, "b": {}}, now=1.0)
    cache.deleting["b"] = 0.0
    cache.replace({}, now=2.0)
    assert cache.pods == {} and set(cache.tombstones) == {"a"} and cache.deleting == {}
