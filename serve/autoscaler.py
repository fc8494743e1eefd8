"""How many replicas a service should have: a pure function of request rate and time.

``autoscale(metrics, policy, state, now) -> (target, state)`` follows the shape of Ray Serve's
``autoscaling_policy.py`` (context in, decision and new state out, built from ``_apply_bounds``
and ``_apply_delay``) with SkyServe's policy fields (``replica_policy`` in the service YAML).
The one change from both: delays are measured on the timestamps the caller passes in, never by
counting control-loop ticks. Ray's early tick counter computed ``0.6 / 0.1`` ticks, got
5.999…, and scaled one tick early; here "wanted since t" plus ``now - t >= delay`` has no such
rounding, and the loop interval can change (or jitter) without changing the behaviour.

The rule, in order:

1. QPS = requests in the last ``window_seconds`` / ``window_seconds``.
2. raw = ceil(QPS / target_qps_per_replica), then clamped to [min_replicas, max_replicas].
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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_WINDOW_SECONDS = 60.0  # SkyServe's QPS window
_RATIO_EPSILON = 1e-9  # 0.1 + 0.2 requests/s at 0.1 per replica is 3 replicas, not 4


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    """SkyServe's ``replica_policy``. A fixed ``replicas: N`` is ``AutoscalePolicy.fixed(N)``.

    ``base_ondemand_fallback_replicas`` counts inside the target (as in SkyServe); the last
    three fields are read by ``serve.hedge``, not by ``autoscale``.
    """

    min_replicas: int
    max_replicas: int
    target_qps_per_replica: float | None = None  # None only when min == max
    upscale_delay_seconds: float = 300.0
    downscale_delay_seconds: float = 1200.0
    base_ondemand_fallback_replicas: int = 0
    dynamic_ondemand_fallback: bool = False
    num_overprovision: int = 0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError("min_replicas must be >= 0")
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        if self.target_qps_per_replica is None:
            if self.max_replicas != self.min_replicas:
                raise ValueError("target_qps_per_replica is required when max > min")
        elif not self.target_qps_per_replica > 0:
            raise ValueError("target_qps_per_replica must be > 0")
        if self.upscale_delay_seconds < 0 or self.downscale_delay_seconds < 0:
            raise ValueError("scaling delays must be >= 0")
        if self.base_ondemand_fallback_replicas < 0 or self.num_overprovision < 0:
            raise ValueError("base_ondemand_fallback_replicas and num_overprovision must be >= 0")

    @classmethod
    def fixed(cls, replicas: int) -> AutoscalePolicy:
        """The policy of ``service: replicas: N``."""
        return cls(min_replicas=replicas, max_replicas=replicas)


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
    metrics: RequestWindow, policy: AutoscalePolicy, state: AutoscaleState, now: float
) -> tuple[int, AutoscaleState]:
    """Return the target replica count at ``now`` and the state for the next call."""
    current = _apply_bounds(state.target, policy)
    if current != state.target:
        # the policy changed under a running service: its bounds apply at once (as Ray)
        state = AutoscaleState(target=current)

    desired = _apply_bounds(_raw_target(metrics.qps(now), policy), policy)
    if current == 0 and metrics.count(now) > 0 and policy.max_replicas > 0:
        # cold start: waiting out upscale_delay here would fail the request that woke us;
        # more than one replica still waits, with its clock started now
        return 1, AutoscaleState(target=1, upscale_since=now if desired > 1 else None)
    return _apply_delay(desired, state, policy, now)


def _raw_target(qps: float, policy: AutoscalePolicy) -> int:
    """ceil(qps / target_qps_per_replica), forgiving float noise just above an integer."""
    if policy.target_qps_per_replica is None:
        return policy.min_replicas
    ratio = qps / policy.target_qps_per_replica
    if ratio <= 0:
        return 0
    return max(1, math.ceil(ratio - _RATIO_EPSILON))


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
