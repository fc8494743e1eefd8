"""Kubernetes provider: an instance is a pod running the agent; a region is a context+namespace.

What a launch creates, per node of an attempt (``spec.key``, e.g. ``j3-a2-n0``):

* a Secret ``spotd-<key>`` holding ``agent.json`` (the ``AgentConfig``: it carries the agent's
  bearer token and the task's secrets, so it is never put in the pod spec, where anyone who may
  ``get pods`` would read it, nor in the container's environment, which the job inherits);
* a Pod ``spotd-<key>`` whose container copies that file into an ``emptyDir`` and runs
  ``python -m spotd.agent``. The image must have spotd installed (``image`` in the config).
  The pod's shell turns the kubelet's SIGTERM (pod deleted, node drained, spot reclaim) into
  the agent's notice file, so the agent checkpoints within ``terminationGracePeriodSeconds``.

Idempotency is the pod name: a create answered 409 means the key was launched already, and
the existing pod is returned — after checking that it is ours (same key, same home), so two
daemons sharing a namespace can never adopt each other's pods.

Labels carry the tags in label-safe form (the exact tags are in an annotation), and the home
tag is a label, so observing a region is ONE label-selected list (or one watch) per region —
never a call per pod.

Observing (``list_instances``) reads a per-region cache fed by a watch task: each task lists
once (the snapshot, and the periodic re-list that repairs anything a watch missed), then
watches from there until the stream ends (``watch_seconds``), and starts over. While a
region's watch is not live — disabled in the config, not started yet, or failing — a call
lists that region itself, once. A region whose listing fails is served from its last snapshot
(unreachable is not dead); a region never listed successfully makes the call raise
``ProviderUnavailable``, because a partial answer would read as "every pod there is gone".

How pods map to instance states (``pod_state``, a pure function):

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

Failures are classified at this boundary and nowhere else: 403 "exceeded quota" →
QuotaExceeded; other 403, 400, 404 (no such namespace), 422 → InvalidRequest; 401, 429, 5xx,
connection errors and timeouts → ProviderUnavailable.

kubernetes_asyncio is imported only here (the daemon imports this module lazily).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.rest import ApiException
from spotd.aiokit import sleep
from spotd.providers.base import (
    TAG_HOME,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.types import CatalogEntry, InstanceId, InstanceState, Market

__all__ = [
    "KubernetesConfigError",
    "KubernetesProvider",
    "RegionConfig",
    "classify",
    "parse_config",
    "pod_state",
]

log = structlog.get_logger("spotd.providers.kubernetes")

PROVIDER_NAME = "k8s"
MANAGED_BY = ("app.kubernetes.io/managed-by", "spotd")
ANN_TAGS = "spotd.dev/tags"  # the exact tags, JSON: labels only hold label-safe forms
ANN_KEY = "spotd.dev/key"
ANN_TYPE = "spotd.dev/instance-type"
AGENT_DIR = "/var/lib/spotd/instance"
AGENT_SECRET_MOUNT = "/etc/spotd-agent"
CHECKPOINT_MOUNT = "/spotd-checkpoints"
QUOTA_NAME = "spotd-gpu-quota"

# Pod failure reasons that mean "the node or the cluster took the pod back", not "it failed".
PREEMPTION_REASONS = frozenset(
    {"Evicted", "Preempted", "Preempting", "NodeShutdown", "Terminated", "NodeLost", "Shutdown",
     "NodeAffinity"}
)

SPOT_PRESETS: dict[str, tuple[dict[str, str], list[dict[str, str]], dict[str, str]]] = {
    # preset: (spot node selector, spot tolerations, on-demand node selector)
    "karpenter": ({"karpenter.sh/capacity-type": "spot"}, [],
                  {"karpenter.sh/capacity-type": "on-demand"}),
    "gke": (
        {"cloud.google.com/gke-spot": "true"},
        [{"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
          "effect": "NoSchedule"}],
        {},
    ),
}

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class KubernetesConfigError(ValueError):
    """The ``k8s`` provider section cannot be used; the message names the key."""


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


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodType:
    """A pod shape sold in a region: what the pod requests, and its notional price."""

    name: str
    vcpus: float
    memory_gb: float
    accelerator: str | None = None
    accelerator_count: float = 0
    ondemand: float = 0.0
    spot: float | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RegionConfig:
    """One region: a namespace in a cluster (a kubeconfig context, or a bare API URL)."""

    name: str
    namespace: str
    zone: str
    context: str | None = None
    kubeconfig: str | None = None
    host: str | None = None  # a bare API server URL (kmock in tests); no credentials
    image: str = "spotd-agent:latest"
    python: str = "python"
    service_account: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    spot_node_selector: Mapping[str, str] = field(default_factory=dict)
    spot_tolerations: tuple[Mapping[str, Any], ...] = ()
    ondemand_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_resource: str = "nvidia.com/gpu"
    termination_grace_seconds: int = 30
    checkpoint_pvc: str | None = None
    types: tuple[PodType, ...] = ()

    @property
    def sells_spot(self) -> bool:
        return bool(self.spot_node_selector or self.spot_tolerations)


@dataclass(frozen=True, slots=True)
class K8sConfig:
    regions: tuple[RegionConfig, ...]
    daemon_url: str | None = None
    watch: bool = True
    watch_seconds: float = 300.0
    unschedulable_seconds: float = 300.0
    pod_name_prefix: str = "spotd-"


_REGION_KEYS = {
    "context", "namespace", "kubeconfig", "host", "zone", "image", "python", "service_account",
    "node_selector", "tolerations", "spot", "spot_node_selector", "spot_tolerations",
    "ondemand_node_selector", "gpu_resource", "termination_grace_seconds", "checkpoint_pvc",
    "instance_types", "gpu_types",
}
_TOP_KEYS = {"regions", "daemon_url", "watch", "watch_seconds", "unschedulable_seconds",
             "pod_name_prefix"}
_TYPE_KEYS = {"name", "vcpus", "memory_gb", "accelerator", "accelerator_count", "ondemand", "spot",
              "node_selector"}
_GPU_KEYS = {"counts", "ondemand_per_gpu", "spot_per_gpu", "vcpus_per_gpu", "memory_gb_per_gpu",
             "node_selector"}
DEFAULT_TYPES = (PodType(name="cpu-2", vcpus=2, memory_gb=8, ondemand=0.10, spot=0.03),)


def _keys(where: str, value: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise KubernetesConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = set(value) - allowed
    if unknown:
        raise KubernetesConfigError(f"{where}: unknown keys {sorted(unknown)} "
                                    f"(allowed: {sorted(allowed)})")
    return value


def _str_map(where: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KubernetesConfigError(f"{where}: expected a mapping of strings")
    return {str(k): str(v) for k, v in value.items()}


def _types(where: str, raw: Mapping[str, Any]) -> tuple[PodType, ...]:
    out: list[PodType] = []
    for i, t in enumerate(raw.get("instance_types") or []):
        t = _keys(f"{where}.instance_types[{i}]", t, _TYPE_KEYS)
        try:
            out.append(PodType(
                name=str(t["name"]), vcpus=float(t["vcpus"]), memory_gb=float(t["memory_gb"]),
                accelerator=t.get("accelerator"),
                accelerator_count=float(t.get("accelerator_count") or 0),
                ondemand=float(t.get("ondemand") or 0.0),
                spot=None if t.get("spot") is None else float(t["spot"]),
                node_selector=_str_map(f"{where}.instance_types[{i}].node_selector",
                                       t.get("node_selector")),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise KubernetesConfigError(f"{where}.instance_types[{i}]: {exc!r}") from exc
    for model, g in (raw.get("gpu_types") or {}).items():
        g = _keys(f"{where}.gpu_types.{model}", g, _GPU_KEYS)
        try:
            for n in g.get("counts") or [1]:
                spot = g.get("spot_per_gpu")
                out.append(PodType(
                    name=f"{str(model).lower()}-{int(n)}",
                    vcpus=float(g.get("vcpus_per_gpu", 8)) * int(n),
                    memory_gb=float(g.get("memory_gb_per_gpu", 32)) * int(n),
                    accelerator=str(model), accelerator_count=int(n),
                    ondemand=float(g.get("ondemand_per_gpu") or 0.0) * int(n),
                    spot=None if spot is None else float(spot) * int(n),
                    node_selector=_str_map(f"{where}.gpu_types.{model}.node_selector",
                                           g.get("node_selector")),
                ))
        except (TypeError, ValueError) as exc:
            raise KubernetesConfigError(f"{where}.gpu_types.{model}: {exc!r}") from exc
    names = [t.name for t in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise KubernetesConfigError(f"{where}: duplicate instance type names {sorted(dupes)}")
    return tuple(out) or DEFAULT_TYPES


def parse_config(cfg: Mapping[str, Any]) -> K8sConfig:
    """Validate the ``providers.k8s`` section (see docs/kubernetes.md for the shape)."""
    cfg = _keys("k8s", cfg, _TOP_KEYS)
    regions_raw = cfg.get("regions")
    if not isinstance(regions_raw, Mapping) or not regions_raw:
        raise KubernetesConfigError("k8s.regions: at least one region is needed")
    regions: list[RegionConfig] = []
    for name, raw in regions_raw.items():
        where = f"k8s.regions.{name}"
        raw = _keys(where, raw, _REGION_KEYS)
        if "/" in name:
            raise KubernetesConfigError(f"{where}: a region name may not contain '/'")
        if not raw.get("namespace"):
            raise KubernetesConfigError(f"{where}.namespace is required")
        spot_sel = _str_map(f"{where}.spot_node_selector", raw.get("spot_node_selector"))
        spot_tol = list(raw.get("spot_tolerations") or [])
        od_sel = _str_map(f"{where}.ondemand_node_selector", raw.get("ondemand_node_selector"))
        preset = raw.get("spot")
        if preset is not None:
            if preset not in SPOT_PRESETS:
                raise KubernetesConfigError(
                    f"{where}.spot: unknown preset {preset!r} (known: {sorted(SPOT_PRESETS)})")
            p_sel, p_tol, p_od = SPOT_PRESETS[preset]
            spot_sel = {**p_sel, **spot_sel}
            spot_tol = spot_tol or list(p_tol)
            od_sel = {**p_od, **od_sel}
        types = _types(where, raw)
        regions.append(RegionConfig(
            name=str(name), namespace=str(raw["namespace"]), zone=str(raw.get("zone") or name),
            context=raw.get("context"), kubeconfig=raw.get("kubeconfig"), host=raw.get("host"),
            image=str(raw.get("image") or "spotd-agent:latest"),
            python=str(raw.get("python") or "python"),
            service_account=raw.get("service_account"),
            node_selector=_str_map(f"{where}.node_selector", raw.get("node_selector")),
            tolerations=tuple(raw.get("tolerations") or ()),
            spot_node_selector=spot_sel, spot_tolerations=tuple(spot_tol),
            ondemand_node_selector=od_sel,
            gpu_resource=str(raw.get("gpu_resource") or "nvidia.com/gpu"),
            termination_grace_seconds=int(raw.get("termination_grace_seconds", 30)),
            checkpoint_pvc=raw.get("checkpoint_pvc"),
            types=types,
        ))
    try:
        return K8sConfig(
            regions=tuple(regions),
            daemon_url=cfg.get("daemon_url"),
            watch=bool(cfg.get("watch", True)),
            watch_seconds=float(cfg.get("watch_seconds", 300.0)),
            unschedulable_seconds=float(cfg.get("unschedulable_seconds", 300.0)),
            pod_name_prefix=str(cfg.get("pod_name_prefix", "spotd-")),
        )
    except (TypeError, ValueError) as exc:
        raise KubernetesConfigError(f"k8s: {exc!r}") from exc


# -- error classification ------------------------------------------------------------------


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        return str(exc.body or exc.reason or "")
    return str(body.get("message") or exc.reason or "") if isinstance(body, dict) else ""


def classify(exc: BaseException, *, action: str) -> ProviderError:
    """Turn an API or transport failure into the provider error type policies branch on."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = _status_message(exc)
        text = f"{action}: HTTP {status}: {message}"
        if status == 403 and "exceeded quota" in message:
            return QuotaExceeded(text)
        if status in (400, 403, 404, 422):
            return InvalidRequest(text)
        return ProviderUnavailable(text)  # 401 (token expiry), 409 out of place, 429, 5xx, 0
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        return ProviderUnavailable(f"{action}: {type(exc).__name__}: {exc}")
    return ProviderUnavailable(f"{action}: unexpected {type(exc).__name__}: {exc}")


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
        if scheduled is not None and scheduled.get("reason") == "Unschedulable" and str(
            scheduled.get("status")
        ) == "False":
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


async def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call an API method for its raw JSON (dicts, not models); non-2xx raises ApiException.

    ``_preload_content=False`` skips kubernetes_asyncio's model deserialisation (the cache
    and ``pod_state`` read plain dicts, as the API sends them), but also its status check,
    which is therefore done here.
    """
    resp = await method(*args, _preload_content=False, **kwargs)
    try:
        raw = await resp.read()
        if not 200 <= resp.status <= 299:
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body = raw.decode(errors="replace")
            raise exc
        data = json.loads(raw) if raw else {}
        return data if isinstance(data, dict) else {}
    finally:
        resp.release()


# -- the provider --------------------------------------------------------------------------


@dataclass
class _RegionCache:
    """What is known about one region's pods, by pod name."""

    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    tombstones: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    synced_at: float | None = None  # monotonic time of the last successful snapshot
    watching: bool = False  # a watch stream is open and feeding ``pods``


ApiFactory = Callable[[RegionConfig], Any]  # async: region -> kubernetes_asyncio ApiClient


async def default_api_client(region: RegionConfig) -> k8s_client.ApiClient:
    """A client for the region's cluster: a bare URL (``host``) or a kubeconfig context."""
    if region.host:
        conf = k8s_client.Configuration(host=region.host.rstrip("/"))
        return k8s_client.ApiClient(conf)
    try:
        return await k8s_config.new_client_from_config(
            config_file=region.kubeconfig, context=region.context, persist_config=False
        )
    except (k8s_config.ConfigException, OSError) as exc:
        raise ProviderUnavailable(
            f"k8s region {region.name}: cannot load kubeconfig "
            f"{region.kubeconfig or '~/.kube/config'} context {region.context}: {exc}"
        ) from exc


class KubernetesProvider:
    """Pods in configured namespaces/contexts, observed through one watch per region."""

    name = PROVIDER_NAME

    def __init__(
        self,
        config: K8sConfig,
        *,
        home_tag: str | None,
        api_factory: ApiFactory = default_api_client,
        clock: Callable[[], float] = time.time,
        tombstone_seconds: float = 600.0,
    ) -> None:
        self.config = config
        self.home_tag = home_tag
        self.daemon_url = config.daemon_url  # read by the controller for the agents' config
        self.notice_url = ""  # agents get notices through the pod shell's SIGTERM trap
        self._regions = {r.name: r for r in config.regions}
        self._api_factory = api_factory
        self._clock = clock
        self._tombstone_seconds = tombstone_seconds
        self._apis: dict[str, Any] = {}
        self._api_lock = asyncio.Lock()
        self._caches = {r: _RegionCache() for r in self._regions}
        self._deleting: set[tuple[str, str]] = set()  # (region, pod) that spotd deleted
        self._first_seen: dict[tuple[str, str, str], float] = {}
        self._stop = asyncio.Event()
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._catalog = [
            CatalogEntry(
                provider=PROVIDER_NAME, region=r.name, zone=r.zone, instance_type=t.name,
                vcpus=t.vcpus, memory_gb=t.memory_gb, accelerator=t.accelerator,
                accelerator_count=t.accelerator_count, ondemand_price=t.ondemand,
                spot_price=t.spot if r.sells_spot else None,
            )
            for r in config.regions
            for t in r.types
        ]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, home_tag: str | None) -> KubernetesProvider:
        return cls(parse_config(cfg), home_tag=home_tag)

    # -- plumbing ---------------------------------------------------------------------------

    async def _core(self, region: str) -> k8s_client.CoreV1Api:
        async with self._api_lock:
            api = self._apis.get(region)
            if api is None:
                api = await self._api_factory(self._regions[region])
                self._apis[region] = api
        return k8s_client.CoreV1Api(api)

    def _selector(self) -> str:
        if self.home_tag is not None:
            return f"{label_key(TAG_HOME)}={label_value(self.home_tag)}"
        return f"{MANAGED_BY[0]}={MANAGED_BY[1]}"

    def _region_of(self, instance_id: str) -> tuple[RegionConfig, str]:
        region, _, name = instance_id.partition("/")
        if region not in self._regions or not name:
            raise InvalidRequest(f"not a k8s instance id of this config: {instance_id!r}")
        return self._regions[region], name

    # -- the provider interface -------------------------------------------------------------

    def catalog(self) -> Sequence[CatalogEntry]:
        return self._catalog

    def _pod_type(self, spec: InstanceSpec) -> tuple[RegionConfig, PodType]:
        region = self._regions.get(spec.region)
        if region is None:
            raise InvalidRequest(f"no k8s region {spec.region!r}")
        t = next((t for t in region.types if t.name == spec.instance_type), None)
        if t is None:
            raise InvalidRequest(f"{spec.instance_type} is not offered in k8s/{spec.region}")
        if spec.market == Market.SPOT and not region.sells_spot:
            raise InvalidRequest(f"k8s/{spec.region} has no spot node selector configured")
        return region, t

    def _agent_json(self, spec: InstanceSpec, region: RegionConfig) -> str:
        agent = dataclasses.replace(spec.agent, instance_dir=AGENT_DIR)
        if region.checkpoint_pvc and agent.checkpoint_store:
            # the store is a directory on the daemon's side; in the pod it is the shared volume
            leaf = agent.checkpoint_store.rstrip("/").rsplit("/", 1)[-1]
            agent = dataclasses.replace(agent, checkpoint_store=f"{CHECKPOINT_MOUNT}/{leaf}")
        return json.dumps(dataclasses.asdict(agent))

    def build_pod(self, spec: InstanceSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (secret, pod) manifests for a spec (no I/O; tests read them directly)."""
        region, t = self._pod_type(spec)
        name = pod_name(spec.key, self.config.pod_name_prefix)
        tags = dict(spec.tags)
        if self.home_tag is not None:
            tags.setdefault(TAG_HOME, self.home_tag)
        labels = {label_key(k): label_value(v) for k, v in tags.items()}
        labels[MANAGED_BY[0]] = MANAGED_BY[1]
        labels["spotd.dev/market"] = label_value(str(spec.market))
        annotations = {ANN_TAGS: json.dumps(tags, sort_keys=True), ANN_KEY: spec.key,
                       ANN_TYPE: t.name}
        meta = {"name": name, "namespace": region.namespace, "labels": labels,
                "annotations": annotations}
        secret = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": region.namespace, "labels": dict(labels)},
            "data": {"agent.json": base64.b64encode(
                self._agent_json(spec, region).encode()).decode()},
        }
        resources: dict[str, dict[str, str]] = {
            "requests": {"cpu": f"{t.vcpus:g}", "memory": f"{t.memory_gb:g}Gi"},
            "limits": {"memory": f"{t.memory_gb:g}Gi"},
        }
        if t.accelerator_count:
            gpus = f"{int(t.accelerator_count)}"
            resources["requests"][region.gpu_resource] = gpus
            resources["limits"][region.gpu_resource] = gpus
        selector = {**region.node_selector, **t.node_selector}
        tolerations = [dict(x) for x in region.tolerations]
        if spec.market == Market.SPOT:
            selector.update(region.spot_node_selector)
            tolerations += [dict(x) for x in region.spot_tolerations]
        else:
            selector.update(region.ondemand_node_selector)
        grace = region.termination_grace_seconds
        # PID 1 is this shell: it forwards the kubelet's SIGTERM to the agent as a notice file
        # with the deadline the kubelet will keep (grace period), then waits for the agent.
        script = (
            f'D={AGENT_DIR}; mkdir -p "$D" && cp {AGENT_SECRET_MOUNT}/agent.json "$D/agent.json"'
            f' || exit 1; {region.python} -m spotd.agent "$D" & A=$!; '
            f"trap 'printf \"{{\\\"deadline\\\": %s}}\" $(( $(date +%s) + {max(grace - 1, 1)} ))"
            f" > \"$D/notice.json\"' TERM; "
            'while kill -0 $A 2>/dev/null; do wait $A; done; wait $A'
        )
        volumes: list[dict[str, Any]] = [
            {"name": "agent-config", "secret": {"secretName": name, "defaultMode": 0o400}},
            {"name": "instance", "emptyDir": {}},
        ]
        mounts: list[dict[str, Any]] = [
            {"name": "agent-config", "mountPath": AGENT_SECRET_MOUNT, "readOnly": True},
            {"name": "instance", "mountPath": AGENT_DIR},
        ]
        if region.checkpoint_pvc:
            volumes.append({"name": "checkpoints",
                            "persistentVolumeClaim": {"claimName": region.checkpoint_pvc}})
            mounts.append({"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT})
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "agent",
                "image": region.image,
                "command": ["/bin/sh", "-c", script],
                "resources": resources,
                "volumeMounts": mounts,
                "env": [{"name": "SPOTD_INSTANCE_KEY", "value": spec.key}],
            }],
            "volumes": volumes,
        }
        if selector:
            pod_spec["nodeSelector"] = selector
        if tolerations:
            pod_spec["tolerations"] = tolerations
        if region.service_account:
            pod_spec["serviceAccountName"] = region.service_account
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
        return secret, pod

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        secret, pod = self.build_pod(spec)
        region = self._regions[spec.region]
        name = pod["metadata"]["name"]
        iid = InstanceId(f"{region.name}/{name}")
        core = await self._core(region.name)
        try:
            await _call(core.create_namespaced_secret, region.namespace, secret)
        except ApiException as exc:
            if exc.status != 409:  # 409: this key's secret exists (a retried launch)
                raise classify(exc, action=f"create secret {name}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise classify(exc, action=f"create secret {name}") from exc
        try:
            body = await _call(core.create_namespaced_pod, region.namespace, pod)
        except ApiException as exc:
            if exc.status != 409:
                raise classify(exc, action=f"create pod {name}") from exc
            await self._check_owner(core, region, name, spec.key)
            return iid  # idempotent: the pod for this key exists
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise classify(exc, action=f"create pod {name}") from exc
        self._deleting.discard((region.name, name))
        uid = (body.get("metadata") or {}).get("uid")
        if uid:  # let the cluster's garbage collector remove the secret with the pod
            owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}
            with contextlib.suppress(ApiException, aiohttp.ClientError, TimeoutError, OSError):
                await _call(core.patch_namespaced_secret, name, region.namespace,
                            {"metadata": {"ownerReferences": [owner]}})
        cache = self._caches[region.name]
        cache.pods.setdefault(name, body if isinstance(body, dict) else pod)
        cache.tombstones.pop(name, None)
        return iid

    async def _check_owner(
        self, core: k8s_client.CoreV1Api, region: RegionConfig, name: str, key: str
    ) -> None:
        try:
            existing = await _call(core.read_namespaced_pod, name, region.namespace)
        except ApiException as exc:
            raise classify(exc, action=f"read pod {name}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise classify(exc, action=f"read pod {name}") from exc
        meta = existing.get("metadata") or {}
        their_key = (meta.get("annotations") or {}).get(ANN_KEY)
        their_home = (meta.get("labels") or {}).get(label_key(TAG_HOME))
        ours = self.home_tag is None or their_home == label_value(self.home_tag)
        if their_key != key or not ours:
            raise InvalidRequest(
                f"pod {region.namespace}/{name} exists but belongs to key {their_key!r} of home "
                f"{their_home!r}: give each daemon its own namespace or pod_name_prefix"
            )

    async def list_instances(self) -> Sequence[ObservedInstance]:
        self._start_watchers()
        out: list[ObservedInstance] = []
        errors: list[str] = []
        for region in self._regions.values():
            cache = self._caches[region.name]
            if not cache.watching:
                try:
                    await self._relist(region)
                except ProviderError as exc:
                    if cache.synced_at is None:
                        errors.append(str(exc))
                        continue
                    log.warning("k8s listing failed; serving the last snapshot",
                                region=region.name, error=str(exc))
            out.extend(self._observe_region(region))
        if errors:
            raise ProviderUnavailable("; ".join(errors))
        return out

    async def terminate(self, instance_id: InstanceId) -> None:
        region, name = self._region_of(instance_id)
        core = await self._core(region.name)
        self._deleting.add((region.name, name))
        for what, call in (("pod", core.delete_namespaced_pod),
                           ("secret", core.delete_namespaced_secret)):
            try:
                await _call(call, name, region.namespace)
            except ApiException as exc:
                if exc.status != 404:  # already gone: terminate is idempotent
                    raise classify(exc, action=f"delete {what} {name}") from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise classify(exc, action=f"delete {what} {name}") from exc
        cache = self._caches[region.name]
        cache.tombstones.pop(name, None)
        if name in cache.pods and not self.config.watch:
            cache.pods.pop(name, None)

    async def close(self) -> None:
        self._stop.set()
        for task in self._watchers.values():
            task.cancel()
        for task in self._watchers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()
        for api in self._apis.values():
            with contextlib.suppress(Exception):
                await api.close()
        self._apis.clear()

    # -- tenants ----------------------------------------------------------------------------

    async def ensure_namespace_quota(self, region: str, gpus: int) -> None:
        """Create the region's namespace if needed and cap its GPU requests at ``gpus``.

        A tenant gets its own namespace (its own region in the config) and a ResourceQuota
        ``spotd-gpu-quota`` on ``requests.<gpu_resource>``; a launch over it is answered 403
        "exceeded quota" by the API server, which ``launch`` raises as QuotaExceeded.
        """
        r = self._regions.get(region)
        if r is None:
            raise InvalidRequest(f"no k8s region {region!r}")
        core = await self._core(region)
        ns = {"apiVersion": "v1", "kind": "Namespace",
              "metadata": {"name": r.namespace, "labels": {MANAGED_BY[0]: MANAGED_BY[1]}}}
        quota = {
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": QUOTA_NAME, "namespace": r.namespace,
                         "labels": {MANAGED_BY[0]: MANAGED_BY[1]}},
            "spec": {"hard": {f"requests.{r.gpu_resource}": str(int(gpus))}},
        }
        try:
            try:
                await _call(core.create_namespace, ns)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            try:
                await _call(core.create_namespaced_resource_quota, r.namespace, quota)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await _call(core.patch_namespaced_resource_quota, QUOTA_NAME, r.namespace,
                            {"spec": quota["spec"]})
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise classify(exc, action=f"quota for namespace {r.namespace}") from exc

    # -- observing --------------------------------------------------------------------------

    def _ours(self, pod: Mapping[str, Any]) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if self.home_tag is not None:
            return bool(labels.get(label_key(TAG_HOME)) == label_value(self.home_tag))
        return bool(labels.get(MANAGED_BY[0]) == MANAGED_BY[1])

    async def _relist(self, region: RegionConfig) -> str:
        """One label-selected list of the region: replaces the snapshot; returns its version."""
        core = await self._core(region.name)
        try:
            body = await _call(
                core.list_namespaced_pod, region.namespace, label_selector=self._selector(),
                _request_timeout=30,
            )
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise classify(exc, action=f"list pods in {region.name}") from exc
        cache = self._caches[region.name]
        fresh = {
            p["metadata"]["name"]: p
            for p in body.get("items") or []
            # the selector is the API server's job; a server that ignores it (kmock does)
            # must still not make other daemons' pods ours
            if self._ours(p)
        }
        for name, old in cache.pods.items():
            if name not in fresh:
                self._bury(region, name, old)
        cache.pods = fresh
        cache.synced_at = time.monotonic()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _bury(self, region: RegionConfig, name: str, last: dict[str, Any]) -> None:
        """A pod vanished: remember it for a while, unless spotd deleted it."""
        if (region.name, name) in self._deleting:
            self._deleting.discard((region.name, name))
            return
        self._caches[region.name].tombstones[name] = (self._clock(), last)

    def _apply(self, region: RegionConfig, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        pod = event.get("object") or {}
        name = (pod.get("metadata") or {}).get("name")
        if not name or not self._ours(pod):
            return
        cache = self._caches[region.name]
        if kind in ("ADDED", "MODIFIED"):
            cache.pods[name] = dict(pod)
            cache.tombstones.pop(name, None)
        elif kind == "DELETED":
            cache.pods.pop(name, None)
            self._bury(region, name, dict(pod))

    def _observe_region(self, region: RegionConfig) -> list[ObservedInstance]:
        now = self._clock()
        cache = self._caches[region.name]
        out = []
        for name, pod in cache.pods.items():

            def first_seen(what: str, name: str = name) -> float:
                return self._first_seen.setdefault((region.name, name, what), now)

            view = pod_state(
                pod, now=now, unschedulable_seconds=self.config.unschedulable_seconds,
                first_seen=first_seen, deleting=(region.name, name) in self._deleting,
            )
            out.append(self._observed(region, name, pod, view))
        for name, (at, pod) in list(cache.tombstones.items()):
            if now - at > self._tombstone_seconds:
                del cache.tombstones[name]
                continue
            view = PodView(InstanceState.PREEMPTED, "pod deleted")
            out.append(self._observed(region, name, pod, view))
        for k in [k for k in self._first_seen if k[0] == region.name and k[1] not in cache.pods]:
            del self._first_seen[k]
        return out

    def _observed(
        self, region: RegionConfig, name: str, pod: Mapping[str, Any], view: PodView
    ) -> ObservedInstance:
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        try:
            tags = dict(json.loads(annotations.get(ANN_TAGS) or "{}"))
        except ValueError:
            tags = {}
        key = str(annotations.get(ANN_KEY) or tags.get("spotd-key") or name)
        return ObservedInstance(
            id=InstanceId(f"{region.name}/{name}"), key=key, region=region.name,
            zone=region.zone, state=view.state, tags=tags, reason=view.reason,
            notice_deadline=view.notice_deadline,
            address=str((pod.get("status") or {}).get("podIP") or "127.0.0.1"),
        )

    # -- watching ---------------------------------------------------------------------------

    def _start_watchers(self) -> None:
        if not self.config.watch or self._stop.is_set():
            return
        for region in self._regions.values():
            task = self._watchers.get(region.name)
            if task is None or task.done():
                self._watchers[region.name] = asyncio.create_task(
                    self._watch_loop(region), name=f"k8s-watch:{region.name}"
                )

    async def _watch_loop(self, region: RegionConfig) -> None:
        """Snapshot, watch until the stream ends, repeat: the re-list is the safety net."""
        cache = self._caches[region.name]
        backoff = 0.5
        while not self._stop.is_set():
            try:
                version = await self._relist(region)
                await self._watch_once(region, version)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except ProviderError as exc:
                log.warning("k8s watch interrupted", region=region.name, error=str(exc))
                cache.watching = False
                await sleep(backoff, self._stop)
                backoff = min(backoff * 2, 30.0)
            finally:
                cache.watching = False

    async def _watch_once(self, region: RegionConfig, version: str) -> None:
        core = await self._core(region.name)
        cache = self._caches[region.name]
        kwargs: dict[str, Any] = {"label_selector": self._selector(), "watch": True,
                                  "timeout_seconds": int(self.config.watch_seconds),
                                  "allow_watch_bookmarks": True}
        if version.isdigit():
            kwargs["resource_version"] = version
        resp: Any
        try:
            resp = await core.list_namespaced_pod(
                region.namespace, _preload_content=False,
                _request_timeout=(10, self.config.watch_seconds + 15), **kwargs,
            )
            if not 200 <= resp.status <= 299:
                exc = ApiException(status=resp.status, reason=resp.reason)
                exc.body = (await resp.read()).decode(errors="replace")
                resp.release()
                raise exc
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise classify(exc, action=f"watch pods in {region.name}") from exc
        try:
            cache.watching = True
            while not self._stop.is_set():
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, TimeoutError, OSError):
                    return  # the stream ended (server timeout, dropped connection): re-list
                if not line:
                    return
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("type") == "ERROR":
                    return  # typically 410 Gone: the version is too old; re-list
                if event.get("type") == "BOOKMARK":
                    continue
                self._apply(region, event)
        finally:
            cache.watching = False
            resp.release()

