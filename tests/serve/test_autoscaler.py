"""The autoscaler on timestamps: delays, bounds, scale to zero and cold start."""

from __future__ import annotations

import math

import pytest

from spotd.serve.autoscaler import (
    AutoscalePolicy,
    AutoscaleState,
    ReplicaLoad,
    RequestWindow,
    Signal,
    _raw_target,
    autoscale,
    wanted,
)

WINDOW = 60.0


def measured(qps: float, now: float) -> RequestWindow:
    """A window whose QPS, seen at ``now``, is exactly ``qps``."""
    return RequestWindow(((now, round(qps * WINDOW)),), WINDOW)


def policy(**kw: object) -> AutoscalePolicy:
    base: dict[str, object] = {"min_replicas": 1, "max_replicas": 10, "target_qps_per_replica": 1}
    return AutoscalePolicy(**{**base, **kw})


def simulate(
    pol: AutoscalePolicy,
    start: int,
    steps: list[tuple[float, float]],
    checks: list[tuple[float, int]],
    tick: float,
) -> list[tuple[float, int]]:
    """Run the control loop every ``tick`` seconds (plus at every step and check time).

    ``steps``: (from_t, qps) — the measured QPS from that time on. Returns (t, target) at each
    check time.
    """
    end = max(t for t, _ in checks)
    times = {t for t, _ in steps if t >= 0} | {t for t, _ in checks}
    times |= {i * tick for i in range(int(end // tick) + 1)}
    state = AutoscaleState(target=start)
    seen: dict[float, int] = {}
    for now in sorted(times):
        qps = [q for t, q in steps if t <= now][-1]
        target, state = autoscale(measured(qps, now), pol, state, now)
        assert target == state.target
        seen[now] = target
    return [(t, seen[t]) for t, _ in checks]


# (label, policy overrides, start target, [(from_t, qps)], [(t, expected target)])
SCENARIOS = [
    (
        "QPS rises to 3x target at t=0: stays 1 until t=300, 3 at t=300",
        {},
        1,
        [(-1e9, 1), (0, 3)],
        [(0, 1), (150, 1), (299, 1), (300, 3), (600, 3)],
    ),
    (
        "a dip to the current target at t=150 restarts the upscale clock",
        {},
        1,
        [(-1e9, 1), (0, 3), (150, 1), (160, 3)],
        [(300, 1), (459, 1), (460, 3)],
    ),
    (
        "QPS rises further while the upscale is pending: it fires on time, to the new value",
        {},
        1,
        [(-1e9, 1), (0, 3), (100, 5)],
        [(299, 1), (300, 5)],
    ),
    (
        "QPS drops at t=0: downscale only at t=1200",
        {},
        3,
        [(-1e9, 3), (0, 1)],
        [(0, 3), (600, 3), (1199, 3), (1200, 1)],
    ),
    (
        "a spike back to the current target at t=600 restarts the downscale clock",
        {},
        3,
        [(-1e9, 3), (0, 1), (600, 3), (700, 1)],
        [(1200, 3), (1899, 3), (1900, 1)],
    ),
    (
        "min 0, no traffic from t=0 on: 0 at t=1200 (scale to zero)",
        {"min_replicas": 0},
        1,
        [(-1e9, 1), (0, 0)],
        [(1199, 1), (1200, 0), (1400, 0)],
    ),
    (
        "at zero, traffic at t=1500: 1 at once, then upscale as usual",
        {"min_replicas": 0},
        0,
        [(-1e9, 0), (1500, 3)],
        [(1499, 0), (1500, 1), (1799, 1), (1800, 3)],
    ),
    (
        "QPS far above max: clamped to max_replicas",
        {},
        1,
        [(-1e9, 1), (0, 100)],
        [(299, 1), (300, 10)],
    ),
    (
        "no traffic with min 2: never below 2",
        {"min_replicas": 2},
        2,
        [(-1e9, 0)],
        [(0, 2), (5000, 2)],
    ),
    (
        "fixed replicas: 3, whatever the traffic",
        {"min_replicas": 3, "max_replicas": 3, "target_qps_per_replica": None},
        3,
        [(-1e9, 0), (0, 100), (2000, 0)],
        [(1000, 3), (4000, 3)],
    ),
    (
        "zero delays follow the traffic at once",
        {"upscale_delay_seconds": 0, "downscale_delay_seconds": 0},
        1,
        [(-1e9, 1), (0, 4), (10, 2)],
        [(0, 4), (10, 2)],
    ),
    (
        "fractional target QPS: 2.5 qps at 0.5 per replica → 5",
        {"target_qps_per_replica": 0.5},
        1,
        [(-1e9, 0.5), (0, 2.5)],
        [(299, 1), (300, 5)],
    ),
]


@pytest.mark.parametrize("tick", [1.0, 10.0, 45.0], ids=lambda t: f"tick={t:g}s")
@pytest.mark.parametrize(
    ("label", "overrides", "start", "steps", "checks"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_scenarios(
    label: str,
    overrides: dict[str, object],
    start: int,
    steps: list[tuple[float, float]],
    checks: list[tuple[float, int]],
    tick: float,
) -> None:
    # the same answer whatever the control-loop interval: delays are time, not ticks
    assert simulate(policy(**overrides), start, steps, checks, tick) == checks


def test_sub_second_delay_has_no_tick_rounding_bug() -> None:
    """upscale_delay 0.6 s, loop every 0.1 s: the change lands at t=0.6, not one tick early.

    A tick counter would wait int(0.6 / 0.1) = 5 ticks (0.6 / 0.1 == 5.999…) and fire at 0.5.
    """
    assert int(0.6 / 0.1) == 5  # the trap
    pol = policy(upscale_delay_seconds=0.6)
    state = AutoscaleState(target=1)
    fired_at = None
    for i in range(20):
        now = i / 10
        target, state = autoscale(measured(3, now), pol, state, now)
        if target == 3 and fired_at is None:
            fired_at = now
    assert fired_at == 0.6


@pytest.mark.parametrize(
    ("qps", "target_qps", "expected"),
    [
        (0.0, 1.0, 0),
        (0.001, 1.0, 1),  # any traffic needs a replica
        (1.0, 1.0, 1),
        (1.01, 1.0, 2),
        (3.0, 1.0, 3),
        (0.1 + 0.2, 0.1, 3),  # 3.0000000000000004 must not become 4
        (0.7, 0.1, 7),
    ],
)
def test_raw_target_is_ceil_of_qps_over_target(
    qps: float, target_qps: float, expected: int
) -> None:
    assert _raw_target(qps, policy(target_qps_per_replica=target_qps)) == expected


class TestRealTimestamps:
    """The same rules fed with request timestamps, as the load balancer reports them."""

    def test_scale_to_zero_counts_from_the_window_emptying(self) -> None:
        # one request a second until t=0; the window is empty from t=60; zero at 60 + 1200
        requests = [float(t) for t in range(-600, 1)]
        pol = policy(min_replicas=0)
        state = AutoscaleState(target=1)
        targets = {}
        for now in range(0, 1400, 10):
            window = RequestWindow.of_timestamps(t for t in requests if t <= now)
            targets[now], state = autoscale(window, pol, state, float(now))
        assert targets[1250] == 1
        assert targets[1260] == 0

    def test_request_at_zero_scales_to_one_immediately(self) -> None:
        pol = policy(min_replicas=0)
        state = AutoscaleState(target=0)
        target, state = autoscale(RequestWindow.of_timestamps([]), pol, state, 1499.0)
        assert target == 0
        target, state = autoscale(RequestWindow.of_timestamps([1500.0]), pol, state, 1500.0)
        assert (target, state) == (1, AutoscaleState(target=1))

    def test_cold_start_not_possible_when_max_is_zero(self) -> None:
        pol = policy(min_replicas=0, max_replicas=0, target_qps_per_replica=1)
        target, _ = autoscale(RequestWindow.of_timestamps([5.0]), pol, AutoscaleState(0), 5.0)
        assert target == 0


@pytest.mark.parametrize(
    ("buckets", "now", "count"),
    [
        ((), 100.0, 0),
        (((40.0, 5),), 100.0, 0),  # exactly one window old: out
        (((40.5, 5),), 100.0, 5),
        (((100.0, 2), (99.0, 3)), 100.0, 5),
        (((101.0, 1),), 100.0, 1),  # a load balancer clock slightly ahead still counts
    ],
)
def test_request_window_count(
    buckets: tuple[tuple[float, int], ...], now: float, count: int
) -> None:
    window = RequestWindow(buckets, 60.0)
    assert window.count(now) == count
    assert math.isclose(window.qps(now), count / 60.0)


def test_policy_change_applies_bounds_at_once() -> None:
    target, state = autoscale(measured(100, 0), policy(max_replicas=3), AutoscaleState(5), 0.0)
    assert (target, state) == (3, AutoscaleState(target=3))


def test_pending_state_is_reported() -> None:
    _, state = autoscale(measured(3, 10), policy(), AutoscaleState(1), 10.0)
    assert state == AutoscaleState(target=1, upscale_since=10.0)
    _, state = autoscale(measured(0.5, 20), policy(), AutoscaleState(3), 20.0)
    assert state == AutoscaleState(target=3, downscale_since=20.0)


def test_initial_state_is_min_replicas() -> None:
    assert AutoscaleState.initial(policy(min_replicas=2)) == AutoscaleState(target=2)
    assert AutoscalePolicy.fixed(4) == AutoscalePolicy(min_replicas=4, max_replicas=4)


@pytest.mark.parametrize(
    "kw",
    [
        {"min_replicas": -1},
        {"min_replicas": 3, "max_replicas": 2},
        {"target_qps_per_replica": None},
        {"target_qps_per_replica": 0},
        {"target_queue_per_replica": 0},
        {"target_queue_per_replica": -2},
        {"target_kv_cache_usage": 0},
        {"target_kv_cache_usage": 1.5},
        {"target_gpu_utilization": 120},
        {"target_qps_per_replica": None, "target_kv_cache_usage": None},
        {"upscale_delay_seconds": -1},
        {"num_overprovision": -1},
        {"base_ondemand_fallback_replicas": -1},
    ],
)
def test_invalid_policies_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        policy(**kw)


def test_invalid_window_is_refused() -> None:
    with pytest.raises(ValueError):
        RequestWindow((), 0)


# -- the LLM-server signals: queue depth, KV-cache usage, GPU utilisation -----------------------


def llm_policy(**kw: object) -> AutoscalePolicy:
    base: dict[str, object] = {
        "min_replicas": 1,
        "max_replicas": 10,
        "target_qps_per_replica": 2,
        "target_queue_per_replica": 4,
    }
    return AutoscalePolicy(**{**base, **kw})


# (label, policy overrides, QPS, load, current target, {signal: replicas it asks for}, winner)
WANTED = [
    (
        "long generations at 0.5 requests/s: QPS asks 1, one replica with 8 running and 24 "
        "waiting asks ceil(32 / (8 + 4)) = 3",
        {},
        0.5,
        ReplicaLoad(replicas=1, running=8, waiting=24),
        1,
        {Signal.QPS: 1, Signal.QUEUE: 3},
        Signal.QUEUE,
    ),
    (
        "a queue at the target per replica asks for no more replicas",
        {},
        0.5,
        ReplicaLoad(replicas=2, running=16, waiting=8),
        2,
        {Signal.QPS: 1, Signal.QUEUE: 2},
        Signal.QUEUE,
    ),
    (
        "one request over the target per replica asks for one more",
        {},
        0.5,
        ReplicaLoad(replicas=2, running=16, waiting=9),
        2,
        {Signal.QPS: 1, Signal.QUEUE: 3},
        Signal.QUEUE,
    ),
    (
        "the queue drained after an upscale: 10 running on each of 3 still hold 3, not 0",
        {},
        0.5,
        ReplicaLoad(replicas=3, running=30, waiting=0),
        3,
        {Signal.QPS: 1, Signal.QUEUE: 3},
        Signal.QUEUE,
    ),
    (
        "8 running on each of 3, no queue: 2 would run 16 and keep 4 waiting each (at target)",
        {},
        0.5,
        ReplicaLoad(replicas=3, running=24, waiting=0),
        3,
        {Signal.QPS: 1, Signal.QUEUE: 2},
        Signal.QUEUE,
    ),
    (
        "idle replicas: the queue signal asks for none",
        {},
        0.0,
        ReplicaLoad(replicas=2),
        2,
        {Signal.QPS: 0, Signal.QUEUE: 0},
        Signal.QPS,
    ),
    (
        "short requests at high QPS, no queue: QPS wins",
        {},
        9.0,
        ReplicaLoad(replicas=2, running=2, waiting=0),
        2,
        {Signal.QPS: 5, Signal.QUEUE: 1},
        Signal.QPS,
    ),
    (
        "scaled to zero, 6 requests held by the LB: ceil(6 / 4) = 2",
        {},
        0.0,
        ReplicaLoad(replicas=0, waiting=6),
        0,
        {Signal.QPS: 0, Signal.QUEUE: 2},
        Signal.QUEUE,
    ),
    (
        "both replicas preempted and restarting, 40 held by the LB: hold 2, not ceil(40/4)",
        {},
        0.0,
        ReplicaLoad(replicas=0, waiting=40),
        2,
        {Signal.QPS: 0, Signal.QUEUE: 2},
        Signal.QUEUE,
    ),
    (
        "no replica answered its /metrics: the replica-side targets hold the current target",
        {"target_kv_cache_usage": 0.5, "target_gpu_utilization": 80},
        0.5,
        None,
        4,
        {Signal.QPS: 1, Signal.QUEUE: 4, Signal.KV_CACHE: 4, Signal.GPU: 4},
        Signal.QUEUE,
    ),
    (
        "KV-cache 0.9 on 2 replicas, target 0.6: ceil(1.8 / 0.6) = 3",
        {"target_queue_per_replica": None, "target_kv_cache_usage": 0.6},
        0.5,
        ReplicaLoad(replicas=2, running=4, kv_cache_usage=1.8),
        2,
        {Signal.QPS: 1, Signal.KV_CACHE: 3},
        Signal.KV_CACHE,
    ),
    (
        "KV-cache 0.2 on 2 replicas, target 0.6: 1",
        {"target_queue_per_replica": None, "target_kv_cache_usage": 0.6},
        0.0,
        ReplicaLoad(replicas=2, running=1, kv_cache_usage=0.4),
        2,
        {Signal.QPS: 0, Signal.KV_CACHE: 1},
        Signal.KV_CACHE,
    ),
    (
        "GPU at 95 % on 2 replicas, target 60 %: ceil(190 / 60) = 4",
        {"target_queue_per_replica": None, "target_gpu_utilization": 60},
        0.5,
        ReplicaLoad(replicas=2, gpu_utilization=190),
        2,
        {Signal.QPS: 1, Signal.GPU: 4},
        Signal.GPU,
    ),
    (
        "GPU target on replicas that report no GPU: hold",
        {"target_queue_per_replica": None, "target_gpu_utilization": 60},
        0.5,
        ReplicaLoad(replicas=2),
        2,
        {Signal.QPS: 1, Signal.GPU: 2},
        Signal.GPU,
    ),
    (
        "queue alone (no QPS target): the most demanding of one",
        {"target_qps_per_replica": None},
        0.5,
        ReplicaLoad(replicas=1, running=8, waiting=24),
        1,
        {Signal.QUEUE: 3},
        Signal.QUEUE,
    ),
]


@pytest.mark.parametrize(
    ("label", "overrides", "qps", "load", "current", "by_signal", "winner"),
    WANTED,
    ids=[w[0] for w in WANTED],
)
def test_each_signal_asks_and_the_most_demanding_wins(
    label: str,
    overrides: dict[str, object],
    qps: float,
    load: ReplicaLoad | None,
    current: int,
    by_signal: dict[Signal, int],
    winner: Signal,
) -> None:
    got = wanted(measured(qps, 0.0), llm_policy(**overrides), 0.0, load, current=current)
    assert dict(got.by_signal) == by_signal
    assert got.replicas == max(by_signal.values())
    assert got.signal is winner


def run_loads(
    pol: AutoscalePolicy, start: int, steps: list[tuple[float, ReplicaLoad | None]], end: float
) -> dict[float, int]:
    """The control loop every second at 0.5 requests/s; ``steps``: (from_t, load)."""
    state = AutoscaleState(target=start)
    seen: dict[float, int] = {}
    for i in range(int(end) + 1):
        now = float(i)
        load = [x for t, x in steps if t <= now][-1]
        seen[now], state = autoscale(measured(0.5, now), pol, state, now, load)
    return seen


def test_queue_scales_up_after_the_upscale_delay_where_qps_alone_holds_one() -> None:
    queued = ReplicaLoad(replicas=1, running=8, waiting=24)
    steps: list[tuple[float, ReplicaLoad | None]] = [(0, queued)]
    with_queue = run_loads(llm_policy(upscale_delay_seconds=30), 1, steps, 60)
    qps_only = run_loads(
        llm_policy(upscale_delay_seconds=30, target_queue_per_replica=None), 1, steps, 60
    )
    assert (with_queue[29], with_queue[30]) == (1, 3)
    assert set(qps_only.values()) == {1}


def test_a_drained_queue_does_not_scale_down_while_the_replicas_stay_busy() -> None:
    busy = ReplicaLoad(replicas=3, running=30, waiting=0)
    idle = ReplicaLoad(replicas=3, running=0, waiting=0)
    seen = run_loads(llm_policy(downscale_delay_seconds=100), 3, [(0, busy), (500, idle)], 700)
    assert seen[499] == 3  # QPS asks for 1 all along: the running requests hold 3
    assert (seen[599], seen[600]) == (3, 1)


def test_missing_replica_metrics_neither_scale_up_nor_down() -> None:
    seen = run_loads(
        llm_policy(upscale_delay_seconds=0, downscale_delay_seconds=0), 4, [(0, None)], 30
    )
    assert set(seen.values()) == {4}


def test_a_burst_of_queue_at_zero_replicas_wakes_the_service_at_once() -> None:
    # the scaler counts the LB's held requests as arrivals now: the cold start still fires
    pol = llm_policy(min_replicas=0, target_qps_per_replica=None)
    window = RequestWindow(((100.0, 6),), 3.0)
    target, state = autoscale(
        window, pol, AutoscaleState(0), 100.0, ReplicaLoad(replicas=0, waiting=6)
    )
    assert target == 1
    assert state.upscale_since == 100.0  # 2 are wanted: the upscale clock runs from now


def test_qps_only_policy_keeps_its_old_answers_with_a_load() -> None:
    # a load passed to a QPS-only policy changes nothing (the simulator's policies)
    pol = policy()
    load = ReplicaLoad(replicas=1, running=50, waiting=500, kv_cache_usage=1.0)
    a = autoscale(measured(3, 0), pol, AutoscaleState(1), 0.0)
    b = autoscale(measured(3, 0), pol, AutoscaleState(1), 0.0, load)
    assert a == b
    assert not pol.needs_replica_metrics()
    assert llm_policy().needs_replica_metrics()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_replica_load_refuses_nonsense(bad: float) -> None:
    with pytest.raises(ValueError):
        ReplicaLoad(replicas=1, waiting=bad)
