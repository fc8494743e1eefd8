"""The LB's run-time state: the replica set, ejections, the retry budget, request statistics.

All of it lives on one ``LBState`` per application (an ``AppKey``), never at module level, so
two LBs in one process (tests) share nothing.

Ejection and return
-------------------
A replica is ejected at once when a connection to it fails before any response byte (refused,
reset, closed). It comes back by either way:

- a probe succeeds: while ejected, the prober sends ``GET <url><probe_path>`` every
  ``probe_interval`` seconds; any answer below 500 puts it back in rotation;
- the control plane re-adds it: a ``PUT /-/replicas`` that brings the replica back after it
  was absent, or with a different URL, clears the flag. A PUT that merely repeats the same
  replica does not (the daemon pushes the full set on every change, and repeating it must not
  re-admit a dead replica).

Every ejection is recorded (``GET /-/replicas`` shows the recent ones) and handed to the
``on_eject`` callback and, with ``--report-url``, POSTed to the daemon.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .auth import ApiKeyGuard
from .control import (
    READY,
    Ejection,
    ReplicaReport,
    StatsBucket,
    StatsReport,
    parse_replica_set,
)
from .policy import Policy, PolicyState, ReplicaState, ReplicaStats, ReplicaView

__all__ = ["Ejection", "LBConfig", "LBState", "ReplicaSet", "parse_replicas"]


class ReplicaSet:
    """The replicas the control plane pushed, plus per-replica run-time stats.

    ``views`` is replaced (never mutated) on each PUT, so the hot path can read it without a
    copy. ``stats`` objects outlive a replica's removal for the requests still holding them.
    ``changed`` wakes the requests queued while no replica was eligible.
    """

    def __init__(self) -> None:
        self.views: tuple[ReplicaView, ...] = ()
        self.by_id: dict[str, ReplicaView] = {}
        self.stats: dict[str, ReplicaStats] = {}
        self.version: int = 0
        self._changed = asyncio.Event()
        # replica id -> what to call with its notice's deadline (streams that may move)
        self._watchers: dict[str, set[Callable[[float], None]]] = {}

    # -- control plane -------------------------------------------------------------------
    def replace(self, views: Iterable[ReplicaView]) -> None:
        new = tuple(views)
        new_stats: dict[str, ReplicaStats] = {}
        for v in new:
            old = self.by_id.get(v.id)
            st = self.stats.get(v.id)
            if st is None:  # new, or re-added after it was absent
                st = ReplicaStats()
            elif old is not None and old.url != v.url:  # moved: a new process, a fresh chance
                st.ejected = False
            new_stats[v.id] = st
        self.views = new
        self.by_id = {v.id: v for v in new}
        self.stats = new_stats
        self.version += 1
        self.notify()
        for v in new:
            if v.deadline is not None:
                for fn in list(self._watchers.get(v.id, ())):
                    fn(v.deadline)

    def watch(self, replica_id: str, fn: Callable[[float], None]) -> Callable[[], None]:
        """Call ``fn(deadline)`` when ``replica_id`` gets (or has) a preemption notice; returns
        the function that stops it."""
        fns = self._watchers.setdefault(replica_id, set())
        fns.add(fn)
        view = self.by_id.get(replica_id)
        if view is not None and view.deadline is not None:
            fn(view.deadline)

        def unwatch() -> None:
            fns.discard(fn)
            if not fns and self._watchers.get(replica_id) is fns:
                del self._watchers[replica_id]

        return unwatch

    def notify(self) -> None:
        """Wake everything waiting for a replica to become eligible."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def ready_count(self) -> int:
        return sum(
            1 for v in self.views if v.state is ReplicaState.READY and not self.stats[v.id].ejected
        )

    def reports(self) -> tuple[ReplicaReport, ...]:
        out = []
        for v in self.views:
            st = self.stats[v.id]
            out.append(
                ReplicaReport(
                    id=v.id,
                    url=v.url,
                    state=v.state.value,
                    in_flight=st.in_flight,
                    ejected=st.ejected,
                    requests=st.requests,
                    failures=st.failures,
                )
            )
        return tuple(out)


class RetryBudget:
    """Retries may add at most ``ratio`` of the request rate, plus ``min_per_second``.

    Each request deposits ``ratio`` tokens, each retry withdraws one; a floor of
    ``min_per_second`` tokens per second lets a quiet LB still retry. The balance is capped so
    a long quiet period cannot bank a retry storm. (Finagle's and Envoy's retry budgets.)
    """

    def __init__(
        self, ratio: float = 0.2, min_per_second: float = 10.0, cap: float = 100.0
    ) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.cap = cap
        self.balance = cap
        self._last = time.monotonic()
        self.exhausted = 0  # retries refused by the budget

    def deposit(self) -> None:
        b = self.balance + self.ratio
        self.balance = min(self.cap, b)

    def withdraw(self) -> bool:
        now = time.monotonic()
        b = self.balance + (now - self._last) * self.min_per_second
        self._last = now
        b = min(b, self.cap)
        if b >= 1.0:
            self.balance = b - 1.0
            return True
        self.balance = b
        self.exhausted += 1
        return False


class Window:
    """Per-second request counts for the last ``seconds`` seconds (for the autoscaler).

    One slot per unix second in a ring; a slot is reset when its second comes round again.
    A request is counted in the second it *arrives* (``arrived``), as SkyServe's LB counts:
    counted when answered, a burst of long generations shows as demand only minutes later,
    when the answers come (bench/autoscale.py measured QPS scaling never catching up). Its
    5xx is counted in the second it is answered (``failed``). Each costs two list stores.
    """

    def __init__(self, seconds: int = 600) -> None:
        self.seconds = seconds
        self._sec = [0] * seconds
        self._count = [0] * seconds
        self._errors = [0] * seconds

    def _slot(self, now: float) -> int:
        s = int(now)
        i = s % self.seconds
        if self._sec[i] != s:
            self._sec[i] = s
            self._count[i] = 0
            self._errors[i] = 0
        return i

    def arrived(self, now: float) -> None:
        self._count[self._slot(now)] += 1

    def failed(self, now: float) -> None:
        self._errors[self._slot(now)] += 1

    def buckets(self, now: float, window: int) -> list[tuple[int, int, int]]:
        """(second, requests, 5xx) for the last ``window`` whole seconds, oldest first.

        The current, still-filling second is not included.
        """
        window = max(1, min(window, self.seconds - 1))
        end = int(now)
        out = []
        for s in range(end - window, end):
            i = s % self.seconds
            if self._sec[i] == s:
                out.append((s, self._count[i], self._errors[i]))
            else:
                out.append((s, 0, 0))
        return out


LATENCY_BOUNDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


class Metrics:
    """Counters kept as plain ints on the hot path, turned into Prometheus text on scrape.

    prometheus_client's own Counter/Histogram take a lock per update; a collector that reads
    plain fields costs nothing until someone scrapes.
    """

    def __init__(self) -> None:
        self.by_code: dict[int, int] = collections.defaultdict(int)
        self.lat_counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.lat_sum = 0.0
        self.retries = 0
        self.ejections = 0
        self.queued = 0  # requests that waited for a replica
        self.rejected = 0  # 503s for want of a replica (queue full, timeout, no queue)
        self.unauthorized = 0  # 401s: no valid client API key
        self.handoffs = 0  # LLM streams continued on another replica
        self.handoff_failures = 0  # ... that no replica took (the client saw a cut)
        self.notice_retries = 0  # non-streamed LLM requests re-sent off a noticed replica
        self.in_flight = 0  # requests inside the proxy handler

    def observe(self, code: int, seconds: float) -> None:
        self.by_code[code] += 1
        self.lat_counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.lat_sum += seconds


class MetricsCollector:
    """A prometheus_client collector over one LB's ``LBState``."""

    def __init__(self, state: LBState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        st = self._state
        m = st.metrics
        c = CounterMetricFamily(
            "spotd_lb_requests", "Proxied requests by HTTP status", labels=["code"]
        )
        for code, n in sorted(m.by_code.items()):
            c.add_metric([str(code)], n)
        yield c
        buckets = []
        acc = 0
        for bound, n in zip(LATENCY_BOUNDS, m.lat_counts, strict=False):
            acc += n
            buckets.append((repr(bound), acc))
        acc += m.lat_counts[-1]
        buckets.append(("+Inf", acc))
        yield HistogramMetricFamily(
            "spotd_lb_request_duration_seconds",
            "Time from request received to response finished",
            buckets=buckets,
            sum_value=m.lat_sum,
        )
        yield CounterMetricFamily(
            "spotd_lb_retries", "Requests re-sent to another replica", value=m.retries
        )
        yield CounterMetricFamily(
            "spotd_lb_retry_budget_exhausted",
            "Retries refused by the retry budget",
            value=st.budget.exhausted,
        )
        yield CounterMetricFamily(
            "spotd_lb_ejections", "Replicas ejected on connection errors", value=m.ejections
        )
        yield CounterMetricFamily(
            "spotd_lb_queued", "Requests that waited for a replica", value=m.queued
        )
        yield CounterMetricFamily(
            "spotd_lb_rejected_no_replica",
            "Requests answered 503 for want of a replica",
            value=m.rejected,
        )
        yield CounterMetricFamily(
            "spotd_lb_unauthorized",
            "Requests answered 401 for want of a valid API key",
            value=m.unauthorized,
        )
        yield CounterMetricFamily(
            "spotd_lb_stream_handoffs",
            "LLM streams continued on another replica (notice or failure)",
            value=m.handoffs,
        )
        yield CounterMetricFamily(
            "spotd_lb_stream_handoff_failures",
            "LLM streams that had to move and could not (the client saw a cut)",
            value=m.handoff_failures,
        )
        yield CounterMetricFamily(
            "spotd_lb_notice_retries",
            "Non-streamed LLM requests re-sent off a replica whose notice ran out",
            value=m.notice_retries,
        )
        yield GaugeMetricFamily("spotd_lb_in_flight", "Requests being proxied", value=m.in_flight)
        g = GaugeMetricFamily(
            "spotd_lb_replica_in_flight", "In-flight requests per replica", labels=["replica"]
        )
        t = GaugeMetricFamily(
            "spotd_lb_replica_outstanding_tokens",
            "Estimated tokens (prompt + generation to come) of the requests in flight per replica",
            labels=["replica"],
        )
        e = GaugeMetricFamily(
            "spotd_lb_replica_ejected", "1 if the replica is ejected", labels=["replica"]
        )
        for v in st.replicas.views:
            rs = st.replicas.stats[v.id]
            g.add_metric([v.id], rs.in_flight)
            t.add_metric([v.id], rs.tokens)
            e.add_metric([v.id], 1 if rs.ejected else 0)
        yield g
        yield t
        yield e


@dataclass(slots=True)
class LBConfig:
    policy: Policy = Policy.LEAST_LOAD
    affinity_header: str = "X-Session-Id"  # "" disables session affinity
    max_tries: int = 3  # attempts per request, on distinct replicas
    retry_ratio: float = 0.2  # retry budget: retries per request, on top of the floor
    retry_min_per_second: float = 10.0
    buffer_limit: int = 1 << 20  # request bodies up to this size are buffered (replayable)
    queue_size: int = 256  # requests held while no replica is eligible; 0 = answer 503 now
    queue_timeout: float = 30.0  # how long a held request waits for a replica
    retry_after: int = 5  # Retry-After seconds on a 503 for want of a replica
    connect_timeout: float = 3.0
    read_timeout: float | None = 600.0  # idle time between upstream reads (long LLM streams)
    pool_limit: int = 1024  # upstream connections, all replicas together
    keepalive_timeout: float = 30.0
    probe_interval: float = 0.5  # how often ejected replicas are probed
    probe_path: str = "/health"
    probe_timeout: float = 1.0
    report_url: str | None = None  # POST ejections here (the daemon)
    report_unix: str | None = None  # ... through this unix socket (the daemon's API socket)
    lb_id: str = ""
    stats_seconds: int = 600
    prefix_chars: int = 256  # prefix_aware: the prompt characters that make the routing key
    load_factor: float = 1.25  # prefix_aware: a replica takes at most this x the mean load
    handoff_margin: float = 10.0  # streams leave a noticed replica this long before its end
    continue_streams: bool = True  # LLM streams move off noticed or failing replicas

    def __post_init__(self) -> None:
        self.policy = Policy(self.policy)  # accept the plain string too


class LBState:
    """Everything one LB application holds."""

    def __init__(
        self,
        config: LBConfig,
        *,
        rng_seed: int | None = None,
        on_eject: Callable[[Ejection], None] | None = None,
    ) -> None:
        import random

        self.config = config
        self.replicas = ReplicaSet()
        self.api_keys = ApiKeyGuard()  # client keys; empty (off) until set
        self.policy_state = PolicyState(rng=random.Random(rng_seed), load_factor=config.load_factor)
        self.budget = RetryBudget(config.retry_ratio, config.retry_min_per_second)
        self.window = Window(config.stats_seconds)
        self.metrics = Metrics()
        self.ejections: collections.deque[Ejection] = collections.deque(maxlen=100)
        self.report_queue: asyncio.Queue[Ejection] = asyncio.Queue(maxsize=1000)
        self.on_eject = on_eject
        self.waiting = 0  # requests queued for a replica right now
        self.started = time.time()

    def eject(self, replica_id: str, url: str, reason: str) -> None:
        st = self.replicas.stats.get(replica_id)
        st_known = self.replicas.by_id.get(replica_id)
        if st is None or st_known is None or st_known.url != url or st.ejected:
            return  # already out, or no longer in the set
        st.ejected = True
        ev = Ejection(replica_id, url, reason, time.time())
        self.ejections.append(ev)
        self.metrics.ejections += 1
        if self.on_eject is not None:
            self.on_eject(ev)
        if self.config.report_url:
            if self.report_queue.full():
                self.report_queue.get_nowait()
            self.report_queue.put_nowait(ev)

    def readmit(self, replica_id: str, url: str) -> None:
        st = self.replicas.stats.get(replica_id)
        v = self.replicas.by_id.get(replica_id)
        if st is not None and v is not None and v.url == url and st.ejected:
            st.ejected = False
            self.replicas.notify()

    def stats_report(self, window: int, now: float) -> StatsReport:
        b = self.replicas
        return StatsReport(
            lb_id=self.config.lb_id,
            now=now,
            buckets=tuple(StatsBucket(t, c, e) for t, c, e in self.window.buckets(now, window)),
            in_flight=self.metrics.in_flight,
            waiting=self.waiting,
            replicas={v.id: b.stats[v.id].in_flight for v in b.views},
        )


def parse_replicas(body: Any) -> list[ReplicaView]:
    """The pushed set (``control.parse_replica_set``) as the views the policy picks from.

    ``state`` READY (default) or DRAINING; any other state (e.g. NOT_READY) is kept as
    DRAINING-like: present for its in-flight requests, never picked. A ``deadline`` (a
    preemption notice) is kept whatever the state.
    """
    return [
        ReplicaView(
            id=e.id,
            url=e.url.rstrip("/"),
            state=ReplicaState.READY if e.state == READY else ReplicaState.DRAINING,
            deadline=e.deadline,
        )
        for e in parse_replica_set(body)
    ]
