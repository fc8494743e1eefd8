"""The LB stats history behind the service charts: one sample per step, bounded in samples
and services, latency quantiles from the difference of two histogram reads."""

from __future__ import annotations

import math

import pytest

from spotd.control.lb_history import LatencyHistogram, LbHistory, latency_histogram, quantile
from spotd.lb.control import StatsBucket, StatsReport

INF = math.inf


def report(now: float, per_second: list[int], *, waiting: int = 0) -> StatsReport:
    start = int(now) - len(per_second)
    return StatsReport(
        lb_id="lb",
        now=now,
        buckets=tuple(StatsBucket(t=start + i, requests=n) for i, n in enumerate(per_second)),
        waiting=waiting,
    )


@pytest.mark.parametrize(
    ("bounds", "counts", "q", "want"),
    [
        ((0.1, 0.5, INF), (5, 10, 10), 0.5, 0.1),  # the median is the first bucket's edge
        ((0.1, 0.5, INF), (0, 10, 10), 0.5, 0.3),  # halfway through 0.1–0.5
        ((0.1, 0.5, INF), (0, 0, 10), 0.99, 0.5),  # all in +Inf: the last finite bound
        ((0.1, 0.5, INF), (0, 0, 0), 0.5, None),  # nothing answered
        ((0.1, 0.5, INF), (100, 100, 100), 0.99, 0.099),
    ],
)
def test_quantile(bounds, counts, q, want) -> None:
    got = quantile(bounds, counts, q)
    assert got == pytest.approx(want) if want is not None else got is None


def test_one_sample_per_step_with_the_step_qps() -> None:
    h = LbHistory(every=5, keep=60)
    for t in range(100, 126):
        if h.due(1, t):
            h.record(1, report(t, [0] * 55 + [4, 4, 4, 4, 4, 6]), None, now=t)
    samples = h.samples(1)
    assert [s.at for s in samples] == [100, 105, 110, 115, 120, 125]
    assert samples[-1].qps == pytest.approx((4 * 4 + 6) / 5)  # the last 5 whole seconds
    assert h.samples(1, since=115) == samples[-3:]


def test_bounded_in_samples_and_services() -> None:
    h = LbHistory(every=1, keep=10, max_services=2)
    for t in range(100):
        h.record(1, report(t, [1]), None, now=t)
    assert len(h.samples(1)) == 10 and h.samples(1)[0].at == 90
    h.record(2, report(0, [1]), None, now=0)
    h.record(3, report(0, [1]), None, now=0)  # the least recently sampled service goes
    assert h.samples(1) == [] and len(h.samples(3)) == 1
    h.drop(3)
    assert h.samples(3) == [] and h.size() == 1


def test_latency_from_the_difference_of_two_reads() -> None:
    h = LbHistory(every=1)
    bounds = (0.01, 0.1, INF)
    first = h.record(1, report(1, [1]), LatencyHistogram(bounds, (100, 100, 100)), now=1)
    assert first.p50 is None  # one read: no step to measure yet
    # in this step 10 requests, all between 10 and 100 ms (the old 100 fast ones do not count)
    second = h.record(1, report(2, [1]), LatencyHistogram(bounds, (100, 110, 110)), now=2)
    assert second.p50 == pytest.approx(0.055) and second.p99 == pytest.approx(0.0991)
    # the LB restarted: its counters began again, so this step has no latency
    third = h.record(1, report(3, [1]), LatencyHistogram(bounds, (1, 2, 2)), now=3)
    assert third.p50 is None


def test_the_histogram_is_read_from_the_lbs_prometheus_text() -> None:
    text = """# HELP spotd_lb_request_duration_seconds Time to answer
# TYPE spotd_lb_request_duration_seconds histogram
spotd_lb_request_duration_seconds_bucket{le="0.01"} 3.0
spotd_lb_request_duration_seconds_bucket{le="0.1"} 7.0
spotd_lb_request_duration_seconds_bucket{le="+Inf"} 8.0
spotd_lb_request_duration_seconds_count 8.0
spotd_lb_request_duration_seconds_sum 0.4
# HELP spotd_lb_retries_total Requests re-sent to another replica
# TYPE spotd_lb_retries_total counter
spotd_lb_retries_total 0.0
"""
    assert latency_histogram(text) == LatencyHistogram((0.01, 0.1, INF), (3.0, 7.0, 8.0))
    assert latency_histogram("spotd_lb_retries_total 0.0\n") is None
