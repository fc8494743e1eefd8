"""Kubernetes: an instance is a pod running the agent; a region is a context and a namespace.

``config`` parses the section, ``pods`` builds manifests and reads pod states (pure),
``watch`` keeps the per-region cache current, ``provider`` makes the API calls (with
``watch``, the only modules that import kubernetes_asyncio or its responses).
"""

from spotd.providers.kubernetes.config import (
    PROVIDER_NAME,
    K8sConfig,
    KubernetesConfigError,
    PodType,
    RegionConfig,
    parse_config,
)
from spotd.providers.kubernetes.pods import PodView, label_key, label_value, pod_name, pod_state
from spotd.providers.kubernetes.provider import KubernetesProvider, classify, default_api_client

__all__ = [
    "PROVIDER_NAME",
    "K8sConfig",
    "KubernetesConfigError",
    "KubernetesProvider",
    "PodType",
    "PodView",
    "RegionConfig",
    "classify",
    "default_api_client",
    "label_key",
    "label_value",
    "parse_config",
    "pod_name",
    "pod_state",
]
