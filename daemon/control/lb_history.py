"""A bounded history of each service's load-balancer stats, for the dashboard's charts.

The LB keeps only the last minute of per-second counts and a cumulative latency histogram
(its ``/metrics``); the dashboard draws hours. So the LB keeper, which already reads each LB's
stats every ``stats_interval`` for the autoscaler, hands every read to :class:`LbHistory`, and
the history keeps one :class:`LbSample` per ``every`` seconds per service: requests per second
and 5xx per second over that step, requests in flight and queued, and latency p50/p99 from the
difference of two histogram reads (so a quantile covers the requests of that step only).

Bounded in size and time: at most ``keep / every`` samples per service (6 h at 10 s: 2,160),
at most ``max_services`` services (the least recently sampled one is dropped first), and a
service's history is dropped when its LB is stopped. In memory only: a restarted daemon starts
a fresh history (the LB's own counters restart with it anyway when it is replaced).

Example: with ``every=10``, reads at t=100, 101, …, 125 record samples at 100, 110 and 120; the
sample at 110 holds the requests of the whole seconds from 100 to 109 and the latency of the
requests answered between the reads at 100 and 110.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from spotd.lb.control import StatsReport

__all__ = ["LatencyHistogram", "LbHistory", "LbSample", "latency_histogram", "quantile"]

LATENCY_METRIC = "spotd_lb_request_duration_seconds"


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """Cumulative counts per upper bound (seconds), ascending; the last bound is ``inf``."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class LbSample:
    at: float
    qps: float
    errors_per_s: float
    in_flight: int
    waiting: int
    p50: float | None  # seconds; None: no request answered in the step (or no histogram)
    p99: float | None

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "at": self.at,
            "qps": round(self.qps, 3),
            "errors_per_s": round(self.errors_per_s, 3),
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "p50": self.p50,
            "p99": self.p99,
        }


def latency_histogram(text: str) -> LatencyHistogram | None:
    """The LB's request-duration histogram from its Prometheus text; None when absent."""
    for family in text_string_to_metric_families(text):
        if family.name != LATENCY_METRIC:
            continue
        pairs = sorted(
            (float(s.labels["le"]), s.value)
            for s in family.samples
            if s.name.endswith("_bucket") and "le" in s.labels
        )
        if pairs:
            return LatencyHistogram(tuple(b for b, _ in pairs), tuple(c for _, c in pairs))
    return None


def quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of cumulative bucket ``counts``, interpolated linearly inside its
    bucket (Prometheus' ``histogram_quantile``); the last finite bound when it falls in +Inf.

    >>> quantile((0.1, 0.5, float("inf")), (5, 10, 10), 0.5)
    0.1
    """
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    i = bisect.bisect_left(counts, rank)
    i = min(i, len(counts) - 1)
    if bounds[i] == float("inf"):
        finite = [b for b in bounds if b != float("inf")]
        return finite[-1] if finite else None
    lower = bounds[i - 1] if i > 0 else 0.0
    below = counts[i - 1] if i > 0 else 0.0
    inside = counts[i] - below
    if inside <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / inside


def _step_latency(
    now: LatencyHistogram | None, before: LatencyHistogram | None
) -> tuple[float | None, float | None]:
    if now is None or before is None or now.bounds != before.bounds:
        return None, None
    if now.counts[-1] < before.counts[-1]:
        return None, None  # the LB restarted: its counters began again
    delta = [max(0.0, a - b) for a, b in zip(now.counts, before.counts, strict=True)]
    return quantile(now.bounds, delta, 0.5), quantile(now.bounds, delta, 0.99)


class _Series:
    def __init__(self, maxlen: int) -> None:
        self.samples: collections.deque[LbSample] = collections.deque(maxlen=maxlen)
        self.latency: LatencyHistogram | None = None
        self.last_at: float | None = None


class LbHistory:
    """Per service, one sample per ``every`` seconds for the last ``keep`` seconds."""

    def __init__(
        self, *, every: float = 10.0, keep: float = 6 * 3600.0, max_services: int = 256
    ) -> None:
        self.every = every
        self.keep = keep
        self.max_services = max_services
        self._series: collections.OrderedDict[int, _Series] = collections.OrderedDict()

    def due(self, service_id: int, now: float) -> bool:
        """Whether a read at ``now`` should become a sample."""
        s = self._series.get(service_id)
        return s is None or s.last_at is None or now - s.last_at >= self.every

    async def observe(
        self,
        service_id: int,
        report: StatsReport,
        *,
        now: float,
        metrics_text: Callable[[], Awaitable[str | None]],
    ) -> LbSample | None:
        """Record a sample from this stats read if one is due (``metrics_text`` is awaited
        only then: the LB's Prometheus text, None when it cannot be read)."""
        if not self.due(service_id, now):
            return None
        text = await metrics_text()
        hist = latency_histogram(text) if text else None
        return self.record(service_id, report, hist, now=now)

    def record(
        self,
        service_id: int,
        report: StatsReport,
        latency: LatencyHistogram | None,
        *,
        now: float,
    ) -> LbSample:
        series = self._series.get(service_id)
        if series is None:
            series = _Series(max(1, int(self.keep / self.every)))
            self._series[service_id] = series
            while len(self._series) > self.max_services:
                self._series.popitem(last=False)
        self._series.move_to_end(service_id)
        step = max(1, int(self.every))
        recent = report.buckets[-step:]
        n = len(recent) or 1
        p50, p99 = _step_latency(latency, series.latency)
        sample = LbSample(
            at=now,
            qps=sum(b.requests for b in recent) / n,
            errors_per_s=sum(b.errors_5xx for b in recent) / n,
            in_flight=report.in_flight,
            waiting=report.waiting,
            p50=p50,
            p99=p99,
        )
        series.samples.append(sample)
        series.latency = latency
        series.last_at = now
        return sample

    def samples(self, service_id: int, *, since: float | None = None) -> list[LbSample]:
        """The service's samples, oldest first (``since``: at or after that moment)."""
        s = self._series.get(service_id)
        if s is None:
            return []
        return [x for x in s.samples if since is None or x.at >= since]

    def drop(self, service_id: int) -> None:
        self._series.pop(service_id, None)

    def size(self) -> int:
        return sum(len(s.samples) for s in self._series.values())
