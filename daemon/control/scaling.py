"""The autoscaler's executor: reads the LB's request counts and queue and, where the policy
has a queue, KV-cache or GPU target, the READY replicas' own ``/metrics``; runs
``serve.autoscale``; stores a changed target with its event (which signal asked for it).

What is read is read at most every ``stats_interval`` seconds (cached in between). When the
LB cannot be read the target holds (never below ``min_replicas``): no scaling decision is made
on missing data; likewise a replica-side target holds when no READY replica answers its
``/metrics`` (``control.replica_metrics``). Requests the LB holds in its queue (no replica
ready) are counted as demand arriving now, so a service scaled to zero wakes at once, and as
waiting requests for the queue target.

The replicas to scrape are the ones the LB routes to (its ``/-/replicas`` report, READY and
not ejected), read in the same pass as its counts; the scrapes run concurrently, each bounded
by ``replica_metrics.DEFAULT_TIMEOUT``, so one slow replica delays the service's step by at
most that and is left out of the sums.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog

from spotd.control.lbkeeper import LB_ERRORS, LbKeeper
from spotd.control.replica_metrics import MetricsSource, read_load, ready_urls
from spotd.control.serve_config import ServeSettings, autoscale_policy
from spotd.metrics import DaemonMetrics
from spotd.serve.autoscaler import (
    AutoscalePolicy,
    AutoscaleState,
    ReplicaLoad,
    RequestWindow,
    autoscale,
    wanted,
)
from spotd.spec import ServiceSpec
from spotd.store import AsyncStore, ServiceRow
from spotd.telemetry.gpu import GpuSample

log = structlog.get_logger("spotd.control.scaling")

GPU_MAX_AGE = 30.0  # seconds: an older GPU sample of a replica is no data


@dataclass(frozen=True, slots=True)
class Observed:
    """One read of a service's load: the LB's window (None: the LB was away) and the
    replicas' report (None: not asked for, or no replica answered)."""

    at: float
    window: RequestWindow | None
    load: ReplicaLoad | None


class Scaler:
    def __init__(
        self,
        *,
        serve: ServeSettings,
        store: AsyncStore,
        lbs: LbKeeper,
        on_ejection: Callable[[int], None],
        source: MetricsSource,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self._serve = serve
        self._store = store
        self._lbs = lbs
        self._on_ejection = on_ejection
        self._source = source
        self._metrics = metrics
        self._states: dict[int, AutoscaleState] = {}
        self._observed: dict[int, Observed] = {}
        self._names: dict[int, str] = {}  # service id -> name, for its metrics' labels
        # replica key -> (when, mean GPU utilisation % of its GPUs), from its agent's heartbeat
        self._gpus: dict[str, tuple[float, float]] = {}

    def note_gpus(self, key: str, samples: Sequence[GpuSample], now: float) -> None:
        """A replica's agent reported its GPUs (NVML); an empty list (no GPU) is no data."""
        if samples:
            self._gpus[key] = (now, sum(g.utilization_pct for g in samples) / len(samples))
        else:
            self._gpus.pop(key, None)

    def forget(self, service_id: int) -> None:
        self._states.pop(service_id, None)
        self._observed.pop(service_id, None)
        self._drop_gpus(service_id, keep=set())
        name = self._names.pop(service_id, None)
        if name is not None and self._metrics is not None:
            self._metrics.forget_service(name)

    def size(self) -> int:
        return len(self._states) + len(self._observed) + len(self._names) + len(self._gpus)

    def _drop_gpus(self, service_id: int, *, keep: set[str]) -> None:
        prefix = f"s{service_id}-r"
        for key in [k for k in self._gpus if k.startswith(prefix) and k not in keep]:
            del self._gpus[key]

    def _gpu_load(self, svc: ServiceRow, ids: Iterable[str], now: float) -> float | None:
        """The replicas' GPU utilisation summed (%), from heartbeats at most ``GPU_MAX_AGE``
        old; None when none of them reports a GPU."""
        keys = {f"s{svc.id}-r{rid}" for rid in ids}
        fresh: list[float] = []
        for key in keys:
            at, pct = self._gpus.get(key, (-math.inf, 0.0))
            if now - at <= GPU_MAX_AGE:
                fresh.append(pct)
        return sum(fresh) if fresh else None

    async def target(self, svc: ServiceRow, spec: ServiceSpec, now: float) -> int:
        """The autoscaler's target now; a changed target is stored with its event."""
        policy = autoscale_policy(spec)
        state = self._states.get(svc.id) or AutoscaleState(
            target=svc.target,
            upscale_since=svc.upscale_since,
            downscale_since=svc.downscale_since,
        )
        seen = await self._observe(svc, policy, now)
        window, load = seen.window, seen.load
        if window is None:
            target, new = max(state.target, policy.min_replicas), state
            new = dataclasses.replace(new, target=target)
        else:
            target, new = autoscale(window, policy, state, now, load)
        self._states[svc.id] = new
        if new.target != svc.target:
            await self._store.update_service_fields(
                svc.id,
                now=now,
                target=new.target,
                upscale_since=new.upscale_since,
                downscale_since=new.downscale_since,
                event=f"autoscaler: target {svc.target} → {new.target}"
                + _why(window, policy, load, now, current=state.target),
            )
        elif (new.upscale_since, new.downscale_since) != (svc.upscale_since, svc.downscale_since):
            # a delay started or was called off: a restarted daemon goes on with it, rather
            # than start the delay over (or act on one that ended long ago)
            await self._store.update_service_fields(
                svc.id,
                now=now,
                upscale_since=new.upscale_since,
                downscale_since=new.downscale_since,
            )
        return target

    async def _observe(self, svc: ServiceRow, policy: AutoscalePolicy, now: float) -> Observed:
        """The LB's counts (and the replicas' metrics when the policy reads them), read at
        most every ``stats_interval`` seconds."""
        cached = self._observed.get(svc.id)
        if cached is not None and now - cached.at < self._serve.stats_interval:
            return cached
        window: RequestWindow | None = None
        load: ReplicaLoad | None = None
        width = max(1, int(self._serve.qps_window))
        try:
            # whole seconds, oldest first, the filling one left out; each is stamped with its
            # end, and one more is asked for, so the last ``width`` whole seconds stay in
            # the window until the next read (``stats_interval`` later)
            stats = await self._lbs.stats(svc, width + 1)
            # the LB stamps its buckets with its host's clock; ``now`` is the daemon's
            # (``spotd.clock``: the database's, with several daemons)
            shift = now - stats.now
            buckets = [(b.t + 1.0 + shift, b.requests) for b in stats.buckets]
            # requests held in the LB's queue (no replica ready: scaled to zero) have not been
            # answered, so no bucket counts them yet: they are demand arriving now, and at
            # zero replicas they must wake the service at once, not after the queue times out
            if stats.waiting > 0:
                buckets.append((now, stats.waiting))
            window = RequestWindow(tuple(buckets), window_seconds=float(width))
            report = await self._lbs.replicas(svc)
            if any(r.ejected for r in report.replicas):
                self._on_ejection(svc.id)
            # GPU samples of replicas that left the LB's set go (whatever the policy)
            self._drop_gpus(svc.id, keep={f"s{svc.id}-r{r.id}" for r in report.replicas})
            if policy.needs_replica_metrics():
                urls = ready_urls(report)
                load = await read_load(self._source, urls, lb_waiting=stats.waiting)
                if load is not None and policy.target_gpu_utilization is not None:
                    gpu = self._gpu_load(svc, urls, now)
                    load = dataclasses.replace(load, gpu_utilization=gpu)
        except LB_ERRORS as exc:
            log.info("cannot read the load balancer's stats", service=svc.name, error=str(exc))
        seen = Observed(at=now, window=window, load=load)
        self._observed[svc.id] = seen
        self._export(svc, policy, seen, now)
        return seen

    def _export(self, svc: ServiceRow, policy: AutoscalePolicy, seen: Observed, now: float) -> None:
        """The signals on the daemon's ``/metrics`` (what each target asks for, and its input)."""
        if self._metrics is None or seen.window is None:
            return
        self._names[svc.id] = svc.name
        state = self._states.get(svc.id)
        current = state.target if state is not None else svc.target
        asks = wanted(seen.window, policy, now, seen.load, current=current)
        load = seen.load
        self._metrics.set_service_load(
            svc.name,
            qps=seen.window.qps(now),
            waiting=load.waiting if load is not None else None,
            running=load.running if load is not None else None,
            kv_cache_usage=load.kv_cache_usage / load.replicas if load and load.replicas else None,
            wanted={str(k): v for k, v in asks.by_signal.items()},
        )


def _why(
    window: RequestWindow | None,
    policy: AutoscalePolicy,
    load: ReplicaLoad | None,
    now: float,
    *,
    current: int,
) -> str:
    """``on queue_per_replica (asks 3; qps_per_replica asks 1): 0.50 requests/s, ...``"""
    if window is None:
        return ""
    asks = wanted(window, policy, now, load, current=current)
    text = f" at {window.qps(now):.2f} requests/s"
    if load is not None:
        text += (
            f", {load.waiting:g} waiting and {load.running:g} running"
            f" on {load.replicas} replica{'s' if load.replicas != 1 else ''}"
        )
        if policy.target_kv_cache_usage is not None and load.replicas:
            text += f", KV cache {load.kv_cache_usage / load.replicas:.0%}"
    if asks.signal is None or len(asks.by_signal) < 2:
        return text
    others = "; ".join(f"{k} asks {v}" for k, v in asks.by_signal.items() if k is not asks.signal)
    return f" on {asks.signal} (asks {asks.replicas}; {others})" + text
