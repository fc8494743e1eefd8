"""The services control plane's settings, and how a service spec reads as an autoscaler policy."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spotd.serve.autoscaler import AutoscalePolicy
from spotd.spec import ServiceSpec
from spotd.store import ServiceStatus

LIVE_SERVICE = (ServiceStatus.STARTING, ServiceStatus.READY, ServiceStatus.NO_REPLICA)
UPDATE_MODES = ("rolling", "blue_green")


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Timings of the services control plane (``SPOTD_SERVE_*`` environment variables)."""

    tick: float = 0.5  # a worker's step period when nothing wakes it
    probe_interval: float = 2.0  # readiness probe period per replica
    failure_threshold: int = 3  # failed probes in a row: READY -> NOT_READY
    not_ready_timeout: float = 180.0  # NOT_READY this long: FAILED_PROBE (replaced)
    qps_window: float = 60.0  # the autoscaler's request-rate window
    stats_interval: float = 1.0  # how often the LB's counts are read
    drain_timeout: float = 120.0  # DRAINING longer than this: terminated anyway
    launch_backoff: float = 2.0  # after a failed launch, doubling up to 60 s
    lb_host: str = "127.0.0.1"  # where the LB listens (the endpoint's host)
    port_low: int = 20000  # local replicas and LBs get ports in [low, high): below the
    port_high: int = 32000  # ephemeral range, so an outgoing connection never takes one

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"SPOTD_SERVE_{f.name.upper()}")
            if raw is None:
                continue
            kind: Any = type(f.default)
            values[f.name] = kind(raw)
        return cls(**values)


def autoscale_policy(spec: ServiceSpec) -> AutoscalePolicy:
    p = spec.policy()
    return AutoscalePolicy(
        min_replicas=p.min_replicas,
        max_replicas=p.upper,
        target_qps_per_replica=p.target_qps_per_replica,
        upscale_delay_seconds=p.upscale_delay_seconds,
        downscale_delay_seconds=p.downscale_delay_seconds,
        base_ondemand_fallback_replicas=p.base_ondemand_fallback_replicas,
        dynamic_ondemand_fallback=p.dynamic_ondemand_fallback,
        num_overprovision=p.num_overprovision,
        target_queue_per_replica=p.target_queue_per_replica,
        target_kv_cache_usage=p.target_kv_cache_usage,
        target_gpu_utilization=p.target_gpu_utilization,
    )
