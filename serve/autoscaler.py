"""How many replicas a service should have: a pure function of load signals and time.

``autoscale(metrics, policy, state, now, load) -> (target, state)`` follows the shape of Ray
Serve's ``autoscaling_policy.py`` (context in, decision and new state out, built from
``_apply_bounds`` and ``_apply_delay``) with SkyServe's policy fields (``replica_policy`` in
the service YAML); ``load`` (the replicas' own report) is optional, so QPS-only callers (the
simulator) pass what they always did.
The one change from both: delays are measured on the timestamps the caller passes in, never by
counting control-loop ticks. Ray's early tick counter computed ``0.6 / 0.1`` ticks, got
5.999…, and scaled one tick early; here "wanted since t" plus ``now - t >= delay`` has no such
rounding, and the loop interval can change (or jitter) without changing the behaviour.

The rule, in order:

1. QPS = requests in the last ``window_seconds`` / ``window_seconds``.
2. Each configured target asks for a replica count (``wanted``); the most demanding wins,
   clamped to [min_replicas, max_replicas]:

   - ``target_qps_per_replica``: ceil(QPS / target) — SkyServe's one signal. Weak for LLM
     servers: a replica that generates 2,000 tokens per request is saturated at a QPS that
     looks idle;
   - ``target_queue_per_replica``: requests waiting (vLLM's ``num_requests_waiting`` summed
     over the READY replicas, plus the LB's own queue) per replica. With ``n`` replicas
     reporting, ``R`` requests running and ``W`` waiting, it asks for
     ceil(n·(R + W) / (R + target·n)): as many replicas as hold every request if each runs
     what replicas run now (``R/n``, their batch capacity when a queue exists) and keeps at
     most ``target`` waiting. It asks for more than ``n`` exactly when W/n > target, and it
     does not collapse to zero when the queue empties (the running requests still count), so
     a queue target alone does not oscillate between "queue → scale up" and "no queue →
     scale down";
   - ``target_kv_cache_usage``: ceil(sum of the replicas' KV-cache usage (0–1) / target)
     (Kubernetes HPA's proportional rule: more than ``n`` when the average is above target);
   - ``target_gpu_utilization``: the same over the replicas' GPU utilisation (0–100 %). Weak
     for LLM servers (continuous batching keeps a busy GPU near 100 % at any load), so it is
     never a default.

   A replica-side target with no data this time (no READY replica answered its ``/metrics``)
   holds the current target: no decision is made on missing data. So does the queue target
   while no replica is READY (they are starting, or being replaced), except from zero
   replicas, where it asks for ceil(LB queue / target).
3. Cold start: at zero replicas, any request in the window brings the target to 1 at once
   (a user is waiting; no delay can be right here). If more are wanted, the upscale clock
   starts at that moment.
4. Otherwise a higher target must be wanted continuously for ``upscale_delay_seconds``, a lower
   one for ``downscale_delay_seconds``; the target then jumps to the value wanted at that
   moment. A change of direction (or wanting the current target again) restarts the clock.

Scenarios (each is a row in ``tests/serve/test_autoscaler.py``), with min 1, max 10,
target_qps_per_replica 1, the default delays (300 s up, 1200 s down) and a 60 s window:

- QPS rises to 3× target at t=0 → target stays 1 until t=300, is 3 at t=300.
- QPS 3 from t=0, dips to 1 at t=150, back to 3 at t=160 → the clock restarts; 3 at t=460.
- QPS 3 until t=100, then 5 → the upscale still fires at t=300, to 5.
- At 3 replicas, QPS drops to 1 at t=0 → target stays 3 until t=1200, is 1 at t=1200.
- min 0, at 1 replica, the window empty from t=0 on → 0 at t=1200 (scale to zero); a request
  at t=1500 → 1 at t=1500.
- QPS 100 with max 10 → 10 after the upscale delay; QPS 0 with min 2 → never below 2.
- ``replicas: 3`` (min = max = 3) → 3 whatever the traffic.
- upscale_delay 0.6 s, ticks every 0.1 s → the target changes at t=0.6, not at t=0.5.
- Long generations at modest QPS: target_qps 2 at 0.5 requests/s asks for 1; one replica
  running 8 with 24 waiting, target_queue_per_replica 4 → ceil(1·32 / (8 + 4)) = 3.
- After that upscale, 3 replicas each running 10, none waiting: the queue target asks for
  ceil(3·30/(30+12)) = 3, never 0; at 8 each it asks for 2 (2 replicas would run 16 and keep
  4 waiting each: at target), and at 2 replicas with 4 waiting each it stays at 2.
- KV-cache at 0.9 on 2 replicas with target 0.6 → 3; at 0.2 → 1.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_WINDOW_SECONDS = 60.0  # SkyServe's QPS window
_RATIO_EPSILON = 1e-9  # 0.1 + 0.2 requests/s at 0.1 per replica is 3 replicas, not 4


class Signal(enum.StrEnum):
    """What a target is set on; the value is the YAML key's stem (``target_<value>``)."""

    QPS = "qps_per_replica"  # requests per second per replica (the LB's counts)
    QUEUE = "queue_per_replica"  # waiting requests per replica (replicas' and the LB's queue)
    KV_CACHE = "kv_cache_usage"  # the replicas' KV-cache usage, 0–1
    GPU = "gpu_utilization"  # the replicas' GPU utilisation, 0–100 % (weak for LLM servers)


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What the READY replicas' servers (and the LB's queue) report at one moment.

    Sums over the ``replicas`` READY replicas that answered; a replica that did not answer is
    left out of every sum and of ``replicas``. ``waiting`` includes the requests the LB holds
    for want of a READY replica. ``gpu_utilization`` is None when no replica reports GPUs.
    """

    replicas: int
    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    gpu_utilization: float | None = None

    def __post_init__(self) -> None:
        values = (self.replicas, self.running, self.waiting, self.kv_cache_usage)
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError("replica load values must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class Wanted:
    """What each configured signal asks for (before bounds), and which one won."""

    by_signal: Mapping[Signal, int]

    @property
    def replicas(self) -> int:
        return max(self.by_signal.values(), default=0)

    @property
    def signal(self) -> Signal | None:
        """The most demanding signal (the first in ``Signal`` order on a tie)."""
        top = self.replicas
        return next((s for s, n in self.by_signal.items() if n == top), None)


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    """SkyServe's ``replica_policy``. A fixed ``replicas: N`` is ``AutoscalePolicy.fixed(N)``.

    ``base_ondemand_fallback_replicas`` counts inside the target (as in SkyServe); the last
    three fields are read by ``serve.hedge``, not by ``autoscale``.
    """

    min_replicas: int
    max_replicas: int
    target_qps_per_replica: float | None = None
    upscale_delay_seconds: float = 300.0
    downscale_delay_seconds: float = 1200.0
    base_ondemand_fallback_replicas: int = 0
    dynamic_ondemand_fallback: bool = False
    num_overprovision: int = 0
    # the LLM-server targets (None: not a signal); at least one target when max > min
    target_queue_per_replica: float | None = None  # waiting requests per replica
    target_kv_cache_usage: float | None = None  # 0 < x <= 1
    target_gpu_utilization: float | None = None  # percent, 0 < x <= 100

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError("min_replicas must be >= 0")
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        if not self.targets() and self.max_replicas != self.min_replicas:
            raise ValueError(
                "max_replicas above min_replicas needs a target to autoscale on (one of "
                + ", ".join(f"target_{s.value}" for s in Signal)
                + ")"
            )
        for name, value, top in (
            ("target_qps_per_replica", self.target_qps_per_replica, math.inf),
            ("target_queue_per_replica", self.target_queue_per_replica, math.inf),
            ("target_kv_cache_usage", self.target_kv_cache_usage, 1.0),
            ("target_gpu_utilization", self.target_gpu_utilization, 100.0),
        ):
            if value is not None and not 0 < value <= top:
                bound = "> 0" if top == math.inf else f"in (0, {top:g}]"
                raise ValueError(f"{name} must be {bound}, got {value}")
        if self.upscale_delay_seconds < 0 or self.downscale_delay_seconds < 0:
            raise ValueError("scaling delays must be >= 0")
        if self.base_ondemand_fallback_replicas < 0 or self.num_overprovision < 0:
            raise ValueError("base_ondemand_fallback_replicas and num_overprovision must be >= 0")

    @classmethod
    def fixed(cls, replicas: int) -> AutoscalePolicy:
        """The policy of ``service: replicas: N``."""
        return cls(min_replicas=replicas, max_replicas=replicas)

    def targets(self) -> Mapping[Signal, float]:
        """The configured targets by signal, in ``Signal`` order."""
        values = {
            Signal.QPS: self.target_qps_per_replica,
            Signal.QUEUE: self.target_queue_per_replica,
            Signal.KV_CACHE: self.target_kv_cache_usage,
            Signal.GPU: self.target_gpu_utilization,
        }
        return {k: v for k, v in values.items() if v is not None}

    def needs_replica_metrics(self) -> bool:
        """Whether a signal other than QPS is configured (replicas' /metrics must be read)."""
        return any(s is not Signal.QPS for s in self.targets())


@dataclass(frozen=True, slots=True)
class AutoscaleState:
    """What the autoscaler carries between decisions.

    ``upscale_since``/``downscale_since``: when a higher/lower target started being wanted
    without interruption (None: it is not wanted now). At most one is set.
    """

    target: int
    upscale_since: float | None = None
    downscale_since: float | None = None

    @classmethod
    def initial(cls, policy: AutoscalePolicy) -> AutoscaleState:
        """A new service starts at ``min_replicas`` (SkyServe's behaviour)."""
        return cls(target=policy.min_replicas)


@dataclass(frozen=True, slots=True)
class RequestWindow:
    """Requests seen by the load balancers, as ``(timestamp, count)`` buckets.

    A bucket is one request (count 1) or a per-second (or per-report) count stamped with its
    time. Buckets older than ``window_seconds`` before ``now`` are ignored, so the caller may
    pass a longer history. Buckets stamped after ``now`` are counted: a load balancer's clock
    a little ahead of the daemon's must not hide traffic.
    """

    buckets: tuple[tuple[float, int], ...] = ()
    window_seconds: float = DEFAULT_WINDOW_SECONDS

    def __post_init__(self) -> None:
        if not self.window_seconds > 0:
            raise ValueError("window_seconds must be > 0")

    @classmethod
    def of_timestamps(
        cls, timestamps: Iterable[float], *, window_seconds: float = DEFAULT_WINDOW_SECONDS
    ) -> RequestWindow:
        return cls(tuple((t, 1) for t in timestamps), window_seconds)

    def count(self, now: float) -> int:
        start = now - self.window_seconds
        return sum(n for t, n in self.buckets if t > start)

    def qps(self, now: float) -> float:
        return self.count(now) / self.window_seconds


def autoscale(
    metrics: RequestWindow,
    policy: AutoscalePolicy,
    state: AutoscaleState,
    now: float,
    load: ReplicaLoad | None = None,
) -> tuple[int, AutoscaleState]:
    """Return the target replica count at ``now`` and the state for the next call.

    ``load``: the replicas' own report (None: not read, or no replica answered); only the
    queue, KV-cache and GPU targets read it.
    """
    current = _apply_bounds(state.target, policy)
    if current != state.target:
        # the policy changed under a running service: its bounds apply at once (as Ray)
        state = AutoscaleState(target=current)

    desired = _apply_bounds(wanted(metrics, policy, now, load, current=current).replicas, policy)
    if current == 0 and metrics.count(now) > 0 and policy.max_replicas > 0:
        # cold start: waiting out upscale_delay here would fail the request that woke us;
        # more than one replica still waits, with its clock started now
        return 1, AutoscaleState(target=1, upscale_since=now if desired > 1 else None)
    return _apply_delay(desired, state, policy, now)


def wanted(
    metrics: RequestWindow,
    policy: AutoscalePolicy,
    now: float,
    load: ReplicaLoad | None,
    *,
    current: int,
) -> Wanted:
    """What each configured target asks for now (unbounded); see the module docstring.

    ``current``: the target in force, which a replica-side signal holds on missing data.
    """
    by_signal: dict[Signal, int] = {}
    for signal, target in policy.targets().items():
        if signal is Signal.QPS:
            by_signal[signal] = _raw_target(metrics.qps(now), policy)
        elif load is None:
            by_signal[signal] = current  # nothing to decide on: hold
        elif signal is Signal.QUEUE:
            by_signal[signal] = _queue_target(load, target, current=current)
        elif signal is Signal.KV_CACHE:
            by_signal[signal] = (
                current if load.replicas == 0 else _ceil_ratio(load.kv_cache_usage, target)
            )
        elif load.replicas == 0 or load.gpu_utilization is None:
            by_signal[signal] = current
        else:
            by_signal[signal] = _ceil_ratio(load.gpu_utilization, target)
    return Wanted(by_signal)


def _queue_target(load: ReplicaLoad, target: float, *, current: int) -> int:
    """ceil(n·(R + W) / (R + target·n)).

    No READY replica: from zero, ceil(W / target) for the LB's queue (scaling up from zero
    with a crowd waiting); otherwise the replicas asked for are starting (or were lost and
    are being replaced), and a queue that grows meanwhile says nothing about how many more
    are needed: hold.
    """
    n, total = load.replicas, load.running + load.waiting
    if n == 0:
        return _ceil_ratio(load.waiting, target) if current == 0 else current
    return _ceil_ratio(n * total, load.running + target * n)


def _ceil_ratio(amount: float, per_replica: float) -> int:
    """ceil(amount / per_replica), at least 1 for any amount, forgiving float noise."""
    ratio = amount / per_replica
    if ratio <= 0:
        return 0
    return max(1, math.ceil(ratio - _RATIO_EPSILON))


def _raw_target(qps: float, policy: AutoscalePolicy) -> int:
    """ceil(qps / target_qps_per_replica), forgiving float noise just above an integer."""
    if policy.target_qps_per_replica is None:
        return policy.min_replicas
    return _ceil_ratio(qps, policy.target_qps_per_replica)


def _apply_bounds(n: int, policy: AutoscalePolicy) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, n))


def _apply_delay(
    desired: int, state: AutoscaleState, policy: AutoscalePolicy, now: float
) -> tuple[int, AutoscaleState]:
    """Move to ``desired`` only once it has been wanted, in the same direction, long enough."""
    current = state.target
    if desired > current:
        since = state.upscale_since if state.upscale_since is not None else now
        if now - since >= policy.upscale_delay_seconds:
            return desired, AutoscaleState(target=desired)
        return current, AutoscaleState(target=current, upscale_since=since)
    if desired < current:
        since = state.downscale_since if state.downscale_since is not None else now
        if now - since >= policy.downscale_delay_seconds:
            return desired, AutoscaleState(target=desired)
        return current, AutoscaleState(target=current, downscale_since=since)
    return current, AutoscaleState(target=current)
