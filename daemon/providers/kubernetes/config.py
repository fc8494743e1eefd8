"""The ``providers.k8s`` section, validated into frozen records (see docs/kubernetes.md).

A region is a namespace in a cluster (a kubeconfig context, or a bare API URL); each region
sells pod shapes (``instance_types``, or ``gpu_types`` expanded per GPU count) at notional
prices, spot only where a spot node selector or toleration is configured (directly, or through
a ``spot`` preset: ``karpenter``, ``gke``). Every error names the key it is about.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from spotd.types import CatalogEntry

PROVIDER_NAME = "k8s"

SpotPreset = tuple[Mapping[str, str], tuple[Mapping[str, str], ...], Mapping[str, str]]
SPOT_PRESETS: Mapping[str, SpotPreset] = MappingProxyType(
    {
        # preset: (spot node selector, spot tolerations, on-demand node selector)
        "karpenter": (
            {"karpenter.sh/capacity-type": "spot"},
            (),
            {"karpenter.sh/capacity-type": "on-demand"},
        ),
        "gke": (
            {"cloud.google.com/gke-spot": "true"},
            (
                {
                    "key": "cloud.google.com/gke-spot",
                    "operator": "Equal",
                    "value": "true",
                    "effect": "NoSchedule",
                },
            ),
            {},
        ),
    }
)


class KubernetesConfigError(ValueError):
    """The ``k8s`` provider section cannot be used; the message names the key."""


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
    # in ``image``: a self-contained Python with spotd (``bin/python``), copied into the pods
    # of tasks that run in their own image (``image_id: docker:IMAGE``)
    agent_runtime: str = "/opt/spotd"
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


_REGION_KEYS = frozenset(
    {
        "context",
        "namespace",
        "kubeconfig",
        "host",
        "zone",
        "image",
        "python",
        "agent_runtime",
        "service_account",
        "node_selector",
        "tolerations",
        "spot",
        "spot_node_selector",
        "spot_tolerations",
        "ondemand_node_selector",
        "gpu_resource",
        "termination_grace_seconds",
        "checkpoint_pvc",
        "instance_types",
        "gpu_types",
    }
)
_TOP_KEYS = frozenset(
    {"regions", "daemon_url", "watch", "watch_seconds", "unschedulable_seconds", "pod_name_prefix"}
)
_TYPE_KEYS = frozenset(
    {
        "name",
        "vcpus",
        "memory_gb",
        "accelerator",
        "accelerator_count",
        "ondemand",
        "spot",
        "node_selector",
    }
)
_GPU_KEYS = frozenset(
    {
        "counts",
        "ondemand_per_gpu",
        "spot_per_gpu",
        "vcpus_per_gpu",
        "memory_gb_per_gpu",
        "node_selector",
    }
)
DEFAULT_TYPES = (PodType(name="cpu-2", vcpus=2, memory_gb=8, ondemand=0.10, spot=0.03),)


def _keys(where: str, value: Any, allowed: Set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise KubernetesConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = set(value) - allowed
    if unknown:
        raise KubernetesConfigError(
            f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})"
        )
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
            out.append(
                PodType(
                    name=str(t["name"]),
                    vcpus=float(t["vcpus"]),
                    memory_gb=float(t["memory_gb"]),
                    accelerator=t.get("accelerator"),
                    accelerator_count=float(t.get("accelerator_count") or 0),
                    ondemand=float(t.get("ondemand") or 0.0),
                    spot=None if t.get("spot") is None else float(t["spot"]),
                    node_selector=_str_map(
                        f"{where}.instance_types[{i}].node_selector", t.get("node_selector")
                    ),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KubernetesConfigError(f"{where}.instance_types[{i}]: {exc!r}") from exc
    for model, g in (raw.get("gpu_types") or {}).items():
        g = _keys(f"{where}.gpu_types.{model}", g, _GPU_KEYS)
        try:
            for n in g.get("counts") or [1]:
                spot = g.get("spot_per_gpu")
                out.append(
                    PodType(
                        name=f"{str(model).lower()}-{int(n)}",
                        vcpus=float(g.get("vcpus_per_gpu", 8)) * int(n),
                        memory_gb=float(g.get("memory_gb_per_gpu", 32)) * int(n),
                        accelerator=str(model),
                        accelerator_count=int(n),
                        ondemand=float(g.get("ondemand_per_gpu") or 0.0) * int(n),
                        spot=None if spot is None else float(spot) * int(n),
                        node_selector=_str_map(
                            f"{where}.gpu_types.{model}.node_selector", g.get("node_selector")
                        ),
                    )
                )
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
                    f"{where}.spot: unknown preset {preset!r} (known: {sorted(SPOT_PRESETS)})"
                )
            p_sel, p_tol, p_od = SPOT_PRESETS[preset]
            spot_sel = {**p_sel, **spot_sel}
            spot_tol = spot_tol or list(p_tol)
            od_sel = {**p_od, **od_sel}
        types = _types(where, raw)
        regions.append(
            RegionConfig(
                name=str(name),
                namespace=str(raw["namespace"]),
                zone=str(raw.get("zone") or name),
                context=raw.get("context"),
                kubeconfig=raw.get("kubeconfig"),
                host=raw.get("host"),
                image=str(raw.get("image") or "spotd-agent:latest"),
                python=str(raw.get("python") or "python"),
                agent_runtime=str(raw.get("agent_runtime") or "/opt/spotd").rstrip("/"),
                service_account=raw.get("service_account"),
                node_selector=_str_map(f"{where}.node_selector", raw.get("node_selector")),
                tolerations=tuple(raw.get("tolerations") or ()),
                spot_node_selector=spot_sel,
                spot_tolerations=tuple(spot_tol),
                ondemand_node_selector=od_sel,
                gpu_resource=str(raw.get("gpu_resource") or "nvidia.com/gpu"),
                termination_grace_seconds=int(raw.get("termination_grace_seconds", 30)),
                checkpoint_pvc=raw.get("checkpoint_pvc"),
                types=types,
            )
        )
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


def catalog_entries(config: K8sConfig) -> list[CatalogEntry]:
    """Every pod type of every region as a catalog row; spot prices only where spot is sold."""
    return [
        CatalogEntry(
            provider=PROVIDER_NAME,
            region=r.name,
            zone=r.zone,
            instance_type=t.name,
            vcpus=t.vcpus,
            memory_gb=t.memory_gb,
            accelerator=t.accelerator,
            accelerator_count=t.accelerator_count,
            ondemand_price=t.ondemand,
            spot_price=t.spot if r.sells_spot else None,
        )
        for r in config.regions
        for t in r.types
    ]
