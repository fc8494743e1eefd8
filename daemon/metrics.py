"""Prometheus metrics of the daemon, on a registry of its own (no process-wide singleton)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.jobs_by_state = Gauge("spotd_jobs", "Managed jobs by state", ["state"], registry=r)
        self.jobs_finished = Counter(
            "spotd_jobs_finished_total", "Jobs that reached a final state", ["state"], registry=r
        )
        self.attempts = Counter(
            "spotd_attempts_total", "Attempts placed", ["provider", "region", "market"], registry=r
        )
        self.preemptions = Counter(
            "spotd_preemptions_total", "Preemptions detected", ["provider", "region"], registry=r
        )
        self.recovery_seconds = Histogram(
            "spotd_recovery_seconds",
            "From an attempt's loss to the job running again",
            buckets=(0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "spotd_observe_pass_seconds",
            "Duration of one batched observe pass of a provider",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )
        self.provider_calls = Counter(
            "spotd_provider_calls_total", "Provider API calls", ["provider", "call"], registry=r
        )
        self.provider_errors = Counter(
            "spotd_provider_errors_total", "Provider API errors", ["provider", "call"], registry=r
        )
        self.heartbeats = Counter("spotd_heartbeats_total", "Agent heartbeats", registry=r)
        self.suspects = Counter(
            "spotd_suspect_observations_total",
            "Observations of an instance with late heartbeats that the provider says is alive",
            registry=r,
        )
        self.api_requests = Counter(
            "spotd_api_requests_total", "API requests", ["route", "code"], registry=r
        )
        self.log_followers = Gauge(
            "spotd_log_followers", "Log streams being followed (?follow=1) right now", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
