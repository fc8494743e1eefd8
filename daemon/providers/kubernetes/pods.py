"""Pure pod-side logic: names and labels, the manifests a launch creates, and what a pod's
status means (no I/O; the provider calls these, and tests read them directly).

How pods map to instance states (``pod_state``):

===========================================================  ===========  ===================
pod                                                          state        reason
===========================================================  ===========  ===================
Pending, scheduled or not yet                                PENDING
Pending and Unschedulable for ``unschedulable_seconds``      TERMINATED   "Unschedulable: …"
Running                                                      RUNNING
Running + ``DisruptionTarget`` condition True                NOTICE       deadline = condition
                                                                          time + grace period
Running + ``deletionTimestamp`` (deleted, not by spotd)      NOTICE       deadline = deletion
                                                                          timestamp
Failed with reason Evicted/Preempted/NodeShutdown/           PREEMPTED    the pod's reason
Terminated/NodeLost/Shutdown, or with a DisruptionTarget
Failed otherwise                                             TERMINATED   the pod's reason
Succeeded                                                    TERMINATED   "pod completed"
Unknown (node unreachable)                                   RUNNING      heartbeats decide
gone (deleted, not by spotd)                                 PREEMPTED    "pod deleted"
===========================================================  ===========  ===================

Unschedulable is a judgement call: Kubernetes never says "no capacity" — a pod waits in
Pending while a cluster autoscaler (Karpenter, GKE NAP) may still bring a node. After
``unschedulable_seconds`` (default 300) of the scheduler saying Unschedulable, the pod is
reported TERMINATED with the scheduler's message, so the job's recovery places it elsewhere
and the zone history records a failed start; spotd then deletes the pod through the usual
reaping. Launch itself never waits for scheduling.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotd.providers.base import (
    TAG_HOME,
    TAG_PREFIX,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
)
from spotd.providers.kubernetes.config import PodType, RegionConfig
from spotd.types import InstanceId, InstanceState, Market

MANAGED_BY = ("app.kubernetes.io/managed-by", "spotd")
ANN_TAGS = "spotd.dev/tags"  # the exact tags, JSON: labels only hold label-safe forms
ANN_KEY = "spotd.dev/key"
ANN_TYPE = "spotd.dev/instance-type"
AGENT_DIR = "/var/lib/spotd/instance"
AGENT_SECRET_MOUNT = "/etc/spotd-agent"
RUNTIME_COPY = "/spotd-runtime"  # where the init container copies the agent's runtime to
CHECKPOINT_MOUNT = "/spotd-checkpoints"
QUOTA_NAME = "spotd-gpu-quota"

# Pod failure reasons that mean "the node or the cluster took the pod back", not "it failed".
PREEMPTION_REASONS = frozenset(
    {
        "Evicted",
        "Preempted",
        "Preempting",
        "NodeShutdown",
        "Terminated",
        "NodeLost",
        "Shutdown",
        "NodeAffinity",
    }
)

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

Manifest = dict[str, Any]


# -- names and labels ----------------------------------------------------------------------


def _digest(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def label_value(value: str) -> str:
    """A label-safe form of ``value``: itself when valid, else a cleaned prefix plus a digest."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", value)[:40].strip("-_.")
    return f"{cleaned}-{_digest(value)}" if cleaned else _digest(value)


def label_key(tag: str) -> str:
    if len(tag) <= 63 and _LABEL_NAME.match(tag):
        return tag
    return f"spotd.dev/{label_value(tag)}"


def pod_name(key: str, prefix: str = "spotd-") -> str:
    """``spotd-<key>``, made a DNS label (lowercase, ≤63); a changed key gets a digest suffix."""
    raw = f"{prefix}{key}"
    if len(raw) <= 63 and _DNS_LABEL.match(raw):
        return raw
    cleaned = re.sub(r"[^-a-z0-9]", "-", raw.lower())[:50].strip("-")
    return f"{cleaned}-{_digest(raw)}"


def selector(home_tag: str | None) -> str:
    """The label selector of this daemon's pods: its home, or any spotd pod without one."""
    if home_tag is not None:
        return f"{label_key(TAG_HOME)}={label_value(home_tag)}"
    return f"{MANAGED_BY[0]}={MANAGED_BY[1]}"


def is_ours(pod: Mapping[str, Any], home_tag: str | None) -> bool:
    """The selector again, on our side: a server that ignores it (kmock does) must still not
    make other daemons' pods ours."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if home_tag is not None:
        return bool(labels.get(label_key(TAG_HOME)) == label_value(home_tag))
    return bool(labels.get(MANAGED_BY[0]) == MANAGED_BY[1])


def owner_conflict(pod: Mapping[str, Any], *, key: str, home_tag: str | None) -> str | None:
    """Why an existing pod of the same name is not this launch's (None: it is ours)."""
    meta = pod.get("metadata") or {}
    their_key = (meta.get("annotations") or {}).get(ANN_KEY)
    their_home = (meta.get("labels") or {}).get(label_key(TAG_HOME))
    ours = home_tag is None or their_home == label_value(home_tag)
    if their_key == key and ours:
        return None
    return (
        f"it belongs to key {their_key!r} of home {their_home!r}: give each daemon its own "
        f"namespace or pod_name_prefix"
    )


# -- what a launch creates -----------------------------------------------------------------


def pod_type_for(spec: InstanceSpec, region: RegionConfig) -> PodType:
    """The pod shape ``spec`` asks for in ``region``; InvalidRequest if it is not sold there."""
    t = next((t for t in region.types if t.name == spec.instance_type), None)
    if t is None:
        raise InvalidRequest(f"{spec.instance_type} is not offered in k8s/{spec.region}")
    if spec.market == Market.SPOT and not region.sells_spot:
        raise InvalidRequest(f"k8s/{spec.region} has no spot node selector configured")
    return t


def agent_json(spec: InstanceSpec, region: RegionConfig) -> str:
    """The agent's config as the pod sees it: its emptyDir, and the checkpoint volume."""
    agent = dataclasses.replace(spec.agent, instance_dir=AGENT_DIR)
    if checkpoint_leaf(spec, region) is not None:
        # the store is a directory on the daemon's side; in the pod, the task's own directory
        # of the shared volume is mounted (``subPath``), the store and its lock inside it
        agent = dataclasses.replace(agent, checkpoint_store=f"{CHECKPOINT_MOUNT}/store")
    return json.dumps(dataclasses.asdict(agent))


def checkpoint_leaf(spec: InstanceSpec, region: RegionConfig) -> str | None:
    """The task's directory in the region's checkpoint volume, None without one. Each pod
    mounts only its task's directory: the whole volume, mounted in every project's pods
    alike, let a job read and write any other task's checkpoints (a security review)."""
    store = spec.agent.checkpoint_store
    if not region.checkpoint_pvc or not store or store.startswith("s3://"):
        return None
    leaf = store.rstrip("/").rsplit("/", 1)[-1]
    return leaf if leaf not in ("", ".", "..") else None


def not_honoured(spec: InstanceSpec) -> list[str]:
    """What the task asks of the machine that a pod cannot give (the provider logs it)."""
    ask = spec.machine
    found = [f"disk_tier {ask.disk_tier}: the node's disk"] if ask.disk_tier else []
    if ask.network_tier == "best":
        found.append("network_tier best: the cluster's network")
    if ask.image_id:
        found.append(f"image_id {ask.image_id} is a machine image: pods ignore it")
    return found


def _runtime_copy(spec: InstanceSpec, region: RegionConfig) -> list[dict[str, Any]]:
    """The init container that brings the agent into a pod of the task's own image: it copies
    ``agent_runtime`` (a self-contained Python with spotd) out of the agent image into an
    emptyDir, which the task's container mounts at the same path."""
    if spec.machine.container_image is None:
        return []
    return [
        {
            "name": "spotd-runtime",
            "image": region.image,
            "command": ["/bin/sh", "-c", f"cp -a {region.agent_runtime}/. {RUNTIME_COPY}/"],
            "volumeMounts": [{"name": "agent-runtime", "mountPath": RUNTIME_COPY}],
        }
    ]


def build_manifests(
    spec: InstanceSpec, region: RegionConfig, *, name_prefix: str, home_tag: str | None
) -> tuple[Manifest, Manifest]:
    """The (secret, pod) manifests for one node of an attempt.

    The secret holds ``agent.json`` (the agent's bearer token and the task's secrets, never in
    the pod spec or the container's environment); the pod's shell copies it into an emptyDir
    and runs the agent, turning the kubelet's SIGTERM into the agent's notice file.

    What the task asks of the machine (``spec.machine``): its labels and annotations are the
    pod's (spotd's own win a clash), ``disk_size`` is an ``ephemeral-storage`` request, and
    ``image_id: docker:IMAGE`` is the container's image: the task runs in it, with the agent
    from the agent image's ``agent_runtime`` (``_runtime_copy``); the image needs ``/bin/sh``.
    """
    t = pod_type_for(spec, region)
    name = pod_name(spec.key, name_prefix)
    tags = dict(spec.tags)
    if home_tag is not None:
        tags.setdefault(TAG_HOME, home_tag)
    ask = spec.machine
    labels = {
        label_key(k): label_value(v) for k, v in ask.labels.items() if not k.startswith(TAG_PREFIX)
    }
    labels |= {label_key(k): label_value(v) for k, v in tags.items()}
    labels[MANAGED_BY[0]] = MANAGED_BY[1]
    labels["spotd.dev/market"] = label_value(str(spec.market))
    annotations = {
        **ask.annotations,
        ANN_TAGS: json.dumps(tags, sort_keys=True),
        ANN_KEY: spec.key,
        ANN_TYPE: t.name,
    }
    meta = {
        "name": name,
        "namespace": region.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": region.namespace, "labels": dict(labels)},
        "data": {"agent.json": base64.b64encode(agent_json(spec, region).encode()).decode()},
    }
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": f"{t.vcpus:g}", "memory": f"{t.memory_gb:g}Gi"},
        "limits": {"memory": f"{t.memory_gb:g}Gi"},
    }
    if ask.disk_size_gb is not None:  # a request, not a limit: the kubelet evicts at a limit
        resources["requests"]["ephemeral-storage"] = f"{ask.disk_size_gb}Gi"
    if t.accelerator_count:
        gpus = f"{int(t.accelerator_count)}"
        resources["requests"][region.gpu_resource] = gpus
        resources["limits"][region.gpu_resource] = gpus
    node_selector = {**region.node_selector, **t.node_selector}
    tolerations = [dict(x) for x in region.tolerations]
    if spec.market == Market.SPOT:
        node_selector.update(region.spot_node_selector)
        tolerations += [dict(x) for x in region.spot_tolerations]
    else:
        node_selector.update(region.ondemand_node_selector)
    grace = region.termination_grace_seconds
    image, python = region.image, region.python
    if ask.container_image is not None:  # the task's image, the agent from agent_runtime
        image, python = ask.container_image, f"{region.agent_runtime}/bin/python"
    # PID 1 is this shell: it forwards the kubelet's SIGTERM to the agent as a notice file
    # with the deadline the kubelet will keep (grace period), then waits for the agent.
    script = (
        # the agent's config holds its token and the task's secrets: 0600 in a 0700 directory
        # (a non-root container may not chmod the emptyDir's mount point: tolerated)
        f'D={AGENT_DIR}; mkdir -p "$D" || exit 1; chmod 700 "$D" 2>/dev/null; '
        f'(umask 077 && cp {AGENT_SECRET_MOUNT}/agent.json "$D/agent.json") || exit 1; '
        f'{python} -m spotd.agent "$D" & A=$!; '
        f'trap \'printf "{{\\"deadline\\": %s}}" $(( $(date +%s) + {max(grace - 1, 1)} ))'
        f' > "$D/notice.json"\' TERM; '
        "while kill -0 $A 2>/dev/null; do wait $A; done; wait $A"
    )
    volumes: list[dict[str, Any]] = [
        {"name": "agent-config", "secret": {"secretName": name, "defaultMode": 0o400}},
        {"name": "instance", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "agent-config", "mountPath": AGENT_SECRET_MOUNT, "readOnly": True},
        {"name": "instance", "mountPath": AGENT_DIR},
    ]
    if ask.container_image is not None:
        volumes.append({"name": "agent-runtime", "emptyDir": {}})
        mounts.append({"name": "agent-runtime", "mountPath": region.agent_runtime})
    leaf = checkpoint_leaf(spec, region)
    if leaf is not None:
        volumes.append(
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": region.checkpoint_pvc}}
        )
        mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT, "subPath": leaf})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace,
        "containers": [
            {
                "name": "agent",
                "image": image,
                "command": ["/bin/sh", "-c", script],
                "resources": resources,
                "volumeMounts": mounts,
                "env": [{"name": "SPOTD_INSTANCE_KEY", "value": spec.key}],
            }
        ],
        "volumes": volumes,
    }
    if ask.container_image is not None:
        pod_spec["initContainers"] = _runtime_copy(spec, region)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if region.service_account:
        pod_spec["serviceAccountName"] = region.service_account
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
    return secret, pod


def namespace_and_quota(region: RegionConfig, gpus: int) -> tuple[Manifest, Manifest]:
    """A tenant's namespace, and the ResourceQuota that caps its GPU requests at ``gpus``."""
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": region.namespace, "labels": {MANAGED_BY[0]: MANAGED_BY[1]}},
    }
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": QUOTA_NAME,
            "namespace": region.namespace,
            "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
        },
        "spec": {"hard": {f"requests.{region.gpu_resource}": str(int(gpus))}},
    }
    return ns, quota


# -- pod -> observed state -----------------------------------------------------------------


def _ts(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True, slots=True)
class PodView:
    """The state a pod is in, as spotd reads it."""

    state: InstanceState
    reason: str = ""
    notice_deadline: float | None = None


def pod_state(
    pod: Mapping[str, Any],
    *,
    now: float,
    first_seen: Callable[[str], float],
    unschedulable_seconds: float,
    deleting: bool = False,
) -> PodView:
    """Map one pod to an instance state (the table in the module docstring).

    ``first_seen(what)`` returns when this provider first saw a condition that carries no time
    of its own (kmock, or an API server that leaves ``lastTransitionTime`` empty), so that a
    deadline does not move on every listing. ``deleting``: spotd itself deleted the pod.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    phase = status.get("phase") or "Pending"
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    grace = float(spec.get("terminationGracePeriodSeconds") or 30)
    disruption = _condition(pod, "DisruptionTarget")
    disrupted = disruption is not None and str(disruption.get("status")) == "True"

    if phase == "Succeeded":
        return PodView(InstanceState.TERMINATED, "pod completed")
    if phase == "Failed":
        if reason in PREEMPTION_REASONS or disrupted:
            why = reason or str((disruption or {}).get("reason") or "DisruptionTarget")
            return PodView(InstanceState.PREEMPTED, f"{why}: {message}".rstrip(": "))
        return PodView(InstanceState.TERMINATED, f"pod failed: {reason or message or 'Failed'}")
    if reason == "NodeLost":
        return PodView(InstanceState.PREEMPTED, f"NodeLost: {message}".rstrip(": "))
    if deleting:
        return PodView(InstanceState.TERMINATED, "deleted by spotd")
    deletion = _ts(meta.get("deletionTimestamp"))
    if disrupted or deletion is not None:
        if disrupted:
            assert disruption is not None
            since = _ts(disruption.get("lastTransitionTime")) or first_seen("disruption")
            deadline = since + grace
            why = f"DisruptionTarget: {disruption.get('reason') or ''}".rstrip(": ")
        else:
            deadline, why = deletion or now, "pod deleted (terminating)"
        if deletion is not None:
            deadline = min(deadline, deletion)
        return PodView(InstanceState.NOTICE, why, deadline)
    if phase == "Pending":
        scheduled = _condition(pod, "PodScheduled")
        if (
            scheduled is not None
            and scheduled.get("reason") == "Unschedulable"
            and str(scheduled.get("status")) == "False"
        ):
            since = _ts(scheduled.get("lastTransitionTime")) or first_seen("unschedulable")
            if now - since >= unschedulable_seconds:
                return PodView(
                    InstanceState.TERMINATED,
                    f"Unschedulable for {now - since:.0f}s: {scheduled.get('message') or ''}",
                )
        return PodView(InstanceState.PENDING, "")
    if phase == "Unknown":
        return PodView(InstanceState.RUNNING, "pod phase Unknown (node unreachable)")
    return PodView(InstanceState.RUNNING, "")


def observed(
    region: RegionConfig, name: str, pod: Mapping[str, Any], view: PodView
) -> ObservedInstance:
    """The observation of one pod: its exact tags come from the annotation, not the labels."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    try:
        tags = dict(json.loads(annotations.get(ANN_TAGS) or "{}"))
    except ValueError:
        tags = {}
    key = str(annotations.get(ANN_KEY) or tags.get("spotd-key") or name)
    return ObservedInstance(
        id=InstanceId(f"{region.name}/{name}"),
        key=key,
        region=region.name,
        zone=region.zone,
        state=view.state,
        tags=tags,
        reason=view.reason,
        notice_deadline=view.notice_deadline,
        address=str((pod.get("status") or {}).get("podIP") or "127.0.0.1"),
    )
