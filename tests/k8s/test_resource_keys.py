"""What a task asks of its pod beyond a shape (issue #19): ``image_id: docker:IMAGE`` is the
container's image (the task runs in it, the agent brought in from the agent image), ``labels``
and ``config: kubernetes.custom_metadata`` are the pod's labels and annotations, ``disk_size``
is an ephemeral-storage request.

The manifests are read as a user would with ``kubectl get pod -o yaml`` (no cluster), then a
launch goes through kmock as the other tier tests do. Nothing here runs a container: the init
container's copy and the agent's start in the task's image are a shell script checked with
``sh -n`` and by reading it (docs/kubernetes.md, "What is tested").
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

import tests.k8s.kmock_env  # noqa: F401 - skips (or fails under CI=1) without the k8s deps
from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.providers.kubernetes import KubernetesProvider, parse_config
from spotd.providers.kubernetes.pods import build_manifests, not_honoured
from spotd.spec import load_task
from spotd.spec.resources import MachineAsk
from spotd.types import AgentConfig, Market
from tests.k8s.kmock_env import Cluster

pytestmark = pytest.mark.k8s

AGENT_IMAGE = "registry.example.com/spotd-agent:0.1"


def region(**extra: Any) -> Any:
    raw = {
        "namespace": "ns",
        "image": AGENT_IMAGE,
        "instance_types": [{"name": "cpu-1", "vcpus": 1, "memory_gb": 4, "ondemand": 0.05}],
        **extra,
    }
    return parse_config({"regions": {"east": raw}}).regions[0]


def spec(ask: MachineAsk, key: str = "j1-a1-n0") -> InstanceSpec:
    agent = AgentConfig(
        instance_key=key,
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run="python train.py",
        daemon_url="http://d:1",
        token="tok",
    )
    return InstanceSpec(
        key=key,
        region="east",
        zone="east",
        instance_type="cpu-1",
        market=Market.ON_DEMAND,
        tags={TAG_HOME: "h1", TAG_KEY: key},
        agent=agent,
        machine=ask,
    )


def pod_of(ask: MachineAsk, **extra: Any) -> dict[str, Any]:
    _, pod = build_manifests(spec(ask), region(**extra), name_prefix="spotd-", home_tag="h1")
    return pod


def test_without_an_image_the_pod_runs_the_agent_image() -> None:
    pod = pod_of(MachineAsk())
    [c] = pod["spec"]["containers"]
    assert c["image"] == AGENT_IMAGE
    assert "python -m spotd.agent" in c["command"][-1]
    assert "initContainers" not in pod["spec"]
    assert "ephemeral-storage" not in c["resources"]["requests"]


@pytest.mark.parametrize("runtime", [None, "/opt/py311/"])
def test_a_docker_image_is_the_tasks_container(runtime: str | None) -> None:
    extra = {} if runtime is None else {"agent_runtime": runtime}
    where = (runtime or "/opt/spotd").rstrip("/")
    pod = pod_of(MachineAsk(container_image="nvcr.io/nvidia/pytorch:24.05-py3"), **extra)
    [c] = pod["spec"]["containers"]
    assert c["image"] == "nvcr.io/nvidia/pytorch:24.05-py3"
    # the agent comes from the agent image: copied by an init container into an emptyDir
    # that the task's container mounts where the agent image had it, and started from there
    [init] = pod["spec"]["initContainers"]
    assert init["image"] == AGENT_IMAGE
    copy_to = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["agent-runtime"]
    assert init["command"][-1] == f"cp -a {where}/. {copy_to}/"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["agent-runtime"] == where
    assert {"name": "agent-runtime", "emptyDir": {}} in pod["spec"]["volumes"]
    assert f"{where}/bin/python -m spotd.agent" in c["command"][-1]
    # the agent's config still arrives through the Secret, and notices through the trap
    assert "agent-config" in mounts and "trap" in c["command"][-1]
    for script in (c["command"][-1], init["command"][-1]):
        subprocess.run(["sh", "-n", "-c", script], check=True)


def test_labels_annotations_and_disk() -> None:
    ask = MachineAsk(
        disk_size_gb=200,
        labels={"team": "ml", "cost center": "42", TAG_KEY: "forged"},
        annotations={"example.com/owner": "ana", "spotd.dev/key": "forged"},
    )
    pod = pod_of(ask)
    labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert labels["team"] == "ml"
    assert any(v == "42" for k, v in labels.items() if "cost" in k)  # made label-safe
    assert labels[TAG_KEY] == "j1-a1-n0" and annotations["spotd.dev/key"] == "j1-a1-n0"
    assert annotations["example.com/owner"] == "ana"
    [c] = pod["spec"]["containers"]
    assert c["resources"]["requests"]["ephemeral-storage"] == "200Gi"
    assert "ephemeral-storage" not in c["resources"]["limits"]  # no eviction at the number


def test_what_a_pod_cannot_honour_is_said() -> None:
    ask = MachineAsk(disk_tier="high", network_tier="best", image_id="ami-1")
    said = not_honoured(spec(ask))
    assert [s.split(" ")[0] for s in said] == ["disk_tier", "network_tier", "image_id"]
    assert not_honoured(spec(MachineAsk(network_tier="standard", disk_size_gb=10))) == []


def test_a_task_file_becomes_the_pod_it_asks_for() -> None:
    task = load_task(
        "t.yaml",
        text=(
            "run: python train.py\n"
            "resources:\n"
            "  image_id: docker:pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime\n"
            "  disk_size: 100GB\n"
            "  labels: {team: ml}\n"
            "config:\n"
            "  kubernetes:\n"
            "    custom_metadata:\n"
            "      labels: {queue: batch}\n"
            "      annotations: {example.com/owner: ana}\n"
        ),
    )
    # with no infra of its own, an option with a docker image is placed on Kubernetes
    assert {o.provider for o in task.resource_request().options} == {"k8s"}
    ask = task.machine(provider="k8s", region="east")
    pod = pod_of(ask)
    assert pod["spec"]["containers"][0]["image"] == "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime"
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["metadata"]["labels"]["queue"] == "batch"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "ana"
    assert pod["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "100Gi"
    # the same task on AWS gets no pod metadata, and is told it cannot run its image there
    on_aws = task.machine(provider="aws", region="us-east-1")
    assert dict(on_aws.labels) == {"team": "ml"} and on_aws.annotations == {}


@pytest.fixture
async def provider(cluster: Cluster) -> AsyncIterator[KubernetesProvider]:
    raw = {
        "regions": {
            "east": {
                "host": cluster.url,
                "namespace": "ns-east",
                "image": AGENT_IMAGE,
                "instance_types": [{"name": "cpu-1", "vcpus": 1, "memory_gb": 4, "ondemand": 0.05}],
            }
        },
        "daemon_url": "http://10.0.0.1:8080",
        "watch": False,
    }
    p = KubernetesProvider(parse_config(raw), home_tag="h1")
    yield p
    await p.close()


async def test_launch_creates_the_pod_in_the_tasks_image(
    cluster: Cluster, provider: KubernetesProvider
) -> None:
    ask = MachineAsk(container_image="ubuntu:22.04", labels={"team": "ml"}, disk_size_gb=20)
    iid = await provider.launch(spec(ask, key="j5-a1-n0"))
    assert iid == "east/spotd-j5-a1-n0"
    pod = cluster.pod("ns-east", "spotd-j5-a1-n0")
    assert pod is not None
    assert pod["spec"]["containers"][0]["image"] == "ubuntu:22.04"
    assert pod["spec"]["initContainers"][0]["image"] == AGENT_IMAGE
    assert pod["metadata"]["labels"]["team"] == "ml"
    # still ours: listed by its home label, with its key
    [seen] = [o for o in await provider.list_instances() if o.key == "j5-a1-n0"]
    assert seen.tags[TAG_KEY] == "j5-a1-n0"
